"""A fake Asterisk Manager Interface for the benchmark: `extbill serve` connects to it.

It speaks as Asterisk 22 does to extbill's AMI client: the banner, Login, Ping,
CoreShowChannels (listing the calls the load generator says are live), and events
with `Timestamp: sec.usec` and `ChanVariable: EXTBILL_ID=<billing id>`
(manager.conf timestampevents=yes, channelvars=EXTBILL_ID). Events are queued on
the one logged-in connection; nothing is sent before Login.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from fastagi.core import ami_wire

BANNER = ami_wire.BANNER_PREFIX + b"9.0.0\r\n"
CAUSE_NORMAL = "16"
CALLEE_EPOCH = 1_732_659_999  # the callee channels' uniqueids: another "epoch" than the callers'


def ts(ms: int) -> str:
    """Unix ms -> the `Timestamp` header Asterisk writes ("%ld.%06lu")."""
    return f"{ms // 1000}.{ms % 1000:03d}000"


def _message(fields: Iterable[tuple[str, str]]) -> bytes:
    return ami_wire.serialize(fields)


def _channel_fields(prefix: str, channel: str, uniqueid: str, billing_id: str) -> list[tuple[str, str]]:
    return [
        (f"{prefix}Channel", channel),
        (f"{prefix}ChannelState", "6"),
        (f"{prefix}ChannelStateDesc", "Up"),
        (f"{prefix}CallerIDNum", "13800138000"),
        (f"{prefix}Context", "extbill-ivr"),
        (f"{prefix}Exten", "s"),
        (f"{prefix}Priority", "1"),
        (f"{prefix}Uniqueid", uniqueid),
        (f"{prefix}Linkedid", billing_id),
        (f"{prefix}ChanVariable", f"EXTBILL_ID={billing_id}"),
    ]


def _fields_template(fields: Iterable[tuple[str, str]]) -> bytes:
    """Header lines as _message writes them (without the blank line), for bytes %-formatting."""
    lines = ami_wire.serialize(fields)[: -len(ami_wire.EOL)]
    return lines.replace(b"%", b"%%").replace(b"\x00", b"%s")


# The events' bytes, %-formatted per call: the same lines _message writes from the
# CallChannels.reference_* field lists (tests/test_bench.py holds them equal), without
# building a list of pairs, f-strings and a join per event. \x00 marks a value.
_V = "\x00"
_CHANNEL = _fields_template(_channel_fields("", _V, _V, _V))  # channel, uniqueid, linkedid, id
_DEST_CHANNEL = _fields_template(_channel_fields("Dest", _V, _V, _V))
_EVENT = _fields_template([("Event", _V), ("Privilege", "call,all"), ("Timestamp", _V)])
_DIAL_END = _EVENT + b"%s%s" + _fields_template([("DialStatus", _V)]) + b"\r\n"
_BRIDGE = (
    _EVENT
    + _fields_template(
        [
            ("BridgeUniqueid", "bridge-" + _V),
            ("BridgeType", "basic"),
            ("BridgeTechnology", "simple_bridge"),
            ("BridgeNumChannels", "2"),
        ]
    )
    + b"%s\r\n"
)
_HANGUP = (
    _EVENT + b"%s" + _fields_template([("Cause", CAUSE_NORMAL), ("Cause-txt", "Normal Clearing")]) + b"\r\n"
)
_ANSWERED = _DIAL_END + _BRIDGE + _BRIDGE
_ENDED = _BRIDGE + _BRIDGE + _HANGUP
_UNANSWERED = _DIAL_END + _HANGUP


def _ts(ms: int) -> bytes:
    """ts() as bytes."""
    return b"%d.%03d000" % divmod(ms, 1000)


class CallChannels:
    """The two channels of a granted call: the caller's IVR channel and the callee's."""

    __slots__ = ("billing_id", "seq", "_id", "_caller", "_callee", "_dest")

    def __init__(self, billing_id: str, seq: int) -> None:
        self.billing_id = billing_id
        self.seq = seq
        bid = self._id = billing_id.encode()
        callee_chan, callee_uid = b"Local/branch@bench-branches-%08x;1" % seq, b"%d.%d" % (CALLEE_EPOCH, seq)
        # each channel's header lines, the same in every event of the call
        self._caller = _CHANNEL % (b"PJSIP/trunk-ct-%08x" % seq, bid, bid, bid)
        self._callee = _CHANNEL % (callee_chan, callee_uid, bid, bid)
        self._dest = _DEST_CHANNEL % (callee_chan, callee_uid, bid, bid)

    @property
    def caller_chan(self) -> str:
        return f"PJSIP/trunk-ct-{self.seq:08x}"

    @property
    def callee_uid(self) -> str:
        return f"{CALLEE_EPOCH}.{self.seq}"

    @property
    def callee_chan(self) -> str:
        return f"Local/branch@bench-branches-{self.seq:08x};1"

    def caller(self) -> list[tuple[str, str]]:
        return _channel_fields("", self.caller_chan, self.billing_id, self.billing_id)

    def callee(self) -> list[tuple[str, str]]:
        return _channel_fields("", self.callee_chan, self.callee_uid, self.billing_id)

    # The events as lists of fields: what the templates below must write (and CoreShowChannel).
    def reference_dial_end(self, at_ms: int, status: str) -> bytes:
        return _message(
            [
                ("Event", "DialEnd"),
                ("Privilege", "call,all"),
                ("Timestamp", ts(at_ms)),
                *self.caller(),
                *_channel_fields("Dest", self.callee_chan, self.callee_uid, self.billing_id),
                ("DialStatus", status),
            ]
        )

    def reference_bridge(self, event: str, at_ms: int, caller: bool) -> bytes:
        return _message(
            [
                ("Event", event),
                ("Privilege", "call,all"),
                ("Timestamp", ts(at_ms)),
                ("BridgeUniqueid", f"bridge-{self.billing_id}"),
                ("BridgeType", "basic"),
                ("BridgeTechnology", "simple_bridge"),
                ("BridgeNumChannels", "2"),
                *(self.caller() if caller else self.callee()),
            ]
        )

    def reference_hangup(self, at_ms: int, caller: bool) -> bytes:
        return _message(
            [
                ("Event", "Hangup"),
                ("Privilege", "call,all"),
                ("Timestamp", ts(at_ms)),
                *(self.caller() if caller else self.callee()),
                ("Cause", CAUSE_NORMAL),
                ("Cause-txt", "Normal Clearing"),
            ]
        )

    def dial_end(self, at_ms: int, status: str) -> bytes:
        return _DIAL_END % (b"DialEnd", _ts(at_ms), self._caller, self._dest, status.encode())

    def bridge(self, event: str, at_ms: int, caller: bool) -> bytes:
        return _BRIDGE % (event.encode(), _ts(at_ms), self._id, self._caller if caller else self._callee)

    def hangup(self, at_ms: int, caller: bool) -> bytes:
        return _HANGUP % (b"Hangup", _ts(at_ms), self._caller if caller else self._callee)

    def answered_events(self, answer_ms: int) -> bytes:
        """The callee answers and the two channels are bridged."""
        # dial_end(answer_ms, "ANSWER") + bridge("BridgeEnter", answer_ms + 5, False)
        # + bridge("BridgeEnter", answer_ms + 6, True), in one formatting
        return _ANSWERED % (
            b"DialEnd",
            _ts(answer_ms),
            self._caller,
            self._dest,
            b"ANSWER",
            b"BridgeEnter",
            _ts(answer_ms + 5),
            self._id,
            self._callee,
            b"BridgeEnter",
            _ts(answer_ms + 6),
            self._id,
            self._caller,
        )

    # How a call ends, in Asterisk's order: the talk ends (both leave the bridge, the callee's
    # channel is destroyed), then the caller's channel runs its hangup handler - the dialplan's
    # `hangup` FastAGI request - and only once that returns is the caller's channel destroyed:
    # its Hangup event comes last, and CoreShowChannels lists it until then.
    def ended_events(self, end_ms: int) -> bytes:
        """The talk ends: both leave the bridge, the callee hangs up (the caller's Hangup: caller_hangup)."""
        # bridge("BridgeLeave", end_ms, True) + bridge("BridgeLeave", end_ms + 1, False)
        # + hangup(end_ms + 2, False)
        return _ENDED % (
            b"BridgeLeave",
            _ts(end_ms),
            self._id,
            self._caller,
            b"BridgeLeave",
            _ts(end_ms + 1),
            self._id,
            self._callee,
            b"Hangup",
            _ts(end_ms + 2),
            self._callee,
        )

    def unanswered_events(self, end_ms: int, status: str) -> bytes:
        """The Dial gives up (NOANSWER, BUSY ...): the ringing callee channel is hung up."""
        # dial_end(end_ms, status) + hangup(end_ms + 1, False)
        return _UNANSWERED % (
            b"DialEnd",
            _ts(end_ms),
            self._caller,
            self._dest,
            status.encode(),
            b"Hangup",
            _ts(end_ms + 1),
            self._callee,
        )

    def caller_hangup(self, at_ms: int) -> bytes:
        """The caller's channel is destroyed, after its hangup handler ran."""
        return self.hangup(at_ms, True)

    def core_show_channel(self, action_id: str) -> bytes:
        return _message(
            [
                ("Event", "CoreShowChannel"),
                ("ActionID", action_id),
                *self.caller(),
                ("Application", "Dial"),
                ("Duration", "00:00:10"),
            ]
        )


class FakeAmi:
    """Listens on 127.0.0.1; one client at a time (the newest wins), as serve uses it."""

    def __init__(self, username: str, secret: str, live_calls: Callable[[], Iterable[CallChannels]]) -> None:
        self.username, self.secret = username, secret
        self.live_calls = live_calls
        self.port = 0
        self.logged_in = asyncio.Event()  # set after Login and the first CoreShowChannels
        self.logins = 0
        self.actions = 0
        self.setvars = 0
        self.originates = 0
        self.bytes_sent = 0
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, limit=ami_wire.MESSAGE_BYTES_MAX
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def disconnect(self) -> None:
        """Drop the logged-in client's connection, as an Asterisk restart does; it may log in again."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def send(self, data: bytes) -> bool:
        """Queue events for the logged-in client; False when none is connected (they are lost)."""
        w = self._writer
        if w is None or w.is_closing():
            return False
        w.write(data)
        self.bytes_sent += len(data)
        return True

    async def drain(self) -> None:
        w = self._writer
        if w is not None and not w.is_closing():
            await w.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(BANNER)
        authed = False
        try:
            while True:
                fields = ami_wire.parse(await reader.readuntil(ami_wire.MESSAGE_END))
                self.actions += 1
                action, aid = fields.get("action", "").lower(), fields.get("actionid", "")
                if action == "login":
                    authed = fields.get("username") == self.username and fields.get("secret") == self.secret
                    writer.write(
                        _message(
                            [
                                ("Response", "Success" if authed else "Error"),
                                ("ActionID", aid),
                                ("Message", "Authentication accepted" if authed else "Authentication failed"),
                            ]
                        )
                    )
                elif not authed:
                    writer.write(
                        _message([("Response", "Error"), ("ActionID", aid), ("Message", "Permission denied")])
                    )
                elif action == "coreshowchannels":
                    self._list_channels(writer, aid)
                elif action == "ping":
                    writer.write(
                        _message(
                            [
                                ("Response", "Success"),
                                ("ActionID", aid),
                                ("Ping", "Pong"),
                                ("Timestamp", f"{time.time():.6f}"),
                            ]
                        )
                    )
                elif action in ("setvar", "originate"):
                    # mid-call renewals (TIMEOUT(absolute) of the callee, EXTBILL_LIMIT_MS of the
                    # caller) and final-grant warnings: answered as Asterisk does for a live channel
                    if action == "setvar":
                        self.setvars += 1
                    else:
                        self.originates += 1
                    message = "Variable Set" if action == "setvar" else "Originate successfully queued"
                    writer.write(_message([("Response", "Success"), ("ActionID", aid), ("Message", message)]))
                else:
                    writer.write(
                        _message(
                            [("Response", "Error"), ("ActionID", aid), ("Message", "Invalid/unknown command")]
                        )
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()

    def _list_channels(self, writer: asyncio.StreamWriter, aid: str) -> None:
        """CoreShowChannels: the live calls; from here on events go to this connection."""
        calls = list(self.live_calls())
        writer.write(
            _message(
                [
                    ("Response", "Success"),
                    ("ActionID", aid),
                    ("EventList", "start"),
                    ("Message", "Channels will follow"),
                ]
            )
        )
        writer.write(b"".join(c.core_show_channel(aid) for c in calls))
        writer.write(
            _message(
                [
                    ("Event", "CoreShowChannelsComplete"),
                    ("ActionID", aid),
                    ("EventList", "Complete"),
                    ("ListItems", str(len(calls))),
                ]
            )
        )
        # From here on events go to this connection (Asterisk sends them from Login on;
        # the bench only starts calls after this point).
        self._writer = writer
        self.logins += 1
        self.logged_in.set()
