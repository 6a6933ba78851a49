"""Sans-IO FastAGI session: bytes in, events out; commands in, bytes out.

No sockets, no asyncio, no clock, no logging: every I/O shell (the server, the
tests, the benchmark's fake Asterisk) drives this same state machine. The wire
format follows Asterisk's res/res_agi.c (setup_env, run_agi, agi_handle_command).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import unquote_plus

__all__ = [
    "COMMAND_BYTES_MAX",
    "HEADER_BYTES_MAX",
    "HEADER_LINES_MAX",
    "LINE_BYTES_MAX",
    "USAGE_LINES_MAX",
    "AgiRequest",
    "AgiSession",
    "ConnectionClosed",
    "Event",
    "Hangup",
    "HeadersComplete",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Reply",
    "State",
    "parse_command_args",
    "quote_arg",
    "set_variable_command",
]

# --- limits -----------------------------------------------------------------
HEADER_BYTES_MAX = 64 * 1024
"""Whole header block, terminators included. A real one is well under 2 KiB."""
HEADER_LINES_MAX = 200
"""Header lines before the blank line: ~22 fixed agi_* lines plus agi_arg_N."""
LINE_BYTES_MAX = 8192
"""Any single line (header or reply), terminator included."""
USAGE_LINES_MAX = 200
"""Lines inside one multi-line `520-` usage reply."""
COMMAND_BYTES_MAX = 2047
"""One command line with its newline: run_agi reads into char[AGI_BUF_LEN=2048]
with fgets, and a longer line is split into two commands (desync)."""


# --- errors -----------------------------------------------------------------
class ProtocolError(Exception):
    """Base of the typed protocol errors."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (garbage, over a limit, unexpected reply, early close)."""


class LocalProtocolError(ProtocolError):
    """We misused the session (command while one is pending, before headers, bad text)."""


# --- events -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AgiRequest:
    """The header block of one FastAGI call, with the fields a handler needs typed out."""

    headers: dict[str, str]
    script: str
    """agi_network_script without `?query` and leading `/`: the route name."""
    query: dict[str, str]
    """First value of each key of the `?query` of agi_network_script."""
    args: list[str]
    """agi_arg_1..agi_arg_N in order, stopping at the first gap."""
    uniqueid: str
    channel: str
    callerid: str
    calleridname: str
    language: str
    extension: str
    context: str

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> AgiRequest:
        get = headers.get
        path, _, qs = get("agi_network_script", "").partition("?")
        query = _parse_query(qs) if qs else {}
        args: list[str] = []
        while (arg := get(f"agi_arg_{len(args) + 1}")) is not None:
            args.append(arg)
        return cls(
            headers=headers,
            script=path.lstrip("/"),
            query=query,
            args=args,
            uniqueid=get("agi_uniqueid", ""),
            channel=get("agi_channel", ""),
            callerid=get("agi_callerid", ""),
            calleridname=get("agi_calleridname", ""),
            language=get("agi_language", ""),
            extension=get("agi_extension", ""),
            context=get("agi_context", ""),
        )


@dataclass(frozen=True, slots=True)
class HeadersComplete:
    """The header block ended; commands may be sent from now on."""

    request: AgiRequest


@dataclass(frozen=True, slots=True)
class Reply:
    """The final answer to one command (200, 503, 510, 511 or 520)."""

    code: int
    result: int | None
    """`result=N` as an integer; None when absent or not an integer."""
    data: str | None
    """Text in parentheses after result (GET VARIABLE's value), or the message text."""
    endpos: int | None
    raw: str
    """The reply line(s) as received, newline-joined, without terminators."""
    value: str | None = None
    """`result=` text verbatim (GET DATA digits keep leading zeros, `*`, `#`)."""

    @property
    def ok(self) -> bool:
        return self.code == 200


@dataclass(frozen=True, slots=True)
class Hangup:
    """Asterisk's unsolicited `HANGUP` line: the caller is gone (first one only)."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed cleanly (between commands)."""


Event = HeadersComplete | Reply | Hangup | ConnectionClosed


class State(enum.Enum):
    HEADERS = "headers"
    IDLE = "idle"
    AWAITING_REPLY = "awaiting_reply"
    CLOSED = "closed"
    ERROR = "error"


