"""The agent's log: one JSON object per line on stdout, flushed at once, so whoever reads it
(an operator's collector, a test) sees each event as it happens."""

from __future__ import annotations

import contextlib
import json
from typing import Any


def log(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, **fields}, default=str)
    # When nobody reads stdout any more (a closed pipe), the agent goes on serving.
    with contextlib.suppress(OSError, ValueError):
        print(line, flush=True)
