"""The AMI client over real TCP on 127.0.0.1 against a small fake Asterisk manager."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from panoramisk.message import Message
from structlog.testing import capture_logs

from fastagi.asterisk.ami_client import AmiActionTimeout, AmiClient, AmiLimits, AmiNotConnected, _Session
from fastagi.core.ami import AmiEvent, CallEnd, Correlator
from fastagi.dev.bench.ami_peer import CallChannels

SECRET = "s3cret"
# Short, but with room for a loaded CI machine: a spurious ping timeout would reconnect.
FAST = AmiLimits(
    connect_timeout_s=1.0,
    action_timeout_s=0.3,
    ping_interval_s=0.05,
    ping_timeout_s=1.0,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
    event_queue_max=100,
)


def block(*pairs: tuple[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in pairs).encode() + b"\r\n"


class FakeAmi:
    """Speaks enough of the AMI line protocol: Login, Ping, CoreShowChannels; the rest is configurable."""

    def __init__(self) -> None:
        self.refuse_logins = 0  # answer the next N logins with an error
        self.ignore_logins = 0  # never answer the next N logins
        self.hang_up_on_logins = 0  # close the connection on the next N logins, no reply
        self.mute_pings_connections = 0  # on the next N connections, never answer Ping
        self.silent_actions = {"status"}  # never answered: for action timeouts
        self.banner = b"Asterisk Call Manager/9.0.0\r\n"
        self.live: list[tuple[str, str]] = []  # (Uniqueid, EXTBILL_ID) of live channels
        self.logins: list[float] = []
        self.connections = 0
        self.closed_by_client = 0
        self.sessions: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> FakeAmi:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop_all()
        self._server.close()
        await self._server.wait_closed()

    def emit(self, *pairs: tuple[str, str]) -> None:
        for w in self.sessions:
            w.write(block(*pairs))

    def emit_raw(self, data: bytes) -> None:
        for w in self.sessions:
            w.write(data)

    def drop_all(self) -> None:
        for w in self.sessions:
            w.transport.abort()
        self.sessions.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        mute_pings = self.mute_pings_connections > 0
        self.mute_pings_connections -= mute_pings
        writer.write(self.banner)
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                f = dict(line.split(": ", 1) for line in raw.decode().strip().split("\r\n"))
                action, aid = f.get("Action", "").lower(), ("ActionID", f.get("ActionID", ""))
                if action == "login":
                    self.logins.append(time.monotonic())
                    if self.ignore_logins > 0:
                        self.ignore_logins -= 1
                    elif self.hang_up_on_logins > 0:
                        self.hang_up_on_logins -= 1
                        break
                    elif self.refuse_logins > 0 or f.get("Secret") != SECRET:
                        self.refuse_logins -= 1
                        writer.write(block(("Response", "Error"), aid, ("Message", "Authentication failed")))
                        await writer.drain()
                        break  # Asterisk closes the session after a failed login
                    else:
                        writer.write(
                            block(("Response", "Success"), aid, ("Message", "Authentication accepted"))
                        )
                        writer.write(
                            block(
                                ("Event", "FullyBooted"),
                                ("Privilege", "system,all"),
                                ("Status", "Fully Booted"),
                            )
                        )
                        self.sessions.append(writer)
                elif action == "ping":
                    if not mute_pings:
                        writer.write(
                            block(
                                ("Response", "Success"),
                                aid,
                                ("Ping", "Pong"),
                                ("Timestamp", "1732650000.000001"),
                            )
                        )
                elif action == "coreshowchannels":
                    writer.write(
                        block(
                            ("Response", "Success"),
                            aid,
                            ("EventList", "start"),
                            ("Message", "Channels will follow"),
                        )
                    )
                    for uid, bid in self.live:
                        writer.write(
                            block(
                                ("Event", "CoreShowChannel"),
                                aid,
                                ("Channel", f"PJSIP/t-{uid}"),
                                ("Uniqueid", uid),
                                ("ChanVariable", f"EXTBILL_ID={bid}"),
                            )
                        )
                    writer.write(
                        block(
                            ("Event", "CoreShowChannelsComplete"),
                            aid,
                            ("EventList", "Complete"),
                            ("ListItems", str(len(self.live))),
                        )
                    )
                elif action not in self.silent_actions:
                    writer.write(block(("Response", "Error"), aid, ("Message", "Invalid/unknown command")))
        except asyncio.IncompleteReadError:
            self.closed_by_client += 1
        except (ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            if writer in self.sessions:
                self.sessions.remove(writer)
            writer.close()


def aio(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test in its own event loop (the venv has no pytest-asyncio)."""

    @functools.wraps(fn)
    def run() -> None:
        asyncio.run(asyncio.wait_for(fn(), 10))

    return run


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.connected: list[set[str]] = []

    async def on_connected(self, live: set[str]) -> None:
        self.connected.append(live)


