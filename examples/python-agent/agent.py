#!/usr/bin/env python3
"""A Tollgate agent backend in Python: `tollgate.agent.v1.AgentBackend` served with grpcio.

It is what a team's own backend does, kept small: it thinks, asks the gateway before every
tool call and runs the tool only when allowed, streams its answer, stops when cancelled and,
with AUTH_JWKS_URL, refuses callers without a service token meant for it. The gateway does
the rest (users, plans, metering). The proto is compiled at start from the repository's
proto/ directory, so no generated code is kept beside this file.

The log (stdout, one JSON object per line, flushed) is the record of what happened: tests
read it to prove, for instance, that a denied tool never ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonlog import log

try:
    import grpc
    import grpc.aio

    from caller_check import CallerCheck
except ImportError as missing:  # a missing install, reported in one line
    print(
        f"python-agent: {missing.name} is not installed: "
        "pip install -r examples/python-agent/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(1)

PROTO_FILE = "tollgate/agent/v1/agent.proto"
# The one tool this agent knows.
TOOL = "word_count"
# The gateway's own limit on a message (agent.proto), mirrored so an oversized one fails here.
MAX_MESSAGE_BYTES = 256 * 1024
# The gateway sends `start` right after opening the stream.
START_TIMEOUT_S = 10.0
# The gateway answers a tool request after one call to usage-service (itself timed out).
DECISION_TIMEOUT_S = 30.0
# Messages read ahead of the run; beyond that, HTTP/2 flow control holds the gateway back.
INBOX_CAPACITY = 64
# How long in-flight runs may go on after SIGTERM before they are cut.
SHUTDOWN_GRACE_S = 5.0


class ConfigError(Exception):
    """A bad environment variable: the message names it."""


@dataclass(frozen=True)
class Settings:
    addr: str
    proto_dir: Path
    delta_delay_s: float
    agent_name: str
    jwks_url: str | None
    issuer: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        addr = env.get("AGENT_ADDR", "127.0.0.1:50061").strip()
        if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):\d{1,5}", addr):
            raise ConfigError(f"AGENT_ADDR must be HOST:PORT, got {addr!r}")
        default_proto = Path(__file__).resolve().parents[2] / "proto" / "proto"
        proto_dir = Path(env.get("AGENT_PROTO_DIR") or default_proto)
        if not (proto_dir / PROTO_FILE).is_file():
            raise ConfigError(f"AGENT_PROTO_DIR: no {PROTO_FILE} under {proto_dir}")
        raw_delay = env.get("AGENT_DELTA_DELAY_MS", "0").strip()
        if not raw_delay.isdigit() or int(raw_delay) > 60_000:
            raise ConfigError(
                f"AGENT_DELTA_DELAY_MS must be milliseconds from 0 to 60000, got {raw_delay!r}"
            )
        agent_name = env.get("AGENT_NAME", "python").strip()
        if not agent_name:
            raise ConfigError("AGENT_NAME must not be empty")
        jwks_url = env.get("AUTH_JWKS_URL", "").strip() or None
        if jwks_url is not None and not jwks_url.startswith(("http://", "https://")):
            raise ConfigError("AUTH_JWKS_URL must be an http:// or https:// URL")
        return cls(
            addr=addr,
            proto_dir=proto_dir,
            delta_delay_s=int(raw_delay) / 1000,
            agent_name=agent_name,
            jwks_url=jwks_url,
            issuer=env.get("AUTH_ISSUER", "tollgate-auth").strip() or "tollgate-auth",
        )


class Refused(Exception):
    """The stream breaks the protocol before a run exists: answered with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


# A gateway closes its side only when it is going away, and a cancelled call ends the same
# way: either way nobody could cancel or decide any more, so the run stops, with `failed`
# in case the gateway still reads.
CLOSED_EARLY = "the gateway closed the stream before the run ended"


class Stopped(Exception):
    """The run ends early. `event` is the log line saying why; `reason`, when set, is sent
    to the gateway as `failed` so the run still ends the way the protocol says."""

    def __init__(self, event: str, reason: str | None = None) -> None:
        super().__init__(event)
        self.event = event
        self.reason = reason


