"""The AMI wire format, sans-IO: one message is header lines `Key: Value` ended by a blank
line (CRLF CRLF); a connection opens with one banner line (`Asterisk Call Manager/x.y`).

Every AMI speaker in the tree (the product's client, doctor, the Asterisk harness, the
benchmark's fake Asterisk) writes through `serialize`, the one place that refuses CR/LF in
a header (a value with CRLF would smuggle in a header or a whole action), and reads with
`pairs`/`parse` (and `Framer` where it reads raw chunks), the one splitting rule.

The splitting rule is what Asterisk writes and panoramisk reads: a header line is split
at its first ": "; the value is kept as is; a line without ": " is no header and is
skipped (Asterisk's own `astman_append` always writes "%s: %s").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

EOL = "\r\n"
MESSAGE_END = b"\r\n\r\n"
BANNER_PREFIX = b"Asterisk Call Manager/"

MESSAGE_BYTES_MAX = 256 * 1024
"""One message, headers up to the blank line: a longer one is refused (the peer is not AMI
or is flooding). CoreShowChannels answers with one message per channel, so even a busy
Asterisk stays far below it."""
BANNER_BYTES_MAX = 1024
"""The banner line; Asterisk's is about 30 bytes."""

Headers = Mapping[str, "str | Sequence[str]"] | Iterable[tuple[str, str]]
"""What `serialize` takes: a mapping (a list value becomes repeated headers, e.g. several
`Variable:` of an Originate) or ordered (key, value) pairs."""


class AmiWireError(ValueError):
    """A message that must not be written or cannot be read."""


class AmiHeaderInjection(AmiWireError):
    """CR or LF in a header key or value: written as is it would end the header early."""


class AmiMessageTooLarge(AmiWireError):
    """A message (or the banner) longer than its named limit."""


def _items(headers: Headers) -> Iterable[tuple[str, str]]:
    if isinstance(headers, Mapping):
        for key, value in headers.items():
            if isinstance(value, str):
                yield key, value
            else:
                for v in value:
                    yield key, v
    else:
        yield from headers


def serialize(headers: Headers) -> bytes:
    """The message's bytes, blank line included. AmiHeaderInjection for CR/LF anywhere."""
    lines = []
    for key, value in _items(headers):
        key, value = str(key), str(value)
        if "\r" in key or "\n" in key or "\r" in value or "\n" in value:
            raise AmiHeaderInjection(f"CR/LF in AMI header {key!r}")
        lines.append(f"{key}: {value}\r\n")
    lines.append(EOL)
    return "".join(lines).encode("utf-8")


def decode(block: bytes | str) -> str:
    """A whole message's text (decoded whole, so a multi-byte character is never cut)."""
    return block if isinstance(block, str) else block.decode("utf-8", "replace")


def pairs(block: bytes | str) -> list[tuple[str, str]]:
    """Every header of one message, in order, with the key's spelling as sent."""
    out = []
    for line in decode(block).split(EOL):
        key, sep, value = line.partition(": ")
        if sep:
            out.append((key, value))
    return out


def parse(block: bytes | str) -> dict[str, str]:
    """One message as a dict with lowercase keys; of a repeated key the first one counts,
    as in Asterisk's own `astman_get_header` (use `pairs` to see every repeat)."""
    out: dict[str, str] = {}
    for key, value in pairs(block):
        out.setdefault(key.lower(), value)
    return out


def banner_ok(line: bytes) -> bool:
    """Is this first line an Asterisk manager's banner?"""
    return line.startswith(BANNER_PREFIX) and len(line) <= BANNER_BYTES_MAX


class Framer:
    """Cuts a byte stream into messages, however the reads split it.

    feed(chunk) returns the messages completed by it (each without its blank line; empty
    messages, i.e. stray blank lines, are dropped). AmiMessageTooLarge when an unfinished
    message grows past max_bytes: the stream is then unusable.
    """

    def __init__(self, max_bytes: int = MESSAGE_BYTES_MAX) -> None:
        self.max_bytes = max_bytes
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        # A terminator may straddle the join: search from 3 bytes before it, not from 0
        # (a message fed byte by byte stays linear).
        search = max(0, len(self._buf) - len(MESSAGE_END) + 1)
        buf = self._buf + chunk
        out, start = [], 0
        while (end := buf.find(MESSAGE_END, max(start, search))) >= 0:
            block = buf[start:end]
            if len(block) > self.max_bytes:
                raise AmiMessageTooLarge(f"AMI message over {self.max_bytes} bytes")
            if block.strip(b"\r\n"):
                out.append(block.lstrip(b"\r\n"))
            start = end + len(MESSAGE_END)
        self._buf = buf[start:]
        # it may hold a whole message of max_bytes and the first 3 bytes of its terminator
        if len(self._buf) > self.max_bytes + len(MESSAGE_END) - 1:
            raise AmiMessageTooLarge(f"AMI message over {self.max_bytes} bytes")
        return out

    @property
    def pending(self) -> int:
        """Bytes of the unfinished message."""
        return len(self._buf)