async def until(pred: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def client(
    port: int, rec: Recorder, limits: AmiLimits = FAST, secret: str = SECRET, on_event=None
) -> AmiClient:
    return AmiClient(
        "127.0.0.1", port, "extbill", secret, on_event or rec.events.append, rec.on_connected, limits
    )


@aio
async def test_refused_login_is_logged_and_retried_with_backoff_until_accepted():
    """Two refused logins give two clear error lines, growing retry delays, then a session."""
    rec = Recorder()
    async with FakeAmi() as ami:
        ami.refuse_logins = 2
        with capture_logs() as logs:
            c = client(ami.port, rec)
            await c.start()
            await until(lambda: c.connected and rec.connected)
            await c.stop()
    refused = [e for e in logs if e["event"] == "ami.login_refused"]
    assert len(refused) == 2 and refused[0]["log_level"] == "error"
    assert refused[0]["reply"] == "Authentication failed" and refused[0]["username"] == "extbill"
    assert len(ami.logins) == 3
    gaps = [b - a for a, b in zip(ami.logins, ami.logins[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # backoff doubles
    assert c.counters.login_refused == 2 and c.counters.sessions == 1
    assert [e["event"] for e in logs].count("ami.connected") == 1


@aio
async def test_events_reach_on_event_in_order_as_plain_dicts():
    """Events arrive in order as dicts with lowercase keys; one ChanVariable is a str, a repeated one a list; UTF-8 split across writes survives."""
    rec = Recorder()
    got_async: list[dict] = []

    async def on_event(e: dict) -> None:  # an async callback is awaited
        await asyncio.sleep(0)
        got_async.append(e)

    async with FakeAmi() as ami:
        c = client(ami.port, rec, on_event=on_event)
        await c.start()
        await until(lambda: bool(rec.connected))
        ami.emit(("Event", "Newchannel"), ("Uniqueid", "1.1"), ("ChanVariable", "EXTBILL_ID=1.1"))
        ami.emit(
            ("Event", "Hangup"),
            ("Uniqueid", "1.1"),
            ("ChanVariable", "EXTBILL_ID=1.1"),
            ("ChanVariable", "OTHER=x"),
        )
        name = "Event: Newchannel\r\nCallerIDName: 张三\r\n\r\n".encode()
        cut = name.index("张".encode()) + 1  # inside the first character
        ami.emit_raw(name[:cut])
        await asyncio.sleep(0.02)
        ami.emit_raw(name[cut:])
        await until(lambda: len(got_async) == 4)
        await c.stop()
    booted, new, hang, utf = got_async
    # AmiEvent: a plain dict (no panoramisk Message) whose keys the client lowercased once.
    assert all(type(e) is AmiEvent and all(k == k.lower() for k in e) for e in got_async)
    assert booted["event"] == "FullyBooted"
    assert new["chanvariable"] == "EXTBILL_ID=1.1" and "content" not in new
    assert hang["chanvariable"] == ["EXTBILL_ID=1.1", "OTHER=x"]
    assert utf["calleridname"] == "张三"


@aio
async def test_dropped_connection_reconnects_and_reports_live_ids_again():
    """After the peer drops the connection the client reconnects and on_connected gets the new live ids."""
    rec = Recorder()
    async with FakeAmi() as ami:
        ami.live = [("1732650000.12", "1732650000.12"), ("1732650000.13", "1732650000.12")]
        with capture_logs() as logs:
            c = client(ami.port, rec)
            await c.start()
            await until(lambda: len(rec.connected) == 1)
            ami.live = [("1732650001.20", "")]
            ami.drop_all()
            await until(lambda: not c.connected)
            await until(lambda: len(rec.connected) == 2 and c.connected)
        await c.stop()
    assert rec.connected == [{"1732650000.12", "1732650000.13"}, {"1732650001.20"}]
    names = [e["event"] for e in logs]
    assert names.count("ami.disconnected") == 1 and names.count("ami.connected") == 2
    assert "ami.reconnecting" in names[names.index("ami.disconnected") :]


@aio
async def test_peer_that_stops_answering_pings_is_dropped_and_reconnected():
    """A connection whose Pings go unanswered (half-open) is detected within ping_timeout and replaced."""
    rec = Recorder()
    async with FakeAmi() as ami:
        ami.mute_pings_connections = 1
        with capture_logs() as logs:
            c = client(ami.port, rec, limits=replace(FAST, ping_timeout_s=0.25))
            await c.start()
            await until(lambda: c.counters.sessions == 2 and c.connected)
            await asyncio.sleep(0.3)  # the second connection answers: it stays up
            await c.stop()
    assert c.counters.ping_timeouts == 1 and c.counters.sessions == 2
    assert ami.connections == 2 and len(rec.connected) == 2
    assert [e["event"] for e in logs].count("ami.ping_timeout") == 1


@aio
async def test_unanswered_action_times_out_and_the_session_survives():
    """An action with no reply raises AmiActionTimeout after action_timeout_s; later actions still work."""
    rec = Recorder()
    async with FakeAmi() as ami:
        c = client(ami.port, rec)
        with pytest.raises(AmiNotConnected):
            await c.send_action({"Action": "Ping"})
        await c.start()
        await until(lambda: c.connected)
        t = time.monotonic()
        with pytest.raises(AmiActionTimeout):
            await c.send_action({"Action": "Status"})
        assert 0.25 <= time.monotonic() - t < 2.0
        reply = await c.send_action({"Action": "Ping"})
        assert reply.success and reply["Ping"] == "Pong"
        listing = await c.send_list_action({"Action": "CoreShowChannels"})
        assert listing[-1]["Event"] == "CoreShowChannelsComplete"
        with pytest.raises(ValueError):
            await c.send_action({"Action": "Ping", "X": "a\r\nAction: Hangup"})
        assert c.counters.sessions == 1
        await c.stop()


@aio
async def test_login_without_reply_times_out_and_is_retried():
    """A Login that gets no reply is abandoned after action_timeout_s and retried on a new connection."""
    rec = Recorder()
    async with FakeAmi() as ami:
        ami.ignore_logins = 1
        c = client(ami.port, rec)
        await c.start()
        await until(lambda: c.connected)
        await c.stop()
    assert ami.connections == 2 and len(ami.logins) == 2
    assert ami.logins[1] - ami.logins[0] >= FAST.action_timeout_s


@aio
async def test_peer_closing_during_login_fails_the_login_at_once():
    """A peer that closes instead of answering Login is retried after the backoff, not after the action timeout."""
    rec = Recorder()
    async with FakeAmi() as ami:
        ami.hang_up_on_logins = 1
        c = client(ami.port, rec, limits=replace(FAST, action_timeout_s=2.0))
        await c.start()
        await until(lambda: c.connected)
        await c.stop()
    assert len(ami.logins) == 2 and ami.logins[1] - ami.logins[0] < 1.0


@aio
async def test_unreachable_manager_backs_off_exponentially_up_to_the_cap():
    """With nothing listening, reconnect delays double from backoff_initial_s and stop at backoff_max_s."""
    async with FakeAmi() as ami:
        port = ami.port
    rec = Recorder()
    with capture_logs() as logs:
        c = client(port, rec)
        await c.start()
        await until(lambda: c.counters.connect_attempts >= 5)
        await c.stop()
    delays = [e["delay_s"] for e in logs if e["event"] == "ami.reconnecting"][:4]
    assert delays == [0.05, 0.1, 0.2, 0.2]
    assert not c.connected and not rec.connected


@aio
async def test_non_ami_peer_is_rejected_and_retried():
    """A peer without the 'Asterisk Call Manager/' banner is logged and never logged into."""
    rec = Recorder()
    async with FakeAmi() as ami:
        ami.banner = b"SSH-2.0-OpenSSH_9.2\r\n"
        with capture_logs() as logs:
            c = client(ami.port, rec)
            await c.start()
            await until(lambda: ami.connections >= 2)
            await c.stop()
    assert ami.logins == [] and any(e["event"] == "ami.not_ami" for e in logs)


@aio
async def test_full_event_queue_drops_counts_logs_once_and_resyncs():
    """A stalled consumer makes new events drop (counted, logged once); once it drains, live ids are re-sent."""
    rec = Recorder()
    gate = asyncio.Event()
    seen: list[dict] = []

    async def slow(e: dict) -> None:
        await gate.wait()
        seen.append(e)

    async with FakeAmi() as ami:
        with capture_logs() as logs:
            c = client(ami.port, rec, limits=replace(FAST, event_queue_max=5), on_event=slow)
            await c.start()
            await until(lambda: c.connected)  # on_connected waits behind FullyBooted: in order
            for i in range(20):
                ami.emit(("Event", "Newexten"), ("Uniqueid", str(i)))
            await until(lambda: c.counters.events_received >= 21)  # FullyBooted + 20
            gate.set()
            await until(lambda: len(rec.connected) == 2)
            await c.stop()
    assert c.counters.events_dropped == 21 - 5 - 1  # one is held by the blocked callback
    assert [e["event"] for e in logs].count("ami.events_dropped") == 1
    assert len(seen) == 6


@aio
async def test_stop_closes_the_connection():
    """stop() closes the socket so the manager sees the client leave, and connected turns false."""
    rec = Recorder()
    async with FakeAmi() as ami:
        c = client(ami.port, rec)
        await c.start()
        await until(lambda: c.connected)
        await c.stop()
        await until(lambda: ami.closed_by_client == 1)
    assert not c.connected


# -- the event parser: the same as panoramisk, without it ------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "ami"


class StubWriter:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def before(raw: bytes, pending: Collection[str] = ()) -> object:
    """What the client did with a message when panoramisk parsed them all: "reply" (it
    resolved a pending action), the delivered event with its keys lowercased as the
    Correlator then did, or None (dropped)."""
    msg = Message.from_line(raw.decode("utf-8", "replace").strip())
    if msg is None:
        return None
    aid = msg.get("ActionID")
    if isinstance(aid, str) and aid in pending:
        return "reply"
    if "Event" in msg:
        return {k.lower(): v for k, v in msg.items() if k != "content"}
    return None


def handle(raw: bytes, pending: Collection[str] = ()) -> tuple[object, dict[str, object]]:
    """What _Session does with the message now, in the same terms, and the pending actions' results."""
    got: list[AmiEvent] = []
    session = _Session(None, StubWriter(), got.append)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        futs = {aid: loop.create_future() for aid in pending}
        for aid, fut in futs.items():
            session._pending[aid] = (fut, False, [])
        session._handle(raw)
    finally:
        loop.close()
    results = {aid: f.result() for aid, f in futs.items() if f.done()}
    if results:
        assert not got
        return "reply", results
    assert len(got) <= 1 and all(type(e) is AmiEvent for e in got)
    return (got[0] if got else None), results


ODD_MESSAGES = [
    b"Event: Hangup\r\nChanVariable: EXTBILL_ID=1.1\r\nChanVariable: OTHER=x\r\nChanVariable: Y=\r\n\r\n",
    b"Event: Hangup\r\nChanVariable: A=1\r\nchanvariable: B=2\r\nChanVariable: C=3\r\n\r\n",
    b"Event: X\r\nEVENT: Y\r\n\r\n",
    b"Event: X\r\nNoColon\r\nKey:nospace\r\nEmpty: \r\nValue: a: b: c\r\n Spaced : v \r\nLast: \r\n\r\n",
    b"Event: X\r\nResult: a%20b \r\n\r\n",
    b"Event: X\r\nContent: body\r\n\r\n",
    b"Response: Success\r\nEvent: X\r\nA: 1\r\n\r\n",
    b"Response: Follows\r\nEvent: X\r\nthe body\r\n\r\n",
    b"EVENT: X\r\nA: 1\r\n\r\n",
    b"Ping: Pong\r\n\r\n",
    b"\r\n Event: X\r\nA: 1\r\n\r\n",
    b"Event: X\r\nBare\nLF: v\r\nCR\rin: v\r\nA: \t v \t\r\n\r\n",
    b"Event: X\r\nActionID: not-ours\r\n\r\n",
    b"Event: X\r\nActionID: extbill-1-1\r\nActionID: extbill-1-1\r\n\r\n",
    b"Event: \xff\xfe\r\nCallerIDName: \xe5\xbc\xa0\xe4\xb8\x89\r\n\xc4\xb0d: 1\r\nK\xce\xa3: 2\r\n\r\n",
]


@pytest.mark.parametrize("raw", ODD_MESSAGES, ids=range(len(ODD_MESSAGES)))
def test_events_are_parsed_as_panoramisk_parsed_them(raw):
    """Repeated headers (same or other case), lines without ': ', Result/Content, bodies, odd bytes: the same event, or none."""
    assert handle(raw, {"extbill-1-1"})[0] == before(raw, {"extbill-1-1"})


def test_real_events_take_the_fast_path_and_match_panoramisk():
    """Every event the benchmark's fake Asterisk sends parses like panoramisk, with no Message built."""
    c = CallChannels("1732650000.7", 7)
    data = (
        c.answered_events(1_732_650_000_000)
        + c.ended_events(1_732_650_030_000)
        + c.unanswered_events(1_732_650_040_000, "BUSY")
        + c.caller_hangup(1_732_650_050_000)
    )
    raws = [m + b"\r\n\r\n" for m in data.split(b"\r\n\r\n") if m]
    assert len(raws) == 9
    with mock.patch.object(Message, "from_line", side_effect=AssertionError("slow path")):
        now = [handle(raw)[0] for raw in raws]
    assert now == [before(raw) for raw in raws]


HEADER_LINES = st.one_of(
    st.sampled_from(
        [
            "Event: Hangup",
            "event: hangup",
            "ChanVariable: EXTBILL_ID=1.1",
            "chanvariable: X=1",
            "ActionID: extbill-1-1",
            "ActionID: other",
            "Result: %41%20",
            "Content: c",
            "Response: Success",
            "Response: Follows",
            "Key:v",
            "Key: ",
            "nothing",
            "",
        ]
    ),
    st.text(alphabet="Eevnt:Cc \r\n=A1%\tİΣ", max_size=12),
)


@settings(max_examples=500, deadline=None)
@given(st.booleans(), st.lists(HEADER_LINES, max_size=8))
def test_any_message_is_handled_as_with_panoramisk(event_first, lines):
    """Whatever the header lines, the client delivers the same event, drops the same messages and resolves the same actions."""
    raw = "\r\n".join((["Event: X"] if event_first else []) + lines).encode() + b"\r\n\r\n"
    assume(raw.find(b"\r\n\r\n") == len(raw) - 4)  # readuntil hands over exactly one message
    assert handle(raw, {"extbill-1-1"})[0] == before(raw, {"extbill-1-1"})


def test_a_message_with_a_pending_action_id_resolves_the_action_with_a_message():
    """Replies and list events carrying our pending ActionID resolve the action with panoramisk Messages, as before; other events are delivered."""
    event = b"Event: CoreShowChannel\r\nActionID: extbill-1-1\r\nUniqueid: 1.1\r\nChanVariable: EXTBILL_ID=1.1\r\n\r\n"
    kind, results = handle(event, {"extbill-1-1"})
    reply = results["extbill-1-1"]
    assert kind == "reply" and isinstance(reply, Message) and reply.success
    assert reply["Uniqueid"] == "1.1" and reply.get("chanvariable") == "EXTBILL_ID=1.1"
    kind, results = handle(
        b"Response: Error\r\nActionID: extbill-1-1\r\nMessage: Permission denied\r\n\r\n", {"extbill-1-1"}
    )
    assert not results["extbill-1-1"].success and results["extbill-1-1"].get("Message") == "Permission denied"
    delivered, results = handle(event, {"extbill-1-2"})  # an action that already timed out
    assert results == {} and delivered == {
        "event": "CoreShowChannel",
        "actionid": "extbill-1-1",
        "uniqueid": "1.1",
        "chanvariable": "EXTBILL_ID=1.1",
    }


@aio
async def test_list_action_collects_events_with_its_action_id_as_messages():
    """Over TCP: CoreShowChannel events answering our list action go to the action as Messages, not to on_event."""
    rec = Recorder()
    async with FakeAmi() as ami:
        ami.live = [("1732650000.12", "1732650000.12")]
        c = client(ami.port, rec)
        await c.start()
        await until(lambda: c.connected)
        listing = await c.send_list_action({"Action": "CoreShowChannels"})
        ami.emit(("Event", "Hangup"), ("Uniqueid", "1.1"), ("ChanVariable", "EXTBILL_ID=1.1"))
        await until(lambda: len(rec.events) == 2)
        await c.stop()
    assert all(isinstance(m, Message) for m in listing) and listing[0].success
    assert [m.get("Event") for m in listing[1:]] == ["CoreShowChannel", "CoreShowChannelsComplete"]
    assert listing[1]["Uniqueid"] == "1732650000.12"
    assert [e["event"] for e in rec.events] == ["FullyBooted", "Hangup"]


def as_bytes(event: dict[str, object]) -> bytes:
    """An event dict as Asterisk writes it: Event first, a list as repeated headers."""
    first = {k: v for k, v in event.items() if k.lower() == "event"}
    lines = [
        f"{k}: {x}\r\n" for k, v in {**first, **event}.items() for x in (v if isinstance(v, list) else [v])
    ]
    return "".join(lines).encode() + b"\r\n"


def correlate(events: list) -> tuple[list, object, set[str], list]:
    c = Correlator()
    facts = [f for e in events for f in c.feed(e)]
    return facts, c.counters, c.tracked_ids(), c.take_malformed()


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_parsed_events_give_the_correlator_the_same_facts_as_mixed_case_dicts(path):
    """A recorded stream sent as AMI bytes and parsed by the client gives the facts, counters and
    state of the same events as recorded mixed-case dicts, and as panoramisk's dicts."""
    data = json.loads(path.read_text(encoding="utf-8"))
    events = data if isinstance(data, list) else data["events"]
    raws = [as_bytes(e) for e in events]
    parsed = [handle(raw)[0] for raw in raws]
    assert all(type(e) is AmiEvent for e in parsed)
    old_dicts = []  # what on_event got before: panoramisk's keys, as Asterisk spells them
    for raw in raws:
        msg = Message.from_line(raw.decode().strip())
        old_dicts.append({k: v for k, v in msg.items() if k != "content"})
    now = correlate(parsed)
    assert any(isinstance(f, CallEnd) for f in now[0]) or path.name == "caller-hangup-in-ivr.json"
    assert now == correlate(events) == correlate(old_dicts)


def test_bench_events_give_the_same_facts_parsed_or_as_dicts():
    """The fake Asterisk's answered and unanswered calls: the same facts from parsed events as from mixed-case dicts."""
    data = b""
    for i in range(3):
        c = CallChannels(f"1732650000.{i}", i)
        t = 1_732_650_000_000 + i * 1000
        data += (
            c.answered_events(t) + c.ended_events(t + 30_000)
            if i != 1
            else c.unanswered_events(t + 20_000, "NOANSWER")
        ) + c.caller_hangup(t + 40_000)
    raws = [m + b"\r\n\r\n" for m in data.split(b"\r\n\r\n") if m]
    dicts = [{k: v for k, v in Message.from_line(r.decode().strip()).items() if k != "content"} for r in raws]
    now = correlate([handle(r)[0] for r in raws])
    assert now == correlate(dicts)
    assert [(type(f).__name__, f.billing_id) for f in now[0]] == [
        ("CallAnswered", "1732650000.0"),
        ("CallEnd", "1732650000.0"),
        ("CallEnd", "1732650000.1"),
        ("CallAnswered", "1732650000.2"),
        ("CallEnd", "1732650000.2"),
    ]