_FINAL_CODES = frozenset((200, 503, 510, 511, 520))
_HANGUP = Hangup()
_CLOSED = ConnectionClosed()
# One header line, as setup_env writes it: "agi_name: value" ("agi_accountcode: "
# is an empty value); one trailing \r is tolerated. Compiled once, used per block.
_HEADER_LINE = re.compile(r"^(agi_[A-Za-z0-9_]+): ?(.*?)\r?$", re.MULTILINE)


def _parse_query(qs: str) -> dict[str, str]:
    """parse_qs(qs, keep_blank_values=True) keeping each key's first value, at a third of the cost."""
    query: dict[str, str] = {}
    for part in qs.split("&"):
        if part:
            key, _, value = part.partition("=")
            query.setdefault(unquote_plus(key), unquote_plus(value))
    return query


def _to_int(text: str) -> int | None:
    digits = text[1:] if text[:1] == "-" else text
    # isdigit() alone accepts non-ASCII digits; int() alone accepts "1_0" and " 1".
    if digits.isascii() and digits.isdigit():
        return int(text)
    return None


def _parse_reply_line(line: str) -> Reply | None:
    """One final reply line -> Reply; None for the provisional `100 ... Trying`."""
    if len(line) < 3 or not line[:3].isascii() or not line[:3].isdigit() or line[3:4] not in ("", " "):
        raise RemoteProtocolError(f"malformed reply line: {line[:80]!r}")
    code = int(line[:3])
    if code == 100:
        return None  # EXEC Gosub's "100 result=0 Trying...": the final 200 follows
    if code not in _FINAL_CODES:
        raise RemoteProtocolError(f"unknown reply code {code}")
    rest = line[4:]
    result = value = data = endpos = None
    if rest.startswith("result="):
        value, _, tail = rest[7:].partition(" ")
        result = _to_int(value)
        if tail.startswith("("):
            # GET VARIABLE's value may itself contain ")" or " x=y": if the line ends
            # with ")", all of it is data; else data stops at the first ")".
            if tail.endswith(")"):
                data, tail = tail[1:-1], ""
            else:
                close = tail.find(")")
                data, tail = (tail[1:close], tail[close + 1 :]) if close > 0 else (tail[1:], "")
        words = []
        for word in tail.split():
            if word.startswith("endpos="):
                endpos = _to_int(word[7:])
            elif "=" not in word:
                words.append(word)
        if data is None and words:
            data = " ".join(words)  # "200 result=0 Gosub complete"
    elif code == 200:
        raise RemoteProtocolError(f"200 reply without result=: {line[:80]!r}")
    else:
        data = rest or None  # "510 Invalid or unknown command"
    return Reply(code, result, data, endpos, line, value)


