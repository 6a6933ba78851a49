"""The pure AMI correlator on hand-written Asterisk 22 event streams, and on recorded ones.

Recorded streams go in tests/fixtures/ami/*.json: a list of event dicts (or
{"events": [...], "expect": {billing_id: {field: value}}}); RECORDED_EXPECT below
pins the results of the ones recorded from Asterisk 22 by tests/e2e.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastagi.core.ami import (
    TIMESTAMP_RE,
    AmiEvent,
    CallAnswered,
    CallEnd,
    Correlator,
    _Bad,
    chan_variable,
    live_ids_from_core_show_channels,
    parse_timestamp_us,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ami"
BID = "1732650000.12"  # the caller IVR channel's Uniqueid = billing id
T0 = 1732650000_100000  # microseconds


def ts(us: int) -> str:
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def chan(
    name: str,
    uid: str,
    bid: str | None,
    state: str = "6",
    prefix: str = "",
    exten: str = "s",
    context: str = "ivr",
) -> dict[str, str]:
    """The channel snapshot block Asterisk 22 puts in every channel event."""
    p = prefix
    return {
        f"{p}Channel": name,
        f"{p}ChannelState": state,
        f"{p}ChannelStateDesc": {"4": "Ring", "5": "Ringing", "6": "Up", "0": "Down"}[state],
        f"{p}CallerIDNum": "13800138000",
        f"{p}CallerIDName": "<unknown>",
        f"{p}ConnectedLineNum": "<unknown>",
        f"{p}ConnectedLineName": "<unknown>",
        f"{p}Language": "zh",
        f"{p}AccountCode": "",
        f"{p}Context": context,
        f"{p}Exten": exten,
        f"{p}Priority": "1",
        f"{p}Uniqueid": uid,
        f"{p}Linkedid": BID,
        f"{p}ChanVariable": f"EXTBILL_ID={bid or ''}",
    }


def ev(name: str, at_us: int, *blocks: dict[str, str], **fields: str) -> dict[str, str]:
    e = {"Event": name, "Privilege": "call,all", "Timestamp": ts(at_us)}
    for b in blocks:
        e.update(b)
    e.update(fields)
    return e


CALLER = ("PJSIP/trunk-00000003", BID)
L1 = ("Local/answer@branch-00000001;1", "1732650010.13")
L2 = ("Local/answer@branch-00000001;2", "1732650010.14")
EXT = ("PJSIP/8001-00000004", "1732650010.15")
BRIDGE = {
    "BridgeUniqueid": "0f3c2d1e-aaaa-bbbb-cccc-111122223333",
    "BridgeType": "basic",
    "BridgeTechnology": "simple_bridge",
    "BridgeCreator": "<unknown>",
    "BridgeName": "<unknown>",
    "BridgeNumChannels": "1",
    "BridgeVideoSourceMode": "none",
}


def ivr_start(bid: str = BID, caller: tuple[str, str] = CALLER) -> list[dict[str, str]]:
    """Caller arrives, is answered by the IVR, the AGI grants, the dialplan sets the id."""
    c = (caller[0], caller[1])
    return [
        ev("Newchannel", T0, chan(*c, None, state="4")),
        ev("Newstate", T0 + 40_000, chan(*c, None)),
        ev("Newexten", T0 + 50_000, chan(*c, None), Application="AGI", AppData="agi://127.0.0.1:4573/route"),
        ev("VarSet", T0 + 3_200_000, chan(*c, bid), Variable="__EXTBILL_ID", Value=bid),
    ]


def dial_begin(at: int, dest: tuple[str, str], dial_string: str, bid: str = BID):
    return ev(
        "DialBegin",
        at,
        chan(*CALLER, bid),
        chan(*dest, bid, state="0", prefix="Dest"),
        DialString=dial_string,
    )


def dial_end(at: int, dest: tuple[str, str], status: str, bid: str = BID):
    return ev("DialEnd", at, chan(*CALLER, bid), chan(*dest, bid, prefix="Dest"), DialStatus=status)


def hangup(at: int, c: tuple[str, str], cause: str = "16", txt: str = "Normal Clearing", bid: str = BID):
    return ev("Hangup", at, chan(*c, bid), **{"Cause": cause, "Cause-txt": txt})


def cdr(at: int, billsec: str):
    return ev(
        "Cdr",
        at,
        AccountCode="",
        Source="13800138000",
        Destination="s",
        DestinationContext="ivr",
        Channel=CALLER[0],
        DestinationChannel=L1[0],
        LastApplication="Dial",
        LastData="Local/answer@branch,,L(600000:60000)",
        StartTime="2024-11-26 19:40:00",
        AnswerTime="2024-11-26 19:40:00",
        EndTime="2024-11-26 19:40:50",
        Duration="50",
        BillableSeconds=billsec,
        Disposition="ANSWERED",
        AMAFlags="DOCUMENTATION",
        UniqueID=BID,
        UserField="",
    )


TA = T0 + 5_000_000  # DialEnd ANSWER
TE = TA + 42_500_000  # the branch side hangs up


def answered_via_local() -> list[dict[str, str]]:
    """Dial(Local/answer@branch,,L(...)): ;2 answers, talks 42.5 s, hangs up."""
    return ivr_start() + [
        ev("Newchannel", T0 + 3_300_000, chan(*L1, None, state="0", context="branch")),
        ev("Newchannel", T0 + 3_300_100, chan(*L2, None, state="4", context="branch")),
        dial_begin(T0 + 3_300_500, L1, "answer@branch"),
        ev("Newstate", TA - 1_000, chan(*L2, BID, context="branch")),
        ev("Newstate", TA - 500, chan(*L1, BID, context="branch")),
        dial_end(TA, L1, "ANSWER"),
        ev("BridgeCreate", TA + 1_000, BRIDGE),
        ev("BridgeEnter", TA + 2_000, BRIDGE, chan(*CALLER, BID)),
        ev("BridgeEnter", TA + 3_000, BRIDGE, chan(*L1, BID, context="branch")),
        hangup(TE, L2),
        ev("BridgeLeave", TE + 1_000, BRIDGE, chan(*L1, BID, context="branch")),
        hangup(TE + 2_000, L1),
        cdr(TE + 2_500, "42"),
        ev("BridgeLeave", TE + 3_000, BRIDGE, chan(*CALLER, BID)),
        ev("BridgeDestroy", TE + 4_000, BRIDGE),
        cdr(TE + 9_000, "47"),  # the caller's CDR: billsec includes the IVR; never used
        hangup(TE + 10_000, CALLER),
    ]


def unanswered(status: str, cause: str, txt: str) -> list[dict[str, str]]:
    """Dial(PJSIP/8001) ends with `status`; the caller hears a prompt, then hangs up."""
    return ivr_start() + [
        ev("Newchannel", T0 + 3_300_000, chan(*EXT, None, state="0", context="ext")),
        dial_begin(T0 + 3_300_500, EXT, "8001"),
        ev(
            "DialState",
            T0 + 3_400_000,
            chan(*CALLER, BID),
            chan(*EXT, BID, "5", "Dest"),
            DialStatus="RINGING",
        ),
        dial_end(T0 + 23_400_000, EXT, status),
        hangup(T0 + 23_400_500, EXT, cause, txt),
        hangup(T0 + 26_000_000, CALLER),
    ]


def caller_hangs_up_in_ivr() -> list[dict[str, str]]:
    """Granted (id set), but the caller hangs up during the prompt before Dial."""
    return ivr_start() + [hangup(T0 + 4_000_000, CALLER)]


def caller_hangs_up_ringing() -> list[dict[str, str]]:
    """The caller hangs up while the extension rings: Dial reports CANCEL."""
    return ivr_start() + [
        dial_begin(T0 + 3_300_500, EXT, "8001"),
        ev(
            "DialState",
            T0 + 3_400_000,
            chan(*CALLER, BID),
            chan(*EXT, BID, "5", "Dest"),
            DialStatus="RINGING",
        ),
        dial_end(T0 + 9_000_000, EXT, "CANCEL"),
        hangup(T0 + 9_000_300, EXT, "16", "Normal Clearing"),
        hangup(T0 + 9_001_000, CALLER),
    ]


def run(events, correlator: Correlator | None = None):
    c = correlator or Correlator()
    facts = [f for e in events for f in c.feed(e)]
    return c, facts


def ends(facts) -> list[CallEnd]:
    return [f for f in facts if isinstance(f, CallEnd)]


def test_answered_via_local_channel_bills_from_answer_to_callee_leaving_the_bridge():
    """A call answered through a Local channel is talk time from DialEnd ANSWER until the callee leaves the caller's bridge."""
    c, facts = run(answered_via_local())
    assert facts == [
        CallAnswered(BID, TA),
        CallEnd(BID, TA, TE + 1_000, 42_501, "ANSWER", 16, "Normal Clearing", TE + 10_000),
    ]
    assert c.tracked_ids() == set() and c.counters.malformed == 0


