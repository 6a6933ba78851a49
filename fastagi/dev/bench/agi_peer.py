"""A FastAGI client that speaks as Asterisk does: for protocol tests and the benchmark only.

It sends the agi_* header block res_agi sends, answers every command `200 result=1`,
records SET VARIABLE, and returns when the server closes the connection.
"""

from __future__ import annotations

import asyncio
import re

from fastagi.asterisk.agi_client import PEER_TIMEOUT_S, AgiResult, agi_call, header_block, mset_into  # noqa: F401
from fastagi.core.agi import parse_command_args

REPLY_LINE_BYTES_MAX = 65536
DEADLINE_TICK_S = 0.5  # how often open requests are checked against their deadline
_QUOTE = ord('"')


class _LeanAgi(asyncio.Protocol):
    """One FastAGI request over a bare asyncio.Protocol: the benchmark's fast path.

    The same exchange as agi_call (header block, then `200 result=1` to every
    command, until the server closes), without the stream machinery, so that
    the load generator costs less CPU per call than the server it measures.
    """

    __slots__ = ("payload", "done", "variables", "commands", "buf", "transport", "task", "expired")

    def __init__(
        self, payload: bytes, done: asyncio.Future[dict[str, str]], task: asyncio.Task[object] | None = None
    ) -> None:
        self.payload = payload
        self.done = done
        self.variables: dict[str, str] = {}
        self.commands = 0
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.task = task  # the request's task: cancelled if the deadline passes while connecting
        self.expired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not isinstance(asyncio.Transport): uvloop's transports only quack like one
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.payload)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        if len(data) > REPLY_LINE_BYTES_MAX:
            self._finish(ConnectionError("command line too long"))
            return
        nl = data.find(b"\n")
        if nl < 0:
            self.buf = data
            return
        variables = self.variables
        replies = 0
        start = 0
        while nl >= 0:
            line = data[start:nl]
            start = nl + 1
            nl = data.find(b"\n", start)
            replies += 1
            if line.startswith(b"EXEC MSet "):
                # What serve sends: EXEC MSet "A=1,B=2" - one quoted argument, nothing to unescape.
                arg = line[10:].rstrip(b"\r")
                if (
                    len(arg) >= 2
                    and arg[0] == arg[-1] == _QUOTE
                    and arg.count(b'"') == 2
                    and b"\\" not in arg
                ):
                    text = arg[1:-1].decode("utf-8", "replace")
                else:
                    parts = parse_command_args(line.decode("utf-8", "replace").rstrip("\r"))
                    text = parts[2] if len(parts) > 2 else ""
                mset_into(variables, text)
            elif line.startswith(b"SET VARIABLE "):
                text = line[13:].decode("utf-8", "replace").rstrip("\r")
                name, _, value = text.partition(" ")
                if len(value) >= 2 and value[0] == '"' and value[-1] == '"' and "\\" not in value:
                    value = value[1:-1]
                else:
                    parts = parse_command_args(text)
                    value = parts[1] if len(parts) > 1 else ""
                variables[name] = value
        self.buf = data[start:]
        self.commands += replies
        assert self.transport is not None
        self.transport.write(b"200 result=1\n" if replies == 1 else b"200 result=1\n" * replies)
        # EXEC answers result=0 in Asterisk; unused here

    def eof_received(self) -> bool:
        self._finish(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(self.variables)
        else:
            self.done.set_exception(exc)
            if self.transport is not None:
                self.transport.abort()

    def expire(self) -> None:
        """The deadline passed: abort the connection, or the connecting itself."""
        if self.expired:
            return
        self.expired = True
        if self.transport is not None:
            self._finish(TimeoutError())
        elif self.task is not None and not self.done.done():
            self.task.cancel()


class _Deadlines:
    """The requests open on one event loop, and one timer for all of them.

    Cheaper per request than asyncio.timeout() (a Timeout object, a timer, and a
    reschedule on entry) or a call_later() each: a dict entry. The timer ticks every
    `tick_s` while requests are open; a request expires at most tick_s after its deadline.
    """

    __slots__ = ("loop", "open", "timer", "tick_s")
    _by_loop: dict[asyncio.AbstractEventLoop, _Deadlines] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_s: float) -> None:
        self.loop = loop
        self.open: dict[_LeanAgi, float] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.tick_s = tick_s

    @classmethod
    def add(cls, loop: asyncio.AbstractEventLoop, proto: _LeanAgi, timeout_s: float) -> _Deadlines:
        d = cls._by_loop.get(loop)
        if d is None:
            d = cls._by_loop[loop] = cls(loop, min(DEADLINE_TICK_S, timeout_s))
        if not d.open:
            d.timer = loop.call_later(d.tick_s, d._tick)
        d.tick_s = min(d.tick_s, timeout_s)
        d.open[proto] = loop.time() + timeout_s
        return d

    def remove(self, proto: _LeanAgi) -> None:
        self.open.pop(proto, None)
        if not self.open:
            # nothing left to watch: no timer, and no reference to a loop that may close now
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self._by_loop.pop(self.loop, None)

    def _tick(self) -> None:
        now = self.loop.time()
        for proto, deadline in list(self.open.items()):
            if deadline <= now:
                proto.expire()
        self.timer = self.loop.call_later(self.tick_s, self._tick) if self.open else None


async def agi_request(
    host: str,
    port: int,
    payload: bytes,
    *,
    timeout_s: float = PEER_TIMEOUT_S,
    loop: asyncio.AbstractEventLoop | None = None,
) -> dict[str, str]:
    """Send a prepared header block (see header_block); the variables the server set.

    TimeoutError if the server neither answers nor closes within timeout_s (connecting included).
    `loop`: the running loop, if the caller has it (asyncio.get_running_loop() makes a getpid()
    system call on Python 3.11).
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[str, str]] = loop.create_future()
    task = asyncio.current_task(loop)
    proto = _LeanAgi(payload, done, task)
    deadlines = _Deadlines.add(loop, proto, timeout_s)
    try:
        try:
            await loop.create_connection(lambda: proto, host, port)
        except asyncio.CancelledError:
            if not proto.expired:
                raise
            if task is not None:
                task.uncancel()
            raise TimeoutError(f"no connection within {timeout_s}s") from None
        return await done
    finally:
        deadlines.remove(proto)
        if proto.transport is not None:
            proto.transport.close()


class HeaderTemplate:
    """header_block() for many calls to one server: formatted once per script and argument count."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._templates: dict[tuple[str, int], str] = {}

    def _template(self, script: str, nargs: int) -> str:
        """header_block's text with %s for extension, uniqueid, callerid, extension, args (in that order)."""

        def mark(name: str) -> str:
            return f"\x00{name}\x01"

        text = header_block(
            script,
            [mark(f"a{i}") for i in range(nargs)],
            uniqueid=mark("u"),
            callerid=mark("c"),
            extension=mark("e"),
            port=self.port,
        ).decode()
        pieces = re.split("\x00(\\w+)\x01", text.replace("%", "%%"))
        assert pieces[1::2] == ["e", "u", "c", "e"] + [f"a{i}" for i in range(nargs)], pieces[1::2]
        template = "%s".join(pieces[0::2])
        self._templates[(script, nargs)] = template
        return template

    def block(self, script: str, args: list[str], *, uniqueid: str, callerid: str, extension: str) -> bytes:
        template = self._templates.get((script, len(args))) or self._template(script, len(args))
        return (template % (extension, uniqueid, callerid, extension, *args)).encode()