class AgiSession:
    """One FastAGI connection, server side. Not thread-safe; one owner drives it.

    receive_data(bytes) -> events; eof() -> events; send_command(text) -> bytes.
    Raises RemoteProtocolError for the peer's faults (the session is then dead)
    and LocalProtocolError for ours.
    """

    __slots__ = ("_buf", "_state", "_line_start", "_header_lines", "_usage", "request", "hung_up")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = State.HEADERS
        self._line_start = 0  # start of the first unscanned header line in _buf
        self._header_lines = 0
        self._usage: list[str] | None = None  # lines of a 520- block being read
        self.request: AgiRequest | None = None
        self.hung_up = False

    @property
    def state(self) -> State:
        return self._state

    @property
    def pending(self) -> bool:
        """A command was sent and its final reply has not arrived yet."""
        return self._state is State.AWAITING_REPLY

    # --- input --------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        if self._state is State.ERROR:
            raise RemoteProtocolError("session already failed")
        if self._state is State.CLOSED:
            raise LocalProtocolError("receive_data after eof")
        buf = self._buf
        buf += data
        events: list[Event] = []
        try:
            if self._state is State.HEADERS:
                self._receive_headers(events)
            if self._state is not State.HEADERS and buf:
                self._receive_replies(events)
        except RemoteProtocolError:
            self._state = State.ERROR
            buf.clear()
            raise
        return events

    def _receive_headers(self, events: list[Event]) -> None:
        # Only find() per line here (cheap, C); the block is decoded and parsed
        # once when its blank line arrives. _line_start survives across calls so
        # a byte-at-a-time peer costs O(n), not O(n^2).
        buf = self._buf
        start = self._line_start
        if start == 0 and buf.startswith(b"agi_"):
            # Fast path, the usual case: the whole block is in one short chunk.
            # Same outcome as the loop below (a block under LINE_BYTES_MAX has no
            # long line); _finish_headers validates every line either way.
            lf, crlf = buf.find(b"\n\n"), buf.find(b"\n\r\n")
            if lf >= 0 and (crlf < 0 or lf < crlf):
                block_end, consumed = lf + 1, lf + 2
            elif crlf >= 0:
                block_end, consumed = crlf + 1, crlf + 3
            else:
                block_end = consumed = LINE_BYTES_MAX + 1
            if consumed <= LINE_BYTES_MAX:
                self._header_lines = buf.count(b"\n", 0, block_end)
                if self._header_lines > HEADER_LINES_MAX:
                    raise RemoteProtocolError(f"header block over {HEADER_LINES_MAX} lines")
                self._finish_headers(block_end, consumed, events)
                return
        while (nl := buf.find(b"\n", start)) >= 0:
            if nl + 1 > HEADER_BYTES_MAX:
                raise RemoteProtocolError(f"header block over {HEADER_BYTES_MAX} bytes")
            if nl + 1 - start > LINE_BYTES_MAX:
                raise RemoteProtocolError(f"line over {LINE_BYTES_MAX} bytes")
            if nl == start or (nl == start + 1 and buf[start] == 13):  # blank line (13 = \r)
                self._finish_headers(start, nl + 1, events)
                return
            if not buf.startswith(b"agi_", start):  # fail fast on HTTP, TLS, scanners
                raise RemoteProtocolError(f"not an agi_* header line: {bytes(buf[start : start + 80])!r}")
            self._header_lines += 1
            if self._header_lines > HEADER_LINES_MAX:
                raise RemoteProtocolError(f"header block over {HEADER_LINES_MAX} lines")
            start = nl + 1
        self._line_start = start
        if len(buf) - start >= LINE_BYTES_MAX:
            raise RemoteProtocolError(f"line over {LINE_BYTES_MAX} bytes")
        if len(buf) >= HEADER_BYTES_MAX:
            raise RemoteProtocolError(f"header block over {HEADER_BYTES_MAX} bytes")

    def _finish_headers(self, block_end: int, consumed: int, events: list[Event]) -> None:
        buf = self._buf
        text = buf[:block_end].decode("utf-8", "replace")
        del buf[:consumed]
        pairs = _HEADER_LINE.findall(text)
        if len(pairs) != self._header_lines:
            # A line did not match: name the first one for the log.
            bad = next((ln for ln in text.split("\n") if not _HEADER_LINE.fullmatch(ln)), "?")
            raise RemoteProtocolError(f"not an agi_* header line: {bad[:80]!r}")
        headers = dict(pairs)
        if len(headers) != len(pairs):
            raise RemoteProtocolError("duplicate header line")
        self.request = AgiRequest.from_headers(headers)
        self._state = State.IDLE
        events.append(HeadersComplete(self.request))

    def _receive_replies(self, events: list[Event]) -> None:
        buf = self._buf
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            if nl + 1 - start > LINE_BYTES_MAX:
                raise RemoteProtocolError(f"line over {LINE_BYTES_MAX} bytes")
            end = nl - 1 if nl > start and buf[nl - 1] == 13 else nl  # 13 = "\r"
            line = buf[start:end].decode("utf-8", "replace")
            start = nl + 1
            self._reply_line(line, events)
        if start:
            del buf[:start]
        if len(buf) >= LINE_BYTES_MAX:
            raise RemoteProtocolError(f"line over {LINE_BYTES_MAX} bytes")

    def _reply_line(self, line: str, events: list[Event]) -> None:
        if line == "HANGUP":
            # Unsolicited, at any time after the headers, and sent again when
            # run_agi ends: never a reply, or every later reply is one line late.
            if not self.hung_up:
                self.hung_up = True
                events.append(_HANGUP)
            return
        if self._state is not State.AWAITING_REPLY:
            raise RemoteProtocolError(f"reply while no command pending: {line[:80]!r}")
        usage = self._usage
        if usage is not None:
            if line.startswith("520 "):
                self._usage = None
                raw = "\n".join(usage + [line])
                self._finish(Reply(520, None, "\n".join(usage[1:]), None, raw), events)
                return
            if len(usage) >= USAGE_LINES_MAX:
                raise RemoteProtocolError(f"520 usage over {USAGE_LINES_MAX} lines")
            usage.append(line)
            return
        if line.startswith("520-"):
            self._usage = [line]
            return
        reply = _parse_reply_line(line)
        if reply is not None:
            self._finish(reply, events)

    def _finish(self, reply: Reply, events: list[Event]) -> None:
        self._state = State.IDLE
        events.append(reply)

    def eof(self) -> list[Event]:
        """The peer closed. Clean between commands -> [ConnectionClosed]; else raise."""
        state = self._state
        if state is State.CLOSED or state is State.ERROR:
            return []
        self._state = State.CLOSED
        if state is State.HEADERS:
            raise RemoteProtocolError("connection closed during the header block")
        if self._buf:
            raise RemoteProtocolError("connection closed mid-line")
        if state is State.AWAITING_REPLY:
            raise RemoteProtocolError("connection closed while awaiting a reply")
        return [_CLOSED]

    # --- output -------------------------------------------------------------
    def send_command(self, text: str) -> bytes:
        state = self._state
        if state is State.HEADERS:
            raise LocalProtocolError("command before the header block is complete")
        if state is State.AWAITING_REPLY:
            raise LocalProtocolError("command while another is awaiting its reply")
        if state is not State.IDLE:
            raise LocalProtocolError(f"command on a {state.value} session")
        if "\n" in text or "\r" in text or "\0" in text:
            raise LocalProtocolError("command contains a line break or NUL")
        if not text.strip():
            raise LocalProtocolError("empty command")
        data = text.encode("utf-8") + b"\n"
        if len(data) > COMMAND_BYTES_MAX:
            raise LocalProtocolError(f"command over {COMMAND_BYTES_MAX} bytes")
        self._state = State.AWAITING_REPLY
        return data