@pytest.mark.parametrize(
    "status,cause,txt",
    [
        ("BUSY", "17", "User busy"),
        ("NOANSWER", "19", "No user response"),
        ("CHANUNAVAIL", "20", "Subscriber absent"),
        ("CONGESTION", "34", "Circuit/channel congestion"),
    ],
)
def test_unanswered_dial_is_zero_talk_with_its_dial_status(status, cause, txt):
    """A Dial that ends BUSY/NOANSWER/CHANUNAVAIL/CONGESTION gives one CallEnd with no answer and 0 ms."""
    _, facts = run(unanswered(status, cause, txt))
    assert facts == [CallEnd(BID, None, T0 + 26_000_000, 0, status, 16, "Normal Clearing", T0 + 26_000_000)]


def test_caller_hanging_up_in_ivr_ends_unanswered_without_dial_status():
    """A caller who hangs up after the grant but before Dial gets a CallEnd with no dial status."""
    _, facts = run(caller_hangs_up_in_ivr())
    assert facts == [CallEnd(BID, None, T0 + 4_000_000, 0, None, 16, "Normal Clearing", T0 + 4_000_000)]


def test_caller_hanging_up_while_ringing_is_cancel():
    """A caller who hangs up while the callee rings gives a CANCEL CallEnd with 0 ms."""
    _, facts = run(caller_hangs_up_ringing())
    assert ends(facts) == [
        CallEnd(BID, None, T0 + 9_001_000, 0, "CANCEL", 16, "Normal Clearing", T0 + 9_001_000)
    ]


