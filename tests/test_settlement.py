"""Settlement on a real database (SQLite and PostgreSQL): every call rated exactly once, whichever
path ends it.

The paths: AMI events through the pure Correlator and `Settlement.on_ami_fact`, the
dialplan's hangup handler (`settle(CallFacts(settled_by="hangup"))`), reconcile after an
AMI (re)connect and the sweeper. Money is checked in the ledger, not only in the records.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from fastagi.core.ami import CallAnswered, CallEnd, Correlator
from fastagi.core.rating import Tariff, billed_seconds, cost, first_block_cost
from fastagi.core.records import CallFacts
from fastagi.service.settlement import Settlement, iso_from_ms
from fastagi.store import tx_admin, tx_calls, tx_ledger
from fastagi.store.factory import open_store

NUMBER = "4008001234"
CALLER = "13800138000"
TARIFF = Tariff(per_minute=600, initial_s=60, increment_s=30, connect_fee=50)  # 0.6 CNY/min, 60+30 s
MAIN_FUNDS, EXT1_FUNDS, EXT2_FUNDS = 500_000, 100_000, 3_000
UNANSWERED = ("BUSY", "NOANSWER", "CANCEL", "CHANUNAVAIL", "CONGESTION")
CAUSES = {"ANSWER": 16, "BUSY": 17, "NOANSWER": 19, "CANCEL": 16, "CHANUNAVAIL": 20, "CONGESTION": 34}
T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, in AMI Timestamp microseconds


def aio(fn):
    """Run an async test body with asyncio.run (no pytest-asyncio needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


# ---- a number with two billed extensions, on a real file ----------------------------------


async def open_seeded(
    db: str, *, ext1: int = EXT1_FUNDS, ext2: int = EXT2_FUNDS, tariff: Tariff = TARIFF
) -> Any:
    store = await open_store(db)
    await store.run(tx_admin.add_plan, "std", tariff)
    await store.run(tx_admin.add_number, NUMBER, "HQ", "std", 0, "zh", "PJSIP/hq", 5)
    await store.run(tx_admin.set_number, NUMBER, ext_billing=True)
    await store.run(tx_admin.add_extension, NUMBER, "1", "Beijing", "PJSIP/8001", None)
    await store.run(tx_admin.add_extension, NUMBER, "2", "Shanghai", "PJSIP/8002", None)
    await store.run(tx_admin.recharge, NUMBER, None, MAIN_FUNDS, "r-main")
    if ext1:
        await store.run(tx_admin.recharge, NUMBER, "1", ext1, "r-ext1")
    if ext2:
        await store.run(tx_admin.recharge, NUMBER, "2", ext2, "r-ext2")
    return store


def bid_of(n: int) -> str:
    return f"1767225600.{n}"  # the caller IVR channel's Uniqueid = the billing id


async def start_call(store: Any, n: int, digits: str = "1") -> Any:
    d = await store.run(
        tx_calls.route, bid_of(n), NUMBER, digits, 1, CALLER, f"PJSIP/trunk-{n:08x}", bid_of(n)
    )
    assert d.action == "dial", d
    return d


async def call_row(store: Any, bid: str) -> dict[str, Any]:
    return await store.read(
        lambda c: dict(c.execute("SELECT * FROM calls WHERE billing_id=?", (bid,)).fetchone())
    )


async def accounts(store: Any) -> dict[str, dict[str, int]]:
    doc = await store.read(tx_admin.balance, NUMBER)
    out = {"main": doc["main"]}
    out.update({e["key"]: e for e in doc["extensions"]})
    return out


async def resolutions(store: Any, bid: str) -> list[dict[str, Any]]:
    return await store.read(
        lambda c: [
            dict(r)
            for r in c.execute("SELECT kind, amount FROM transfers WHERE pending_id=?", (f"call:{bid}",))
        ]
    )


async def snapshot(store: Any) -> dict[str, list[tuple]]:
    def read(c):
        return {
            t: [tuple(r) for r in c.execute(f"SELECT * FROM {t} ORDER BY 1")]
            for t in ("accounts", "transfers", "calls", "extensions", "numbers")
        }

    return await store.read(read)


async def ledger_sums(store: Any) -> tuple[int, int, int]:
    accs = await store.read(tx_ledger.all_accounts)
    return (
        sum(a.credits_posted - a.debits_posted for a in accs),
        sum(a.debits_pending for a in accs),
        sum(a.credits_pending for a in accs),
    )


def events_named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


# ---- AMI events as Asterisk 22 sends them (only the fields the correlator reads) ----------


def ts(us: int) -> str:
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def ev(name: str, at_us: int, uid: str, bid: str, **fields: str) -> dict[str, str]:
    e = {
        "Event": name,
        "Privilege": "call,all",
        "Timestamp": ts(at_us),
        "Uniqueid": uid,
        "Channel": f"PJSIP/x-{uid}",
        "ChanVariable": f"EXTBILL_ID={bid}",
        **fields,
    }
    if name.startswith("Bridge"):
        e.setdefault("BridgeUniqueid", f"bridge-{bid}")
    return e


def ami_answered(bid: str, answer_us: int, talk_ms: int) -> list[dict[str, str]]:
    """Dial answered at answer_us; the caller leaves the bridge talk_ms later, then both hang up."""
    callee = bid + "1"
    end_us = answer_us + talk_ms * 1000
    return [
        ev("DialBegin", answer_us - 8_000_000, bid, bid, DestUniqueid=callee),
        ev("DialEnd", answer_us, bid, bid, DestUniqueid=callee, DialStatus="ANSWER"),
        ev("BridgeEnter", answer_us, bid, bid),
        ev("BridgeEnter", answer_us + 500, callee, bid),
        ev("BridgeLeave", end_us, bid, bid),
        ev("BridgeLeave", end_us + 300, callee, bid),
        ev("Hangup", end_us + 600, callee, bid, Cause="16", **{"Cause-txt": "Normal Clearing"}),
        ev("Hangup", end_us + 900, bid, bid, Cause="16", **{"Cause-txt": "Normal Clearing"}),
    ]


def ami_unanswered(bid: str, at_us: int, status: str) -> list[dict[str, str]]:
    callee = bid + "1"
    cause = str(CAUSES[status])
    return [
        ev("DialBegin", at_us - 5_000_000, bid, bid, DestUniqueid=callee),
        ev("Hangup", at_us - 1_000, callee, bid, Cause=cause),
        ev("DialEnd", at_us, bid, bid, DestUniqueid=callee, DialStatus=status),
        ev("Hangup", at_us + 2_000_000, bid, bid, Cause=cause),
    ]


def hangup_answered(bid: str, answer_us: int, talk_ms: int) -> CallFacts:
    """What the dialplan's hangup handler reports for the same answered call."""
    return CallFacts(
        billing_id=bid,
        answered=True,
        talk_ms=talk_ms,
        answer_at=iso_from_ms(answer_us // 1000),
        end_at=iso_from_ms(answer_us // 1000 + talk_ms),
        disposition="ANSWER",
        cause="16",
        settled_by="hangup",
    )


def hangup_unanswered(bid: str, at_us: int, status: str) -> CallFacts:
    return CallFacts(
        billing_id=bid,
        answered=False,
        talk_ms=0,
        answer_at=None,
        end_at=iso_from_ms(at_us // 1000 + 2000),
        disposition=status,
        cause=str(CAUSES[status]),
        settled_by="hangup",
    )


async def feed(settlement: Settlement, corr: Correlator, events: list[dict[str, str]]) -> None:
    for e in events:
        for fact in corr.feed(e):
            await settlement.on_ami_fact(fact)
    assert corr.take_malformed() == []


# ---- rating: cost posted, the rest released ----------------------------------------------


@aio
async def test_answered_call_posts_cost_releases_rest_and_records_it(db: str) -> None:
    """HQ sees extension 1 charged 1.250 for a 95 s call (60 + 2x30 s billed + 0.050 connect), nothing left reserved, and a complete call record."""
    store = await open_seeded(db)
    try:
        d = await start_call(store, 1, "1")
        before = await accounts(store)
        assert before["1"]["reserved"] == d.reserve > 0
        settlement = Settlement(store)
        answer_us = T0_US + 12_000_000
        result = await settlement.settle(hangup_answered(bid_of(1), answer_us, 95_400))
        assert result is not None and result.settled_now and result.state == "rated"

        assert billed_seconds(95, TARIFF) == 120 and cost(95, TARIFF) == 1250
        after = await accounts(store)
        assert after["1"]["balance"] == EXT1_FUNDS - 1250
        assert after["1"]["reserved"] == 0 and after["1"]["available"] == EXT1_FUNDS - 1250
        assert after["1"]["spent"] == 1250
        assert after["main"]["balance"] == MAIN_FUNDS and after["main"]["reserved"] == 0
        assert await resolutions(store, bid_of(1)) == [{"kind": "post", "amount": 1250}]
        assert await ledger_sums(store) == (0, 0, 0)

        row = await call_row(store, bid_of(1))
        assert row["state"] == "rated"
        assert (row["talk_s"], row["billed_s"], row["cost"]) == (95, 120, 1250)
        assert row["disposition"] == "ANSWER" and row["cause"] == "16"
        assert row["settled_by"] == "hangup"
        assert row["answer_ms"] == answer_us // 1000
        assert row["end_ms"] == answer_us // 1000 + 95_400
        assert row["charged"] == "ext" and row["reserved"] == d.reserve
    finally:
        await store.close()


@pytest.mark.parametrize("path", ["ami", "hangup"])
@pytest.mark.parametrize("status", UNANSWERED)
@aio
async def test_unanswered_call_voids_and_costs_nothing(db: str, status: str, path: str) -> None:
    """HQ sees an unanswered (busy, no answer, cancelled, unavailable, congested) call cost 0.000, with the whole reservation back in the extension."""
    store = await open_seeded(db)
    try:
        await start_call(store, 1, "1")
        settlement = Settlement(store)
        if path == "ami":
            await feed(settlement, Correlator(), ami_unanswered(bid_of(1), T0_US + 9_000_000, status))
        else:
            await settlement.settle(hangup_unanswered(bid_of(1), T0_US + 9_000_000, status))
        after = await accounts(store)
        assert (after["1"]["balance"], after["1"]["reserved"], after["1"]["spent"]) == (EXT1_FUNDS, 0, 0)
        assert await resolutions(store, bid_of(1)) == [{"kind": "void", "amount": 0}]
        row = await call_row(store, bid_of(1))
        assert row["state"] == "unanswered" and row["settled_by"] == path
        assert (row["talk_s"], row["billed_s"], row["cost"]) == (0, 0, 0)
        assert row["disposition"] == status and row["cause"] == str(CAUSES[status])
        assert row["answer_ms"] is None
        assert await ledger_sums(store) == (0, 0, 0)
    finally:
        await store.close()


# ---- the two paths: exactly once, the loser changes nothing ------------------------------


@pytest.mark.parametrize("first", ["ami", "hangup"])
@pytest.mark.parametrize("answered", [True, False])
@aio
async def test_two_paths_settle_once_and_the_loser_changes_nothing(
    db: str, first: str, answered: bool
) -> None:
    """HQ sees one charge per call whichever of AMI and the hangup handler reports first; the second report changes no balance or record."""
    store = await open_seeded(db)
    try:
        await start_call(store, 1, "1")
        bid, at = bid_of(1), T0_US + 20_000_000
        events = ami_answered(bid, at, 61_000) if answered else ami_unanswered(bid, at, "BUSY")
        facts = hangup_answered(bid, at, 61_000) if answered else hangup_unanswered(bid, at, "BUSY")
        settlement, corr = Settlement(store), Correlator()
        with capture_logs() as logs:
            if first == "ami":
                await feed(settlement, corr, events)
                winner_snapshot = await snapshot(store)
                loser = await settlement.settle(facts)
            else:
                await settlement.settle(facts)
                winner_snapshot = await snapshot(store)
                await feed(settlement, corr, events)
                loser = None
            assert await snapshot(store) == winner_snapshot
            await settlement.settle(facts)  # a repeated hangup request
            await feed(settlement, corr, events)  # a replayed AMI stream
            assert await snapshot(store) == winner_snapshot
        if loser is not None:
            assert not loser.settled_now and loser.settled_by == "ami"
        assert len(events_named(logs, "call.settled")) == 1
        assert events_named(logs, "settle.disagreement") == []
        row = await call_row(store, bid)
        assert row["settled_by"] == first
        expected = cost(61, TARIFF) if answered else 0
        assert row["cost"] == expected and row["state"] == ("rated" if answered else "unanswered")
        assert len(await resolutions(store, bid)) == 1
        assert (await accounts(store))["1"]["balance"] == EXT1_FUNDS - expected
    finally:
        await store.close()


@pytest.mark.parametrize(
    "winner_ms, loser_ms, logged",
    [
        (10_000, 11_500, True),  # 1.5 s apart
        (10_400, 11_300, False),  # 0.9 s apart, though the winner's talk_s rounds to 10
        (10_499, 9_100, True),  # 1.399 s apart, though 10 s vs 9.1 s looks like 0.9
        (10_000, 11_000, False),  # exactly 1 s: not above
    ],
)
@aio
async def test_disagreement_above_one_second_is_logged_with_both_figures(
    db: str, winner_ms: int, loser_ms: int, logged: bool
) -> None:
    """HQ's operators see a settle.disagreement warning naming both talk times when the two paths differ by more than 1 s, and no warning otherwise."""
    store = await open_seeded(db)
    try:
        await start_call(store, 1, "1")
        bid, at = bid_of(1), T0_US + 5_000_000
        settlement = Settlement(store)
        await settlement.settle(hangup_answered(bid, at, winner_ms))
        with capture_logs() as logs:
            await feed(settlement, Correlator(), ami_answered(bid, at, loser_ms))
        found = events_named(logs, "settle.disagreement")
        if not logged:
            assert found == []
            return
        assert len(found) == 1
        entry = found[0]
        assert entry["billing_id"] == bid and entry["log_level"] == "warning"
        assert entry["settled_by"] == "hangup" and entry["other_path"] == "ami"
        assert entry["talk_ms"] == winner_ms and entry["other_talk_ms"] == loser_ms
        row = await call_row(store, bid)
        assert row["cost"] == cost((winner_ms + 500) // 1000, TARIFF)  # the winner's figure stands
    finally:
        await store.close()


@aio
async def test_disagreement_on_whether_the_call_was_answered_is_logged(db: str) -> None:
    """HQ's operators see a warning when the hangup handler said unanswered but AMI saw 30 s of talk; the call stays free, charged once."""
    store = await open_seeded(db)
    try:
        await start_call(store, 1, "1")
        bid, at = bid_of(1), T0_US + 5_000_000
        settlement = Settlement(store)
        await settlement.settle(hangup_unanswered(bid, at, "NOANSWER"))
        with capture_logs() as logs:
            await feed(settlement, Correlator(), ami_answered(bid, at, 30_000))
        [entry] = events_named(logs, "settle.disagreement")
        assert entry["talk_ms"] == 0 and entry["other_talk_ms"] == 30_000
        assert (await call_row(store, bid))["cost"] == 0
        assert len(await resolutions(store, bid)) == 1
    finally:
        await store.close()


# ---- the property: any interleaving of the two paths --------------------------------------

CALL_SPEC = st.tuples(
    st.sampled_from(["", "1", "2"]),  # main, ext 1, ext 2
    st.one_of(st.integers(1, 900_000), st.sampled_from(UNANSWERED)),  # talk ms, or why not
    st.sampled_from(["both", "both", "ami", "hangup"]),  # which paths report
    st.booleans(),  # duplicated AMI events
    st.integers(1, 2),  # hangup requests
)


_TEMPLATES: dict[str, Path] = {}  # SQLite: the seeded file, built once per session


async def _seeded_copy(engine: str, db: str) -> Any:
    """A store holding the number, plan, extensions and recharges: on SQLite a copy of a file
    seeded once, on PostgreSQL seeded anew (a new schema per example)."""
    if engine != "sqlite":
        return await open_seeded(db)
    if "sqlite" not in _TEMPLATES:
        path = Path(tempfile.mkdtemp(prefix="extbill-template-")) / "template.db"
        await (await open_seeded(str(path))).close()
        assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
        _TEMPLATES["sqlite"] = path
    shutil.copyfile(_TEMPLATES["sqlite"], db)
    return await open_store(db, create=False)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(specs=st.lists(CALL_SPEC, min_size=1, max_size=4), data=st.data())
def test_any_interleaving_settles_each_call_once_at_its_rated_cost(engine: str, new_db, specs, data) -> None:
    """HQ sees every call charged exactly once, at the plan's price for its talk time and never above what was reserved, however AMI events and hangup requests interleave or repeat."""
    asyncio.run(_interleaving(engine, new_db(), specs, data))


async def _interleaving(engine: str, db: str, specs: list[tuple], data: Any) -> None:
    store = await _seeded_copy(engine, db)
    try:
        settlement, corr = Settlement(store), Correlator()
        streams: list[list[tuple[str, Any]]] = []
        expect: dict[str, tuple[str, int | None]] = {}  # bid -> (state, talk_ms or None)
        for n, (digits, outcome, paths, dup, requests) in enumerate(specs, start=1):
            d = await store.run(tx_calls.route, bid_of(n), NUMBER, digits, 1, CALLER, "PJSIP/t", bid_of(n))
            if d.action != "dial":
                assert digits and d.prompt == "ext-in-arrears"  # earlier calls hold its money
                continue
            bid, at = bid_of(n), T0_US + n * 1_000_000_000
            if isinstance(outcome, int):
                events, facts = ami_answered(bid, at, outcome), hangup_answered(bid, at, outcome)
                expect[bid] = ("rated", outcome)
            else:
                events, facts = ami_unanswered(bid, at, outcome), hangup_unanswered(bid, at, outcome)
                expect[bid] = ("unanswered", None)
            if dup:
                events = [e for e in events for _ in (0, 1)] + events[-3:]
            if paths in ("both", "ami"):
                streams.append([("ami", e) for e in events])
            if paths in ("both", "hangup"):
                streams.append([("hangup", facts)] * requests)
        with capture_logs() as logs:
            while streams:
                i = data.draw(st.integers(0, len(streams) - 1), label="next stream")
                kind, item = streams[i].pop(0)
                if not streams[i]:
                    streams.pop(i)
                if kind == "ami":
                    await feed(settlement, corr, [item])
                else:
                    await settlement.settle(item)
        assert corr.take_malformed() == []
        settled = Counter(e["billing_id"] for e in events_named(logs, "call.settled"))
        assert settled == Counter(expect.keys())  # each exactly once
        assert events_named(logs, "settle.disagreement") == []  # the paths agreed
        assert await ledger_sums(store) == (0, 0, 0)  # nothing reserved, sums to zero

        rows = await store.read(lambda c: [dict(r) for r in c.execute("SELECT * FROM calls")])
        assert {r["billing_id"] for r in rows} == set(expect)
        spent: Counter[int] = Counter()
        resolved = await store.read(
            lambda c: Counter(
                p for (p,) in c.execute("SELECT pending_id FROM transfers WHERE pending_id IS NOT NULL")
            )
        )
        assert resolved == Counter(f"call:{b}" for b in expect)  # one resolution per call
        for r in rows:
            state, talk_ms = expect[r["billing_id"]]
            assert r["state"] == state and r["settled_by"] in ("ami", "hangup")
            # talk past the grant is the caller's leg finishing a prompt: capped at the grant
            talk_s = 0 if talk_ms is None else min((talk_ms + 500) // 1000, r["granted_s"])
            assert r["talk_s"] == talk_s
            assert r["cost"] == min(cost(talk_s, TARIFF), r["reserved"])
            assert r["cost"] <= r["reserved"]
            spent[r["account_id"]] += r["cost"]
        bal = await accounts(store)
        funds = {"main": MAIN_FUNDS, "1": EXT1_FUNDS, "2": EXT2_FUNDS}
        ids = await store.read(
            lambda c: {
                **{
                    "main": c.execute("SELECT account_id FROM numbers WHERE number=?", (NUMBER,)).fetchone()[
                        0
                    ]
                },
                **{k: a for k, a in c.execute("SELECT key, account_id FROM extensions")},
            }
        )
        for key, acc_id in ids.items():
            assert bal[key]["balance"] == funds[key] - spent[acc_id]
            assert bal[key]["reserved"] == 0
    finally:
        await store.close()


# ---- restart mid-call: AMI never saw the dial outcome ------------------------------------


@aio
async def test_ami_end_without_dial_outcome_uses_the_stored_answer(db: str) -> None:
    """HQ sees a call answered before the AMI consumer restarted still charged for its talk time, not voided as unanswered."""
    store = await open_seeded(db)
    try:
        await start_call(store, 1, "1")
        bid, at = bid_of(1), T0_US + 3_000_000
        settlement = Settlement(store)
        events = ami_answered(bid, at, 125_000)
        before_restart = [e for e in events if e["Event"] in ("DialBegin", "DialEnd", "BridgeEnter")]
        after_restart = [e for e in events if e not in before_restart]
        await feed(settlement, Correlator(), before_restart)  # CallAnswered -> mark_answered
        assert (await call_row(store, bid))["answer_ms"] == at // 1000
        fresh = Correlator()  # the consumer restarted
        facts = [f for e in after_restart for f in fresh.feed(e)]
        assert len(facts) == 1 and isinstance(facts[0], CallEnd)
        assert facts[0].answered_us is None and facts[0].dial_status is None
        await settlement.on_ami_fact(facts[0])
        row = await call_row(store, bid)
        hangup_ms = (at + 125_000_000 + 900) // 1000  # the caller's Hangup: the end AMI saw
        talk_s = (hangup_ms - at // 1000 + 500) // 1000
        assert row["state"] == "rated" and row["settled_by"] == "ami"
        assert row["talk_s"] == talk_s == 125
        assert row["cost"] == cost(talk_s, TARIFF)
        assert row["disposition"] == "ANSWER"
        assert (await accounts(store))["1"]["balance"] == EXT1_FUNDS - cost(talk_s, TARIFF)
    finally:
        await store.close()


@aio
async def test_ami_end_without_dial_outcome_or_stored_answer_waits(db: str) -> None:
    """HQ sees no wrong 'unanswered' record when AMI missed the dial outcome: the call stays reserved until the hangup handler settles it at its real cost."""
    store = await open_seeded(db)
    try:
        await start_call(store, 1, "1")
        bid, at = bid_of(1), T0_US + 3_000_000
        settlement = Settlement(store)
        events = ami_answered(bid, at, 70_000)
        after_restart = [e for e in events if e["Event"] in ("BridgeLeave", "Hangup")]
        with capture_logs() as logs:
            await feed(settlement, Correlator(), after_restart)
        assert events_named(logs, "settle.ami_incomplete")
        row = await call_row(store, bid)
        assert row["state"] == "reserved" and row["cost"] is None
        assert await resolutions(store, bid) == []
        await settlement.settle(hangup_answered(bid, at, 70_000))
        row = await call_row(store, bid)
        assert row["state"] == "rated" and row["settled_by"] == "hangup"
        assert row["cost"] == cost(70, TARIFF)
    finally:
        await store.close()


@aio
async def test_call_answered_fact_is_remembered_once_and_not_after_settlement(db: str) -> None:
    """HQ's records keep the first answer time AMI saw; a late answer event after settlement changes nothing."""
    store = await open_seeded(db)
    try:
        await start_call(store, 1, "1")
        bid = bid_of(1)
        settlement = Settlement(store)
        await settlement.on_ami_fact(CallAnswered(bid, T0_US))
        await settlement.on_ami_fact(CallAnswered(bid, T0_US + 4_000_000))
        assert (await call_row(store, bid))["answer_ms"] == T0_US // 1000
        await settlement.settle(hangup_answered(bid, T0_US, 10_000))
        snap = await snapshot(store)
        await settlement.on_ami_fact(CallAnswered(bid, T0_US + 9_000_000))
        assert await snapshot(store) == snap
    finally:
        await store.close()


# ---- reconcile and the sweeper -----------------------------------------------------------


@pytest.mark.parametrize("policy", ["mark", "charge"])
@aio
async def test_reconcile_closes_gone_calls_and_leaves_live_ones(db: str, policy: str) -> None:
    """HQ sees calls whose channels vanished while AMI was down closed by the chosen policy (released and 'unrated', or the whole grant charged), and live calls untouched."""
    store = await open_seeded(db)
    try:
        d_gone = await start_call(store, 1, "1")
        await start_call(store, 2, "")
        start_ms = max(c["start_ms"] for c in await store.read(tx_calls.open_calls))
        settlement = Settlement(store, unsettled_policy=policy)
        assert await settlement.reconcile({bid_of(2)}, start_ms + 500) == 0  # too young to judge
        with capture_logs() as logs:
            closed = await settlement.reconcile({bid_of(2), "1767225600.99"}, start_ms + 10_000)
        assert closed == 1
        assert [e["billing_id"] for e in events_named(logs, "call.unsettled_closed")] == [bid_of(1)]
        gone, live = await call_row(store, bid_of(1)), await call_row(store, bid_of(2))
        assert live["state"] == "reserved" and live["settled_by"] is None
        assert gone["settled_by"] == "reconcile"
        bal = await accounts(store)
        if policy == "mark":
            assert gone["state"] == "unrated" and gone["cost"] == 0 and gone["talk_s"] is None
            assert await resolutions(store, bid_of(1)) == [{"kind": "expire", "amount": 0}]
            assert bal["1"]["balance"] == EXT1_FUNDS and bal["1"]["reserved"] == 0
        else:
            assert gone["state"] == "rated" and gone["cost"] == d_gone.reserve
            assert gone["talk_s"] == d_gone.granted_s
            assert await resolutions(store, bid_of(1)) == [{"kind": "post", "amount": d_gone.reserve}]
            assert bal["1"]["balance"] == EXT1_FUNDS - d_gone.reserve and bal["1"]["reserved"] == 0
        assert bal["main"]["reserved"] > 0  # the live call's hold
        # a late report from the hangup handler changes nothing
        snap = await snapshot(store)
        await settlement.settle(hangup_answered(bid_of(1), T0_US, 30_000))
        assert await snapshot(store) == snap
    finally:
        await store.close()


@aio
async def test_two_asterisks_on_one_database_reconcile_only_their_own_calls(db: str) -> None:
    """Two serves, each reading its own Asterisk's AMI (systemnames pbx-a and pbx-b), share one
    database: a reconcile on pbx-a's AMI, which cannot see pbx-b's live calls, closes only
    pbx-a's gone call; pbx-b's serve, gone for good, has its call closed by pbx-a's sweeper
    once that call is past its grant (the takeover)."""
    store = await open_seeded(db)
    try:
        for name in ("pbx-a-1767225600.1", "pbx-b-1767225600.1"):
            d = await store.run(tx_calls.route, name, NUMBER, "1", 1, CALLER, "PJSIP/t", name)
            assert d.action == "dial"
        calls = {c["billing_id"]: c for c in await store.read(tx_calls.open_calls)}
        start_ms = max(c["start_ms"] for c in calls.values())
        a = Settlement(store, system_name="pbx-a")
        assert await a.reconcile(set(), start_ms + 10_000) == 1  # pbx-a's AMI lists no live call
        assert (await call_row(store, "pbx-a-1767225600.1"))["settled_by"] == "reconcile"
        assert (await call_row(store, "pbx-b-1767225600.1"))["state"] == "reserved"
        grant_s = calls["pbx-b-1767225600.1"]["granted_s"]
        assert await a.sweep(start_ms + 1_000) == 0
        assert await a.sweep(start_ms + (a.dial_timeout_s + grant_s + a.sweep_grace_s + 1) * 1000) == 1
        assert (await call_row(store, "pbx-b-1767225600.1"))["settled_by"] == "sweeper"
    finally:
        await store.close()


@aio
async def test_sweeper_closes_only_reservations_older_than_ring_grant_and_grace(db: str) -> None:
    """HQ sees a forgotten reservation closed (not silently dropped) only once its ring time, granted time and grace have all passed."""
    store = await open_seeded(db)
    try:
        short = await start_call(store, 1, "2")  # ext 2 has little money: a short grant
        long = await start_call(store, 2, "1")
        assert short.granted_s < long.granted_s
        calls = {c["billing_id"]: c for c in await store.read(tx_calls.open_calls)}
        settlement = Settlement(store, dial_timeout_s=30, sweep_grace_s=120)

        def deadline(n: int, granted: int) -> int:
            return calls[bid_of(n)]["start_ms"] + (30 + granted + 120) * 1000

        assert await settlement.sweep(deadline(1, short.granted_s)) == 0
        assert (await call_row(store, bid_of(1)))["state"] == "reserved"
        with capture_logs() as logs:
            assert await settlement.sweep(deadline(1, short.granted_s) + 1) == 1
        assert events_named(logs, "call.unsettled_closed")[0]["policy"] == "mark"
        swept = await call_row(store, bid_of(1))
        assert swept["state"] == "unrated" and swept["settled_by"] == "sweeper" and swept["cost"] == 0
        assert (await accounts(store))["2"]["reserved"] == 0
        assert (await call_row(store, bid_of(2)))["state"] == "reserved"
        assert await settlement.sweep(deadline(2, long.granted_s)) == 0
        assert await settlement.sweep(deadline(2, long.granted_s) + 1) == 1
        assert await settlement.sweep(deadline(2, long.granted_s) + 10_000) == 0  # nothing twice
        assert await ledger_sums(store) == (0, 0, 0)
    finally:
        await store.close()


# ---- balance.low --------------------------------------------------------------------------


@aio
async def test_balance_low_logged_once_per_crossing(db: str) -> None:
    """HQ gets one balance.low warning when an extension drops below 10 first blocks' cost, none while it stays low, and another only after a recharge lifted it above and it fell again."""
    plain = Tariff(per_minute=600, initial_s=60, increment_s=60)
    threshold = 10 * first_block_cost(plain)
    assert threshold == 6000
    store = await open_seeded(db, ext1=8000, ext2=0, tariff=plain)
    try:
        settlement = Settlement(store)
        n = 0

        async def call(talk_ms: int, digits: str = "1") -> list[dict[str, Any]]:
            nonlocal n
            n += 1
            await start_call(store, n, digits)
            with capture_logs() as logs:
                await settlement.settle(hangup_answered(bid_of(n), T0_US + n * 10**9, talk_ms))
            return events_named(logs, "balance.low")

        async def available() -> int:
            return (await accounts(store))["1"]["available"]

        assert await call(120_000) == [] and await available() == 6800  # above: nothing
        low = await call(120_000)  # 5600: crossed
        assert len(low) == 1 and await available() == 5600
        assert low[0]["number"] == NUMBER and low[0]["ext"] == "1"
        assert low[0]["available"] == "5.600" and low[0]["threshold"] == "6.000"
        assert await call(60_000) == [] and await available() == 5000  # still below: quiet
        assert await call(30_000, "") == []  # main calls never
        await store.run(tx_admin.recharge, NUMBER, "1", 1500, None)  # 6500: above again
        low = await call(120_000)  # 5300: crossed again
        assert len(low) == 1 and low[0]["available"] == "5.300"
        assert await call(60_000) == []  # 4700: quiet
        await store.run(tx_admin.recharge, NUMBER, "1", 10_000, None)  # 14700
        assert await call(60_000) == []  # 14100: above
        low = await call(900_000)  # 5100: crossed again
        assert len(low) == 1 and low[0]["available"] == "5.100"
    finally:
        await store.close()


@aio
async def test_balance_low_uses_the_configured_threshold(db: str) -> None:
    """HQ can set an extension's own low-balance threshold, and balance.low follows it instead of the default."""
    store = await open_seeded(
        db, ext1=8000, ext2=0, tariff=Tariff(per_minute=600, initial_s=60, increment_s=60)
    )
    try:
        await store.run(tx_admin.set_extension, NUMBER, "1", low_balance=7500)
        settlement = Settlement(store)
        await start_call(store, 1, "1")
        with capture_logs() as logs:
            await settlement.settle(hangup_answered(bid_of(1), T0_US, 60_000))  # 8000 -> 7400
        [low] = events_named(logs, "balance.low")
        assert low["threshold"] == "7.500" and low["available"] == "7.400"
    finally:
        await store.close()


# ---- the cap: never more than reserved ----------------------------------------------------


@pytest.mark.parametrize("path", ["ami", "hangup"])
@aio
async def test_cost_never_exceeds_the_reservation(db: str, path: str) -> None:
    """HQ sees a call reported past its grant rated at the grant and charged exactly what was reserved, never below zero."""
    store = await open_seeded(db, ext2=1500)
    try:
        d = await start_call(store, 1, "2")
        assert (d.granted_s, d.reserve) == (120, 1250)
        assert cost(400, TARIFF) > d.reserve
        bid, at = bid_of(1), T0_US
        settlement = Settlement(store)
        with capture_logs() as logs:
            if path == "ami":
                await feed(settlement, Correlator(), ami_answered(bid, at, 400_000))
            else:
                await settlement.settle(hangup_answered(bid, at, 400_000))
        assert events_named(logs, "call.talk_over_grant")
        row = await call_row(store, bid)
        assert row["state"] == "rated" and row["talk_s"] == d.granted_s  # talk is capped at the grant
        assert row["cost"] == d.reserve == 1250
        bal = (await accounts(store))["2"]
        assert (bal["balance"], bal["reserved"], bal["available"]) == (250, 0, 250)
        assert await resolutions(store, bid) == [{"kind": "post", "amount": 1250}]
    finally:
        await store.close()


@aio
async def test_answers_arriving_together_are_written_together_and_each_kept(db: str, monkeypatch) -> None:
    """Forty answer events at once: every call gets its own (first) answer time, in far fewer writes."""
    store = await open_seeded(db, ext1=1_000_000_000)  # 1,000,000 CNY: twenty grants
    writes: list[int] = []
    real = tx_calls.mark_answered_many

    def counting(conn: Any, answers: list[tuple[str, int, str | None]]) -> int:
        writes.append(len(answers))
        return real(conn, answers)

    monkeypatch.setattr(tx_calls, "mark_answered_many", counting)
    try:
        for n in range(1, 21):
            await start_call(store, n, "1")
        settlement = Settlement(store)
        facts = [CallAnswered(bid_of(n), T0_US + n * 1000) for n in range(1, 21)]
        later = [CallAnswered(bid_of(n), T0_US + 60_000_000) for n in range(1, 21)]
        await asyncio.gather(*(settlement.on_ami_fact(f) for f in facts + later))
        for n in range(1, 21):
            assert (await call_row(store, bid_of(n)))["answer_ms"] == (T0_US + n * 1000) // 1000
        assert 20 <= sum(writes) <= 40 and len(writes) <= 3, writes  # not forty writes of one
    finally:
        await store.close()