# --- command helpers --------------------------------------------------------
def quote_arg(value: str) -> str:
    r"""Quote one argument for res_agi's parse_args: `"` ... `"` with `\` and `"` escaped.

    Inside quotes parse_args keeps spaces and tabs; `\x` yields `x`, so escaping
    exactly `\` and `"` round-trips any text without line breaks or NUL.
    """
    if "\n" in value or "\r" in value or "\0" in value:
        raise LocalProtocolError("argument contains a line break or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_variable_command(name: str, value: str) -> str:
    """`SET VARIABLE name "value"`; name may be a plain or function name (CDR(x))."""
    if not name or any(c in name for c in ' \t"\\\r\n\0'):
        raise LocalProtocolError(f"bad variable name: {name!r}")
    return f"SET VARIABLE {name} {quote_arg(value)}"


# MSet splits its argument on "," and "|", strips quotes and eats backslashes: only
# values without those go through it (ours are digits, names, ids and Dial strings).
_MSET_SAFE = re.compile(r"[A-Za-z0-9_./@&:+#*=-]*")
_NAME_SAFE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MSET_VARIABLES_MAX = 99  # app MSet takes up to 99 name=value pairs


def mset_command(pairs: list[tuple[str, str]]) -> str | None:
    """`EXEC MSet "A=1,B=2"`: several variables in one round trip, or None if a value
    cannot travel safely that way."""
    if not pairs or len(pairs) > MSET_VARIABLES_MAX:
        return None
    for name, value in pairs:
        if not _NAME_SAFE.fullmatch(name) or not _MSET_SAFE.fullmatch(value):
            return None
    text = "EXEC MSet " + quote_arg(",".join(f"{n}={v}" for n, v in pairs))
    return text if len(text) + 1 <= COMMAND_BYTES_MAX else None


def parse_command_args(line: str) -> list[str]:
    """Split a command line the way res_agi's parse_args does (for fakes and tests)."""
    args: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    in_word = False
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and not in_word:
                in_word = True
            continue
        if ch in " \t" and not quoted and not escaped:
            if in_word:
                args.append("".join(cur))
                cur = []
            in_word = False
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        in_word = True
        cur.append(ch)
        escaped = False
    if in_word:
        args.append("".join(cur))
    return args