def test_every_event_duplicated_emits_the_same_facts_once():
    """Feeding each event twice gives exactly the facts of feeding it once."""
    for stream in (
        answered_via_local(),
        unanswered("BUSY", "17", "User busy"),
        caller_hangs_up_in_ivr(),
        caller_hangs_up_ringing(),
    ):
        _, once = run(stream)
        _, twice = run([e for e in stream for _ in (0, 1)])
        assert twice == once


def test_callee_hangup_before_its_bridge_leave_changes_nothing():
    """A callee Hangup arriving before its BridgeLeave does not change the talk time."""
    s = answered_via_local()
    i = next(i for i, e in enumerate(s) if e["Event"] == "BridgeLeave")
    s[i], s[i + 1] = s[i + 1], s[i]
    _, facts = run(s)
    assert ends(facts)[0].talk_ms == 42_501


def test_caller_hangup_before_its_bridge_leave_changes_nothing():
    """If the caller's Hangup overtakes its BridgeLeave, the talk time holds and the late BridgeLeave is ignored."""
    s = answered_via_local()
    leave = next(e for e in s if e["Event"] == "BridgeLeave" and e["Uniqueid"] == BID)
    s.remove(leave)
    s.append(leave)
    c, facts = run(s)
    assert [f.talk_ms for f in ends(facts)] == [42_501]
    assert c.counters.late == 1


def test_callee_leaving_at_the_limit_ends_talk_though_the_caller_leaves_later():
    """At the L() limit the callee leaves at once and the caller ~0.5 s later (as recorded); talk stops at the callee's leave."""
    limit = TA + 6_006_000
    s = [e for e in answered_via_local() if e["Timestamp"] <= ts(TA + 3_000)] + [
        ev("BridgeLeave", limit, BRIDGE, chan(*L1, BID)),
        hangup(limit + 500, L1),
        hangup(limit + 900, L2),
        ev("BridgeLeave", limit + 474_000, BRIDGE, chan(*CALLER, BID)),
        hangup(limit + 4_800_000, CALLER),
    ]
    (end,) = ends(run(s)[1])
    assert end.talk_ms == 6_006 and end.hangup_us == limit + 4_800_000


