"""The agent's log: one JSON object per line on stdout, flushed at once, so whoever reads it
(an operator's collector, a test) sees each event as it happens."""

from __future__ import annotations

import json
import sys
from typing import Any


def log(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, **fields}, default=str)
    try:
        print(line, flush=True)
    except (OSError, ValueError):
        # Nobody reads stdout any more (a closed pipe): the agent goes on serving.
        pass