_END = object()


class Inbox:
    """The gateway's messages, read by a task of their own so that a `cancel` is seen while
    the run is busy answering. Bounded: a peer that floods is held back by flow control."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=INBOX_CAPACITY)
        self._ended = False
        self._reader = asyncio.get_running_loop().create_task(self._read(requests))

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for message in requests:
                await self._queue.put(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            pass  # a broken transport ends the stream like a close
        await self._queue.put(_END)

    async def next(self, timeout_s: float) -> Any:
        """The next message, `_END` once the gateway closed its side (and from then on), or
        None if nothing came within `timeout_s` (0: only what is already there)."""
        if self._ended:
            return _END
        try:
            if timeout_s <= 0:
                item = self._queue.get_nowait()
            else:
                item = await asyncio.wait_for(self._queue.get(), timeout_s)
        except (TimeoutError, asyncio.QueueEmpty):
            return None
        if item is _END:
            self._ended = True
        return item

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def kind_of(message: Any) -> str:
    """Which `oneof kind` a GatewayMessage carries; "empty" for none (a newer gateway's
    message this proto does not know decodes that way)."""
    return message.WhichOneof("kind") or "empty"


def answer_pieces(text: str, words: int | None) -> list[str]:
    """The answer as the deltas it is streamed in: one word (and its trailing space) each."""
    if words is None:
        sentence = f"I read your {len(text)} characters but was not allowed to count the words."
    else:
        sentence = f"Your text has {words} word{'' if words == 1 else 's'}."
    return re.findall(r"\S+\s*", sentence)


class AgentRun:
    """One `Run` stream, from the backend's side (see agent.proto)."""

    def __init__(self, protos: Any, inbox: Inbox, settings: Settings) -> None:
        self._pb = protos
        self._inbox = inbox
        self._settings = settings
        self.run_id: str | None = None

    def _message(self, **kind: Any) -> Any:
        return self._pb.AgentMessage(**kind)

    async def messages(self) -> AsyncIterator[Any]:
        """What the backend sends; the stream ends when this does."""
        start = await self._wait_for_start()
        if start is None:
            return
        self.run_id = start.run_id
        log("start", run_id=start.run_id, agent=start.agent, tools=list(start.tools))
        try:
            async for message in self._answer(start):
                yield message
        except Stopped as stop:
            log(stop.event, run_id=self.run_id)
            if stop.reason is not None:
                yield self._message(failed=self._pb.Failed(reason=stop.reason))

    async def _wait_for_start(self) -> Any:
        item = await self._inbox.next(START_TIMEOUT_S)
        if item is None:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "no start message in time")
        if item is _END:
            log("stream_ended", run_id=None)
            return None
        kind = kind_of(item)
        if kind == "cancel":
            log("cancelled", run_id=None)
            return None
        if kind != "start":
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT, f"the first message must be start, not {kind}"
            )
        return item.start

    async def _answer(self, start: Any) -> AsyncIterator[Any]:
        pb = self._pb
        yield self._message(thinking=pb.Thinking(thought="Reading the input."))
        words = None
        if TOOL in start.tools:
            call_id = f"{TOOL}-1"
            request = pb.ToolRequest(
                call_id=call_id, tool=TOOL, input_json=json.dumps({"text": start.input})
            )
            yield self._message(tool_request=request)
            decision = await self._decision(call_id)
            log(
                "tool_decision",
                run_id=self.run_id,
                call_id=call_id,
                allowed=decision.allowed,
                code=decision.code,
            )
            if decision.allowed:
                words = len(start.input.split())
                log("tool_run", tool=TOOL, run_id=self.run_id, call_id=call_id)
                result = pb.ToolResult(call_id=call_id, output_json=json.dumps({"words": words}))
                yield self._message(tool_result=result)
        pieces = answer_pieces(start.input, words)
        for index, piece in enumerate(pieces):
            await self._pause(self._settings.delta_delay_s if index else 0)
            yield self._message(delta=pb.Delta(text=piece))
        yield self._message(completed=pb.Completed(output="".join(pieces)))
        log("completed", run_id=self.run_id)

    async def _decision(self, call_id: str) -> Any:
        """Waits for the gateway's decision on `call_id`; anything else is logged and left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DECISION_TIMEOUT_S
        while (remaining := deadline - loop.time()) > 0:
            item = await self._inbox.next(remaining)
            if item is None:
                break
            if item is _END:
                raise Stopped("stream_ended", CLOSED_EARLY)
            kind = kind_of(item)
            if kind == "cancel":
                raise Stopped("cancelled")
            if kind == "tool_decision" and item.tool_decision.call_id == call_id:
                return item.tool_decision
            log("ignored", run_id=self.run_id, kind=kind)
        raise Stopped("decision_timeout", "no tool decision in time")

    async def _pause(self, delay_s: float) -> None:
        """Waits `delay_s` (0: not at all), ending the run at once if a `cancel` arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay_s
        while True:
            remaining = max(0.0, deadline - loop.time())
            item = await self._inbox.next(remaining)
            if item is None:
                return
            if item is _END:
                raise Stopped("stream_ended", CLOSED_EARLY)
            kind = kind_of(item)
            if kind == "cancel":
                raise Stopped("cancelled")
            log("ignored", run_id=self.run_id, kind=kind)