def test_cdr_before_hangup_and_events_after_the_end_emit_nothing_more():
    """Cdr events are never used, and events for an ended call are ignored, not re-emitted."""
    s = answered_via_local()
    s.insert(5, cdr(T0, "999"))
    s += [ev("BridgeLeave", TE + 20_000, BRIDGE, chan(*CALLER, BID)), hangup(TE + 30_000, CALLER)]
    c, facts = run(s)
    assert len(ends(facts)) == 1 and ends(facts)[0].talk_ms == 42_501
    assert c.counters.late == 2


def test_truncated_stream_emits_no_end_until_reconciled():
    """A stream cut before the caller's Hangup leaves the call tracked; end_missing closes it as reconciled."""
    s = answered_via_local()
    cut = s[: next(i for i, e in enumerate(s) if e["Event"] == "Hangup")]
    c, facts = run(cut)
    assert facts == [CallAnswered(BID, TA)]
    assert c.tracked_ids() == {BID}
    assert c.end_missing({BID}, TE + 60_000_000) == []  # still live: nothing to do
    (end,) = c.end_missing(set(), TE + 60_000_000)
    assert end.reconciled and end.answered_us == TA and end.ended_us == TE + 60_000_000
    assert c.feed(hangup(TE + 70_000_000, CALLER)) == [] and c.tracked_ids() == set()


def test_answer_seen_only_as_a_bridge_enter_still_starts_talk():
    """Without the caller's DialEnd, a non-caller BridgeEnter marks the answer."""
    s = [e for e in answered_via_local() if e["Event"] != "DialEnd"]
    _, facts = run(s)
    assert facts[0] == CallAnswered(BID, TA + 3_000)
    assert ends(facts)[0].talk_ms == 42_498 and ends(facts)[0].dial_status is None


def test_local_optimisation_moving_the_caller_does_not_stop_the_clock():
    """The caller swapped into another bridge and Local halves hanging up mid-call keep the talk running."""
    b2 = dict(BRIDGE, BridgeUniqueid="22222222-aaaa-bbbb-cccc-111122223333")
    mid = TA + 10_000_000
    s = ivr_start() + [
        dial_begin(T0 + 3_300_500, L1, "answer@branch"),
        dial_end(TA, L1, "ANSWER"),
        ev("BridgeEnter", TA + 2_000, BRIDGE, chan(*CALLER, BID)),
        ev("BridgeEnter", TA + 3_000, BRIDGE, chan(*L1, BID)),
        ev("BridgeEnter", TA + 4_000, b2, chan(*L2, BID)),
        ev("BridgeEnter", TA + 5_000, b2, chan(*EXT, BID)),
        ev(
            "LocalOptimizationBegin",
            mid,
            chan(*L1, BID, prefix="LocalOne"),
            chan(*L2, BID, prefix="LocalTwo"),
        ),
        ev("BridgeLeave", mid + 100, BRIDGE, chan(*CALLER, BID)),
        ev("BridgeEnter", mid + 200, b2, chan(*CALLER, BID)),
        ev("BridgeLeave", mid + 300, BRIDGE, chan(*L1, BID)),
        ev("BridgeLeave", mid + 400, b2, chan(*L2, BID)),
        hangup(mid + 500, L1),
        hangup(mid + 600, L2),
        ev("BridgeLeave", TE, b2, chan(*EXT, BID)),
        hangup(TE + 100, EXT),
        ev("BridgeLeave", TE + 1_000, b2, chan(*CALLER, BID)),
        hangup(TE + 5_000, CALLER),
    ]
    _, facts = run(s)
    assert ends(facts)[0].talk_ms == (TE - TA) // 1000
    # The caller's final BridgeLeave lost: the mid-call move is still not the end.
    s.remove(ev("BridgeLeave", TE + 1_000, b2, chan(*CALLER, BID)))
    _, facts = run(s)
    assert ends(facts)[0].talk_ms == (TE - TA) // 1000
    # And the other way round: the callee swapped into the caller's bridge.
    s = s[: s.index(ev("BridgeLeave", mid + 100, BRIDGE, chan(*CALLER, BID)))] + [
        ev("BridgeEnter", mid + 100, BRIDGE, chan(*EXT, BID), SwapUniqueid=L1[1]),
        ev("BridgeLeave", mid + 200, BRIDGE, chan(*L1, BID)),
        hangup(mid + 300, L1),
        ev("BridgeLeave", TE, BRIDGE, chan(*EXT, BID)),
        hangup(TE + 5_000, CALLER),
    ]
    _, facts = run(s)
    assert ends(facts)[0].talk_ms == (TE - TA) // 1000


