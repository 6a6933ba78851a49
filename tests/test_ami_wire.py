"""The AMI wire module: what every AMI speaker writes and how it cuts and reads messages."""

from __future__ import annotations

import asyncio

import pytest

from fastagi.core import ami_wire
from fastagi.core.ami_wire import AmiHeaderInjection, AmiMessageTooLarge, Framer
from fastagi.dev.bench.ami_peer import CallChannels, FakeAmi
from fastagi.dev.harness import Ami, AmiError

# Three messages as Asterisk writes them: a reply, an event with a repeated header and a
# multi-byte caller name, and an event whose value holds ": ".
STREAM = (
    b"Response: Success\r\nActionID: a1\r\nMessage: Authentication accepted\r\n\r\n"
    b"Event: Newchannel\r\nCallerIDName: \xe5\xbc\xa0\xe4\xb8\x89\r\n"
    b"ChanVariable: EXTBILL_ID=1.1\r\nChanVariable: OTHER=x\r\n\r\n"
    b"Event: Newexten\r\nAppData: a: b: c\r\nEmpty: \r\n\r\n"
)
MESSAGES = [m for m in STREAM.split(b"\r\n\r\n") if m]


def test_serialize_writes_headers_in_order_and_lists_as_repeats():
    """A mapping's list value becomes repeated headers (Originate's Variable), pairs keep their order."""
    data = ami_wire.serialize({"Action": "Originate", "Variable": ["A=1", "B=2"], "Async": "true"})
    assert data == b"Action: Originate\r\nVariable: A=1\r\nVariable: B=2\r\nAsync: true\r\n\r\n"
    assert (
        ami_wire.serialize([("Action", "Ping"), ("ActionID", "x")]) == b"Action: Ping\r\nActionID: x\r\n\r\n"
    )
    assert ami_wire.serialize([("CallerIDName", "张三")]) == "CallerIDName: 张三\r\n\r\n".encode()


@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\r\n\r\n"])
@pytest.mark.parametrize("at", [0, 1, 5])
def test_cr_or_lf_anywhere_in_a_key_or_value_is_refused(bad, at):
    """CR or LF at the start, inside or at the end of a key or a value: refused, nothing written."""
    value = "abcde"[:at] + bad + "abcde"[at:]
    for headers in ({"Action": "Ping", "X": value}, {"Action": "Ping", value: "1"}, {"V": ["ok", value]}):
        with pytest.raises(AmiHeaderInjection) as err:
            ami_wire.serialize(headers)
        assert isinstance(err.value, ValueError)


def test_parse_lowercases_keys_and_keeps_the_first_of_a_repeat():
    """parse: lowercase keys, the first of a repeated header (as Asterisk reads an action's
    headers), values as sent; pairs: every header in order, spelled as sent."""
    assert ami_wire.parse(MESSAGES[1]) == {
        "event": "Newchannel",
        "calleridname": "张三",
        "chanvariable": "EXTBILL_ID=1.1",
    }
    assert ami_wire.pairs(MESSAGES[1])[-2:] == [
        ("ChanVariable", "EXTBILL_ID=1.1"),
        ("ChanVariable", "OTHER=x"),
    ]
    assert ami_wire.parse(MESSAGES[2]) == {"event": "Newexten", "appdata": "a: b: c", "empty": ""}
    assert ami_wire.pairs("Event: X\r\nNoColon\r\nKey:nospace\r\n A : v\r\n") == [
        ("Event", "X"),
        (" A ", "v"),
    ]


def test_what_serialize_writes_parses_back():
    headers = [("Action", "Setvar"), ("Variable", "EXTBILL_AGI"), ("Value", "127.0.0.1:4573"), ("Value", "x")]
    data = ami_wire.serialize(headers)
    assert ami_wire.pairs(data) == headers
    assert ami_wire.parse(data)["value"] == "127.0.0.1:4573"


def test_the_stream_cut_at_every_byte_gives_the_same_messages():
    """However the reads split the stream (in the terminator, inside a multi-byte character),
    the Framer gives the same whole messages, and their text decodes intact."""
    for cut in range(len(STREAM) + 1):
        framer = Framer()
        got = framer.feed(STREAM[:cut]) + framer.feed(STREAM[cut:])
        assert got == MESSAGES, cut
        assert framer.pending == 0
    framer = Framer()
    one_by_one = [m for i in range(len(STREAM)) for m in framer.feed(STREAM[i : i + 1])]
    assert one_by_one == MESSAGES
    assert ami_wire.parse(one_by_one[1])["calleridname"] == "张三"


def test_stray_blank_lines_between_messages_are_dropped():
    framer = Framer()
    assert framer.feed(b"\r\n\r\n\r\nEvent: A\r\n\r\n\r\n\r\nEvent: B\r\n\r\n") == [b"Event: A", b"Event: B"]


@pytest.mark.parametrize("cut", [0, 1, 10, 99, 100, 101, 102, 103, 104])
def test_a_message_of_the_limit_passes_and_one_byte_more_is_refused(cut):
    """max_bytes counts the headers up to the blank line, wherever the reads split it: exactly
    the limit is read, one byte more raises AmiMessageTooLarge (even before its blank line)."""
    limit = 100
    at_limit = b"K: " + b"v" * (limit - 3) + b"\r\n\r\n"
    framer = Framer(limit)
    assert framer.feed(at_limit[:cut]) + framer.feed(at_limit[cut:]) == [at_limit[:-4]]
    over = b"K: " + b"v" * (limit - 2) + b"\r\n\r\n"
    framer = Framer(limit)
    with pytest.raises(AmiMessageTooLarge):
        framer.feed(over[:cut])
        framer.feed(over[cut:])
    with pytest.raises(AmiMessageTooLarge):
        Framer(limit).feed(b"K: " + b"v" * (limit + 1))  # no end in sight: refused before it comes


def test_banner():
    assert ami_wire.banner_ok(b"Asterisk Call Manager/9.0.0\r\n")
    assert not ami_wire.banner_ok(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert not ami_wire.banner_ok(ami_wire.BANNER_PREFIX + b"9" * ami_wire.BANNER_BYTES_MAX)


def test_the_harness_client_and_the_benchmark_peer_talk_through_the_wire_module():
    """Over TCP, the harness's AMI client logs in to the benchmark's fake Asterisk, lists its
    live calls, is refused with a wrong secret, and refuses to send CR/LF without
    writing anything (the session still works after)."""

    async def run() -> None:
        calls = [CallChannels("1732650000.7", 7)]
        peer = FakeAmi("extbill", "s3cret", lambda: calls)
        await peer.start()
        try:
            async with Ami("127.0.0.1", peer.port, "extbill", "s3cret") as ami:
                assert ami.greeting.startswith("Asterisk Call Manager/")
                listed = await ami.core_show_channels()
                assert [e["Uniqueid"] for e in listed] == ["1732650000.7"]
                assert listed[0]["ChanVariable"] == "EXTBILL_ID=1732650000.7"
                actions = peer.actions
                with pytest.raises(AmiHeaderInjection):
                    await ami.action("Ping", Variable="x\r\nAction: Hangup")
                assert (await ami.action("Ping"))["Ping"] == "Pong"
                assert peer.actions == actions + 1
            with pytest.raises(AmiError, match="login failed"):
                async with Ami("127.0.0.1", peer.port, "extbill", "wrong"):
                    pass
        finally:
            await peer.stop()

    asyncio.run(run())
