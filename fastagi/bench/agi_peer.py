"""A FastAGI client that speaks as Asterisk does: for protocol tests and the benchmark only.

It sends the agi_* header block res_agi sends, answers every command `200 result=1`,
records SET VARIABLE, and returns when the server closes the connection.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..agi import parse_command_args

REPLY_LINE_BYTES_MAX = 65536
PEER_TIMEOUT_S = 10.0   # a server that neither answers nor closes within this fails the call


@dataclass
class AgiResult:
    variables: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)


def header_block(script: str, args: list[str], *, uniqueid: str, callerid: str = "13800138000",
                 extension: str = "4008001234", channel: str | None = None,
                 port: int = 4573, linkedid: str | None = None) -> bytes:
    headers = {
        "agi_network": "yes", "agi_network_script": script,
        "agi_request": f"agi://127.0.0.1:{port}/{script}",
        "agi_channel": channel or f"Local/{extension}@extbill-ivr-00000001;2",
        "agi_language": "en", "agi_type": "Local", "agi_uniqueid": uniqueid, "agi_version": "22.0.0",
        "agi_callerid": callerid, "agi_calleridname": "unknown", "agi_callingpres": "0",
        "agi_callingani2": "0", "agi_callington": "0", "agi_callingtns": "0", "agi_dnid": "unknown",
        "agi_rdnis": "unknown", "agi_context": "extbill-ivr", "agi_extension": extension,
        "agi_priority": "7", "agi_enhanced": "0.0", "agi_accountcode": "", "agi_threadid": "140000000",
    }
    if linkedid:
        headers["agi_linkedid"] = linkedid
    for i, arg in enumerate(args, 1):
        headers[f"agi_arg_{i}"] = arg
    return ("".join(f"{k}: {v}\n" for k, v in headers.items()) + "\n").encode()


async def agi_call(host: str, port: int, script: str, args: list[str], *, uniqueid: str,
                   callerid: str = "13800138000", hangup_after_headers: bool = False,
                   timeout_s: float = PEER_TIMEOUT_S) -> AgiResult:
    """One FastAGI request as Asterisk makes it; the variables the server set."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    result = AgiResult()
    try:
        extension = args[0] if args and args[0].startswith("400") else "4008001234"
        writer.write(header_block(script, args, uniqueid=uniqueid, callerid=callerid,
                                  extension=extension, port=port))
        if hangup_after_headers:
            writer.write(b"HANGUP\n")
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout_s)
            if not line:
                return result
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            result.commands.append(text)
            parts = parse_command_args(text)
            if len(parts) >= 4 and parts[0].upper() == "SET" and parts[1].upper() == "VARIABLE":
                result.variables[parts[2]] = parts[3]
            elif len(parts) >= 3 and parts[0].upper() == "EXEC" and parts[1].upper() == "MSET":
                for pair in parts[2].split(","):   # as app MSet splits it
                    name, _, value = pair.partition("=")
                    result.variables[name] = value
            writer.write(b"511 Command Not Permitted on a dead channel or intercept routine\n"
                         if hangup_after_headers else
                         b"200 result=0\n" if parts[:1] == ["EXEC"] else b"200 result=1\n")
            await writer.drain()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class _LeanAgi(asyncio.Protocol):
    """One FastAGI request over a bare asyncio.Protocol: the benchmark's fast path.

    The same exchange as agi_call (header block, then `200 result=1` to every
    command, until the server closes), without the stream machinery, so that
    the load generator costs less CPU per call than the server it measures.
    """

    __slots__ = ("payload", "done", "variables", "commands", "buf", "transport")

    def __init__(self, payload: bytes, done: asyncio.Future[dict[str, str]]) -> None:
        self.payload = payload
        self.done = done
        self.variables: dict[str, str] = {}
        self.commands = 0
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not isinstance(asyncio.Transport): uvloop's transports only quack like one
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.payload)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if len(buf) > REPLY_LINE_BYTES_MAX:
            self._finish(ConnectionError("command line too long"))
            return
        replies = 0
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1:]
            replies += 1
            if line.startswith(b"SET VARIABLE "):
                text = line[13:].decode("utf-8", "replace").rstrip("\r")
                name, _, value = text.partition(" ")
                if len(value) >= 2 and value[0] == '"' and value[-1] == '"' and "\\" not in value:
                    value = value[1:-1]
                else:
                    parts = parse_command_args(text)
                    value = parts[1] if len(parts) > 1 else ""
                self.variables[name] = value
            elif line.startswith(b"EXEC MSet "):
                parts = parse_command_args(line.decode("utf-8", "replace").rstrip("\r"))
                for pair in (parts[2] if len(parts) > 2 else "").split(","):   # as app MSet splits it
                    name, _, value = pair.partition("=")
                    self.variables[name] = value
        self.buf = buf
        if replies:
            self.commands += replies
            assert self.transport is not None
            self.transport.write(b"200 result=1\n" * replies)   # EXEC answers result=0; unused here

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


async def agi_request(host: str, port: int, payload: bytes, *,
                      timeout_s: float = PEER_TIMEOUT_S) -> dict[str, str]:
    """Send a prepared header block (see header_block); the variables the server set."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[str, str]] = loop.create_future()
    async with asyncio.timeout(timeout_s):   # not wait_for: that makes a task per call
        transport, _ = await loop.create_connection(lambda: _LeanAgi(payload, done), host, port)
        try:
            return await done
        finally:
            transport.close()


class HeaderTemplate:
    """header_block() for many calls to one server: the fixed lines are formatted once."""

    def __init__(self, port: int) -> None:
        text = header_block("{script}", [], uniqueid="{uniqueid}", callerid="{callerid}",
                            extension="{extension}", port=port).decode()
        assert text.endswith("\n\n") and text.count("{") == 6  # script, extension twice; uniqueid, callerid
        self._fmt = text[:-1]   # without the blank line that ends the block

    def block(self, script: str, args: list[str], *, uniqueid: str, callerid: str, extension: str) -> bytes:
        head = self._fmt.format(script=script, uniqueid=uniqueid, callerid=callerid, extension=extension)
        return (head + "".join(f"agi_arg_{i}: {a}\n" for i, a in enumerate(args, 1)) + "\n").encode()