def test_parallel_dial_loser_hanging_up_does_not_end_talk():
    """Dial(A&B): B is cancelled and hangs up after A answers; the talk runs until the caller leaves."""
    s = ivr_start() + [
        dial_begin(T0 + 3_300_000, EXT, "8001&8002"),
        dial_begin(T0 + 3_300_100, L1, "8001&8002"),
        dial_end(TA, EXT, "ANSWER"),
        dial_end(TA + 500, L1, "CANCEL"),
        hangup(TA + 800, L1),
        ev("BridgeEnter", TA + 2_000, BRIDGE, chan(*CALLER, BID)),
        ev("BridgeEnter", TA + 3_000, BRIDGE, chan(*EXT, BID)),
        ev("BridgeLeave", TE, BRIDGE, chan(*EXT, BID)),
        hangup(TE + 100, EXT),
        ev("BridgeLeave", TE + 200, BRIDGE, chan(*CALLER, BID)),
        hangup(TE + 900, CALLER),
    ]
    (end,) = ends(run(s)[1])
    assert end.dial_status == "ANSWER" and end.talk_ms == (TE - TA) // 1000


def test_callee_gone_before_the_bridge_forms_ends_talk_at_its_hangup():
    """If the caller never got bridged after the answer, the callee's Hangup ends the talk, not the caller's later hangup."""
    s = ivr_start() + [
        dial_begin(T0 + 3_300_500, EXT, "8001"),
        dial_end(TA, EXT, "ANSWER"),
        hangup(TA + 700_000, EXT),
        hangup(TA + 30_000_000, CALLER),
    ]
    (end,) = ends(run(s)[1])
    assert end.talk_ms == 700 and end.ended_us == TA + 700_000


@pytest.mark.parametrize("form", ["str", "list", "dict"])
def test_chan_variable_in_every_shape_panoramisk_may_give(form):
    """ChanVariable as 'K=V', a list of 'K=V' or a dict all identify the call."""

    def reshape(e):
        e = dict(e)
        for key in ("ChanVariable", "DestChanVariable"):
            if key in e:
                k, _, v = e[key].partition("=")
                e[key] = {"str": e[key], "list": ["CDR(x)=1", e[key], "FOO="], "dict": {"OTHER": "z", k: v}}[
                    form
                ]
        return e

    _, facts = run([reshape(e) for e in answered_via_local()])
    assert ends(facts)[0].talk_ms == 42_501


def test_events_without_id_or_for_other_ids_do_not_mix():
    """Events with an empty EXTBILL_ID are ignored and two calls' interleaved events stay apart."""
    other = "1732650000.99"
    a = answered_via_local()
    b = [
        dict(
            e,
            ChanVariable=f"EXTBILL_ID={other}",
            Uniqueid=other if e.get("Uniqueid") == BID else e.get("Uniqueid", ""),
        )
        for e in caller_hangs_up_in_ivr()
    ]
    noise = [
        ev("PeerStatus", T0, Peer="PJSIP/8001", PeerStatus="Reachable"),
        ev("Hangup", T0, chan("PJSIP/x-1", "1.1", None)),
    ]
    rest = b + noise * 10
    mixed = [x for i, e in enumerate(a) for x in [e] + rest[i : i + 1]] + rest[len(a) :]
    c, facts = run(mixed)
    got = {f.billing_id: f for f in ends(facts)}
    assert got[BID].talk_ms == 42_501 and got[other].answered_us is None
    assert c.counters.ignored > 0