class Backend:
    """The `AgentBackend` servicer."""

    def __init__(self, protos: Any, settings: Settings, caller: CallerCheck | None) -> None:
        self._protos = protos
        self._settings = settings
        self._caller = caller

    # Named as the gRPC method is.
    async def Run(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        if self._caller is not None:
            await self._caller.verify(context)
        inbox = Inbox(requests)
        run = AgentRun(self._protos, inbox, self._settings)
        failure = None
        try:
            async for message in run.messages():
                yield message
        except Refused as refused:
            failure = refused
        except (asyncio.CancelledError, GeneratorExit):
            # The call is gone (connection lost, or cancelled while grpc held a message of
            # ours): grpc cancels the handler, or drops it at its next message.
            log("disconnected", run_id=run.run_id)
            raise
        except Exception as err:  # a bug ends one run, not the server
            log("error", run_id=run.run_id, error=type(err).__name__)
            yield self._protos.AgentMessage(failed=self._protos.Failed(reason="internal error"))
        finally:
            await inbox.close()
        if failure is not None:
            log("refused", code=failure.code.name, details=failure.details)
            await context.abort(failure.code, failure.details)


def load_protocol(proto_dir: Path) -> tuple[Any, Any]:
    """Compiles agent.proto in memory (grpcio-tools): the message classes and the service."""
    sys.path.insert(0, str(proto_dir))
    return grpc.protos_and_services(PROTO_FILE)


async def serve(settings: Settings) -> None:
    protos, services = load_protocol(settings.proto_dir)
    caller = None
    if settings.jwks_url is None:
        log(
            "warning",
            message="AUTH_JWKS_URL is not set: calls are not verified, anyone who can reach "
            "this port can start runs",
        )
    else:
        caller = CallerCheck(settings.jwks_url, settings.agent_name, settings.issuer)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # A port in use is an error, not a port silently shared with another server.
            ("grpc.so_reuseport", 0),
            # Room for a service token (at most 8 KiB) with the trace context beside it, so
            # an oversized token is refused by the caller check, with its reason.
            ("grpc.max_metadata_size", 16 * 1024),
            ("grpc.absolute_max_metadata_size", 32 * 1024),
        ]
    )
    services.add_AgentBackendServicer_to_server(Backend(protos, settings, caller), server)
    try:
        port = server.add_insecure_port(settings.addr)
    except RuntimeError as err:
        raise ConfigError(f"AGENT_ADDR: cannot listen on {settings.addr}: {err}") from err
    await server.start()
    host = settings.addr.rsplit(":", 1)[0]
    log("listening", addr=f"{host}:{port}", agent=settings.agent_name)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log("stopping", grace_s=SHUTDOWN_GRACE_S)
    await server.stop(SHUTDOWN_GRACE_S)
    log("stopped")


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
        asyncio.run(serve(settings))
    except ConfigError as err:
        print(f"python-agent: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