@pytest.mark.parametrize(
    "bad,reason",
    [
        ({"Timestamp": None}, "bad_timestamp"),
        ({"Timestamp": "1732650000.5e3"}, "bad_timestamp"),
        ({"Timestamp": "soon"}, "bad_timestamp"),
        ({"Timestamp": "1732650000.1234567"}, "bad_timestamp"),
        ({"Uniqueid": None}, "missing_uniqueid"),
        ({"ChanVariable": ["EXTBILL_ID"]}, "bad_chanvariable"),
        ({"ChanVariable": "EXTBILL_ID=has space"}, "bad_billing_id"),
        ({"Cause": ["16", "17"]}, "bad_cause"),
    ],
)
def test_malformed_caller_hangup_is_counted_and_changes_nothing(bad, reason):
    """A malformed event is recorded with its reason, raises nothing and leaves the call open."""
    s = answered_via_local()
    broken = {k: v for k, v in dict(s[-1], **bad).items() if v is not None}
    c, facts = run(s[:-1] + [broken])
    assert ends(facts) == []
    assert c.counters.malformed == 1 and [m.reason for m in c.take_malformed()] == [reason]
    assert c.take_malformed() == []
    assert ends(c.feed(s[-1]))[0].talk_ms == 42_501


def test_garbage_input_never_raises():
    """Non-mapping events, lists where strings belong and empty dicts are counted, never raised."""
    c = Correlator()
    for junk in [
        None,
        42,
        "Event: Hangup",
        [],
        {},
        {"Event": ["Hangup", "Hangup"]},
        {"Event": "Hangup", "ChanVariable": 7},
        {"Event": "Hangup", "ChanVariable": [1]},
        {"event": "hangup", "chanvariable": "EXTBILL_ID=x", "timestamp": "1.0", "uniqueid": "x"},
    ]:
        c.feed(junk)  # type: ignore[arg-type]
    assert c.counters.events == 9 and c.counters.malformed >= 4


def test_oldest_call_is_evicted_and_its_late_hangup_is_ignored():
    """Beyond calls_tracked_max the oldest call is dropped, counted, and never billed as unanswered later."""
    c = Correlator(calls_tracked_max=2)
    ids = ["1.1", "1.2", "1.3"]
    for i, bid in enumerate(ids):
        c.feed(ev("BridgeEnter", T0 + i, BRIDGE, chan("PJSIP/a", "9.9", bid)))
    assert c.counters.evicted == 1 and c.tracked_ids() == {"1.2", "1.3"}
    assert c.feed(hangup(T0 + 10, ("PJSIP/t", "1.1"), bid="1.1")) == []


def test_forget_drops_a_live_call_for_good():
    """A forgotten call emits nothing even when its Hangup arrives later."""
    s = answered_via_local()
    c, _ = run(s[:-1])
    assert c.forget(BID) and not c.forget(BID)
    assert c.feed(s[-1]) == [] and c.counters.forgotten == 1


def test_timestamps_are_exact_integer_microseconds():
    """Timestamps parse exactly, without floats; short fractions are right-padded."""
    assert parse_timestamp_us("1732650000.000001") == 1732650000_000001
    assert parse_timestamp_us("1732650000.9") == 1732650000_900000
    assert parse_timestamp_us("1732650000") == 1732650000_000000
    for bad in ("", "1e9", "-1.0", "1.2.3", "١٢.٣", None, 1.5):
        assert parse_timestamp_us(bad) is None


@given(st.integers(0, 10**12 - 1), st.integers(0, 999_999))
def test_timestamp_round_trip(sec, usec):
    """Any 'sec.usec' Asterisk can write parses back to the same microseconds."""
    assert parse_timestamp_us(f"{sec}.{usec:06d}") == sec * 1_000_000 + usec


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(alphabet="0123456789.. \t\n\u0662\u00b2e-+_", max_size=22),
        st.from_regex(r"\s?[0-9]{0,14}(\.[0-9]{0,8})?\s?", fullmatch=True),
    )
)
def test_timestamp_parser_is_exactly_its_regex(text):
    """parse_timestamp_us (no regex, for speed) accepts and computes exactly what TIMESTAMP_RE describes."""
    m = TIMESTAMP_RE.fullmatch(text.strip())
    want = None if m is None else int(m.group(1)) * 1_000_000 + int((m.group(2) or "").ljust(6, "0"))
    assert parse_timestamp_us(text) == want


@settings(max_examples=500)
@given(
    st.builds(
        "{}{}{}{}{}".format,
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from(["EXTBILL_ID", "extbill_id", "OTHER", "", "EXTBILL_ID=1"]),
        st.sampled_from(["", " "]),
        st.sampled_from(["=", "", "=="]),
        st.text(alphabet="xid.1= \t\u00a0\u200b", max_size=160),
    )
)
def test_chan_variable_str_is_its_one_item_list(value):
    """A single ChanVariable (the str fast path) gives what the same value as a one-item list gives, or the same error."""

    def outcome(v):
        try:
            return chan_variable(v)
        except _Bad as bad:
            return f"bad: {bad}"

    assert outcome(value) == outcome([value])


def test_ami_events_are_used_as_is_and_plain_dicts_lowercased():
    """An AmiEvent (lowercase keys, from the client) and the same event as a mixed-case dict give the same facts."""
    stream = answered_via_local()
    lowered = [AmiEvent({k.lower(): v for k, v in e.items()}) for e in stream]
    assert run(lowered)[1] == run(stream)[1] == run([dict(e) for e in lowered])[1]
    assert live_ids_from_core_show_channels(
        [AmiEvent(event="CoreShowChannel", uniqueid="1.1", chanvariable="EXTBILL_ID=1.2")]
    ) == {"1.1", "1.2"}


def test_live_ids_from_core_show_channels():
    """Live ids are the Uniqueids and EXTBILL_IDs of the CoreShowChannel events only."""
    listing = [
        {"Response": "Success", "EventList": "start", "Message": "Channels will follow"},
        ev("CoreShowChannel", T0, chan(*L1, BID), Application="AppDial", Duration="00:00:10"),
        ev("CoreShowChannel", T0, chan("PJSIP/x-9", "1732650000.77", None)),
        {"Event": "CoreShowChannel", "Uniqueid": "5.5", "ChanVariable": ["BAD"]},
        {"Event": "CoreShowChannelsComplete", "EventList": "Complete", "ListItems": "3"},
    ]
    assert live_ids_from_core_show_channels(listing) == {L1[1], BID, "1732650000.77", "5.5"}


def test_stray_bridge_leave_and_skewed_timestamps_do_not_distort_talk():
    """A BridgeLeave naming a bridge the channel is not in changes nothing, and no end falls after the caller's Hangup."""
    s = answered_via_local()
    other_bridge = dict(BRIDGE, BridgeUniqueid="99999999-aaaa-bbbb-cccc-111122223333")
    s.insert(s.index(hangup(TE, L2)), ev("BridgeLeave", TA + 9_000_000, other_bridge, chan(*L1, BID)))
    assert [f.talk_ms for f in ends(run(s)[1])] == [42_501]
    # The callee's leave stamped after the caller's Hangup (skew) but arriving before it.
    s = [e for e in answered_via_local() if e["Event"] not in ("BridgeLeave", "Hangup")]
    s += [ev("BridgeLeave", TE + 20_000, BRIDGE, chan(*L1, BID)), hangup(TE + 10_000, CALLER)]
    (end,) = ends(run(s)[1])
    assert end.ended_us == end.hangup_us == TE + 10_000


def test_the_caller_is_the_channel_the_billing_id_names_and_no_other():
    """The billing id is the IVR channel's Uniqueid, whatever its shape (a channel id an AMI
    client chose, a UUID, fits): that channel's Hangup ends the call. An id that names no
    channel ends no call: no other channel (the one that dialled, the first seen) is taken
    for the caller."""
    uuid_id = "0b6e2a52-6f0d-4a3e-9a57-1c2d3e4f5a6b"

    def rename(e, new_uid):
        e = dict(e)
        for key in ("ChanVariable", "DestChanVariable"):
            if e.get(key) == f"EXTBILL_ID={BID}":
                e[key] = f"EXTBILL_ID={uuid_id}"
        for key in ("Uniqueid", "Linkedid"):
            if e.get(key) == BID:
                e[key] = new_uid
        return e

    (end,) = ends(run([rename(e, uuid_id) for e in answered_via_local()])[1])
    assert end.billing_id == uuid_id and end.talk_ms == 42_501 and end.hangup_us == TE + 10_000
    c, facts = run([rename(e, "ivr-71549480cc08") for e in answered_via_local()])
    assert ends(facts) == [] and c.counters.malformed == 0


# -- properties -------------------------------------------------------------

NATURAL = answered_via_local()
CALLS = [
    answered_via_local(),
    unanswered("BUSY", "17", "User busy"),
    caller_hangs_up_in_ivr(),
    caller_hangs_up_ringing(),
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(CALLS).flatmap(lambda s: st.lists(st.sampled_from(s), min_size=0, max_size=3 * len(s)))
)
def test_any_permutation_or_duplication_emits_at_most_one_end(stream):
    """Whatever the order or repetition, a call gets at most one CallAnswered and one CallEnd, with sane times."""
    _, facts = run(stream)
    kinds = Counter((type(f).__name__, f.billing_id) for f in facts)
    assert all(n == 1 for n in kinds.values())
    for end in ends(facts):
        assert end.ended_us <= end.hangup_us
        if end.answered_us is None:
            assert end.talk_ms == 0
        else:
            assert 0 <= end.talk_ms == (end.ended_us - end.answered_us) // 1000


@settings(max_examples=100, deadline=None)
@given(st.permutations(answered_via_local()), st.data())
def test_permuted_stream_talk_is_bounded_and_natural_order_is_exact(perm, data):
    """A permuted answered call never bills more than answer-to-hangup; in natural order it bills 42.501 s."""
    _, facts = run(perm)
    for end in ends(facts):
        assert end.talk_ms <= (TE + 10_000 - TA) // 1000
    natural = sorted(perm, key=NATURAL.index)
    dup = data.draw(st.sets(st.integers(0, len(natural) - 1)))
    with_dups = [x for i, e in enumerate(natural) for x in ([e, e] if i in dup else [e])]
    assert [f.talk_ms for f in ends(run(with_dups)[1])] == [42_501]


# -- recorded streams -----------------------------------------------------------

RECORDED = sorted(FIXTURES.glob("*.json"))
# What the streams recorded by tests/e2e (Asterisk 22, Local channels; the billing id is
# the IVR channel's Uniqueid, as the server hands it out) must give.
RECORDED_EXPECT: dict[str, dict[str, dict[str, object]]] = {
    "answered.json": {"ivr-1796136157.705613447": {"dial_status": "ANSWER", "talk_ms": 3499}},
    "cut-at-limit.json": {"ivr-1796136194.155054132": {"dial_status": "ANSWER", "talk_ms": 6004}},  # L(6000)
    "busy.json": {"ivr-1796136209.869347947": {"dial_status": "BUSY", "talk_ms": 0, "answered_us": None}},
    "no-answer.json": {"ivr-1796136211.96302845": {"dial_status": "NOANSWER", "talk_ms": 0}},
    "caller-hangup-in-ivr.json": {},  # hung up before any grant: no call
}


def test_the_recorded_streams_are_shipped():
    """The replay tests below need them: tests/e2e/test_dialplan_smoke.py and
    test_scenarios.py record them (EXTBILL_E2E_RECORD=1)."""
    assert {p.name for p in RECORDED} >= set(RECORDED_EXPECT), FIXTURES


def dialled_and_hung_up(events: list[dict]) -> set[str]:
    """Ids whose dialling channel's Hangup is in the stream: each must get a CallEnd."""
    dialers = {
        (e.get("Uniqueid"), e["DestChanVariable"].partition("=")[2])
        for e in events
        if e.get("Event") == "DialBegin" and isinstance(e.get("DestChanVariable"), str)
    }
    hung = {
        (e.get("Uniqueid"), str(e.get("ChanVariable")).partition("=")[2])
        for e in events
        if e.get("Event") == "Hangup"
    }
    return {bid for uid, bid in dialers & hung if bid}


@pytest.mark.parametrize(
    "path",
    RECORDED,
    ids=lambda p: getattr(p, "name", "none"),
)
def test_recorded_stream_replays_cleanly(path):
    """A recorded Asterisk stream gives one CallEnd per dialled call, none twice, the same when duplicated, and the pinned results."""
    data = json.loads(path.read_text(encoding="utf-8"))
    events, expect = (data, {}) if isinstance(data, list) else (data["events"], data.get("expect", {}))
    expect = {**RECORDED_EXPECT.get(path.name, {}), **expect}
    c, facts = run(events)
    assert c.counters.malformed == 0, c.take_malformed()
    got = {f.billing_id: f for f in ends(facts)}
    assert len(got) == len(ends(facts))
    assert dialled_and_hung_up(events) <= set(got)
    if path.name in RECORDED_EXPECT:
        assert set(got) == set(expect)
    assert run([e for e in events for _ in (0, 1)])[1] == facts
    for bid, fields in expect.items():
        for name, value in fields.items():
            assert getattr(got[bid], name) == value, (bid, name)
