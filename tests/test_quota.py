"""Quota chunks (docs/rules.md rule 9): the pure grant policy with property tests, and the
store's renewals and settlement across chunks on a real SQLite file."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastagi.core.quota import (
    align_to_blocks,
    chunk_end,
    first_grant,
    next_grant,
    renew_at_ms,
    warning_before_ms,
)
from fastagi.core.rating import Tariff, cost, seconds_max
from fastagi.core.records import CallFacts
from fastagi.store import tx_admin, tx_calls, tx_quota
from fastagi.store.factory import open_store

tariffs = st.builds(
    Tariff,
    per_minute=st.integers(0, 5000),
    initial_s=st.integers(1, 120),
    increment_s=st.integers(1, 60),
    connect_fee=st.integers(0, 500),
    grace_s=st.integers(0, 5),
    max_call_s=st.integers(120, 7200),
)


# ---- the pure policy ----------------------------------------------------------------------


def test_a_chunk_is_rounded_up_to_whole_blocks() -> None:
    """quota_s is rounded up to the initial block, then whole increments."""
    t = Tariff(per_minute=600, initial_s=60, increment_s=30)
    assert align_to_blocks(1, t) == 60
    assert align_to_blocks(60, t) == 60
    assert align_to_blocks(61, t) == 90
    assert align_to_blocks(300, t) == 300
    assert chunk_end(0, 100, t) == 120
    assert chunk_end(120, 100, t) == 240
    assert chunk_end(7100, 300, t) == 7200  # capped by the plan's maximum call


def test_first_grant_is_one_chunk_when_the_account_can_pay_more() -> None:
    """A funded account grants one chunk (not its whole balance), renewable."""
    t = Tariff(per_minute=600, initial_s=60, increment_s=6)
    g = first_grant(10_000, t, 300, renewable=True)
    assert g is not None and (g.granted_s, g.reserved, g.final) == (300, 3_000, False)


def test_first_grant_is_final_when_the_account_cannot_pay_a_chunk() -> None:
    """An account that pays less than a chunk gets all it can pay, final."""
    t = Tariff(per_minute=600, initial_s=60, increment_s=6)
    g = first_grant(1_000, t, 300, renewable=True)
    # 1.000 pays 100 s at 0.01/s: the 60 s block and six 6 s increments, 96 s
    assert g is not None and (g.granted_s, g.reserved, g.final) == (96, 960, True)
    assert first_grant(599, t, 300, renewable=True) is None  # not even the first block


def test_without_a_supervisor_the_grant_is_everything_the_account_pays() -> None:
    """AMI down at setup: the call cannot be renewed, so it gets all it can pay, final."""
    t = Tariff(per_minute=600, initial_s=60, increment_s=6)
    g = first_grant(10_000, t, 300, renewable=False)
    assert g is not None and g.final and g.granted_s == seconds_max(10_000, t) == 996  # whole blocks


def test_a_grant_reaching_the_plans_maximum_is_final() -> None:
    t = Tariff(per_minute=600, initial_s=60, increment_s=60, max_call_s=600)
    g = next_grant(300, cost(300, t), 1_000_000, t, 300)
    assert g is not None and g.granted_s == 600 and g.final
    assert next_grant(600, cost(600, t), 1_000_000, t, 300) is None


def test_warning_and_renewal_times() -> None:
    """A final grant is warned a minute before its end, or halfway through a short one; a
    chunk renews renew_before_s before its end, or halfway through a short one."""
    assert warning_before_ms(300) == 60_000
    assert warning_before_ms(20) == 10_000
    assert renew_at_ms(1_000_000, 300, 30) == 1_000_000 + 270_000
    assert renew_at_ms(1_000_000, 10, 30) == 1_000_000 + 5_000


@settings(max_examples=300, deadline=None)
@given(t=tariffs, available=st.integers(0, 200_000), quota_s=st.integers(1, 900), renewable=st.booleans())
def test_first_grant_holds_exactly_its_cost_and_never_more_than_available(
    t: Tariff, available: int, quota_s: int, renewable: bool
) -> None:
    g = first_grant(available, t, quota_s, renewable=renewable)
    if g is None:
        assert seconds_max(available, t) == 0
        return
    assert g.reserved == cost(g.granted_s, t) <= available
    assert 0 < g.granted_s <= t.max_call_s
    if renewable and not g.final:
        assert g.granted_s == chunk_end(0, quota_s, t)


@settings(max_examples=300, deadline=None)
@given(
    t=tariffs,
    balance=st.integers(0, 300_000),
    quota_s=st.integers(1, 600),
    ops=st.lists(st.tuples(st.sampled_from("srpxe"), st.integers(0, 7), st.integers(0, 20_000)), max_size=60),
)
def test_any_interleaving_on_one_account_never_overdraws(
    t: Tariff, balance: int, quota_s: int, ops: list[tuple[str, int, int]]
) -> None:
    """Setups (s), renewals (r), recharges (p), settlements after some talk (x) and ends (e) of
    up to 8 calls on one account, in any order: the money held never exceeds the balance,
    every call holds exactly the cost of its grant, and no call is allowed talk it has not
    reserved."""
    posted = balance  # credits minus posted debits
    calls: dict[int, tuple[int, int]] = {}  # call -> (granted_s, reserved)

    def available() -> int:
        return posted - sum(r for _, r in calls.values())

    for op, n, x in ops:
        if op == "s" and n not in calls:
            g = first_grant(available(), t, quota_s, renewable=True)
            if g is not None:
                calls[n] = (g.granted_s, g.reserved)
        elif op == "r" and n in calls:
            granted, reserved = calls[n]
            g = next_grant(granted, reserved, available(), t, quota_s)
            if g is not None:
                assert g.granted_s > granted and g.reserved >= reserved
                calls[n] = (g.granted_s, g.reserved)
        elif op == "p":
            posted += x
        elif op in "xe" and n in calls:
            granted, reserved = calls.pop(n)
            talk = min(x // 10, granted)  # Asterisk never allows more than the grant
            charged = cost(talk, t)
            assert charged <= reserved  # settlement never posts more than was held
            posted -= charged
        for granted, reserved in calls.values():
            assert reserved == cost(granted, t) and granted <= t.max_call_s
        assert available() >= 0 and posted >= 0


# ---- the store: renewals and settlement across chunks --------------------------------------

NUMBER = "4008001234"
T = Tariff(per_minute=600, initial_s=1, increment_s=1)  # 0.01 CNY a second


def aio(fn):
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


async def _store(db: str, ext_money: int) -> Any:
    store = await open_store(db)
    await store.run(tx_admin.add_plan, "p", T)
    await store.run(tx_admin.add_number, NUMBER, "HQ", "p", 0, "zh", "PJSIP/hq", 5)
    await store.run(tx_admin.set_number, NUMBER, ext_billing=True)
    await store.run(tx_admin.add_extension, NUMBER, "1", "Beijing", "PJSIP/8001", None)
    await store.run(tx_admin.recharge, NUMBER, None, 50_000, "r-main")
    await store.run(tx_admin.recharge, NUMBER, "1", ext_money, "r-ext")
    return store


async def _route(store: Any, bid: str, supervised: bool | None = True, quota_s: int = 10) -> Any:
    return await store.run(
        tx_calls.route, bid, NUMBER, "1", 1, "13800138000", f"PJSIP/trunk-{bid}", bid, quota_s, supervised
    )


async def _ext(store: Any) -> dict[str, Any]:
    doc = await store.read(tx_admin.balance, NUMBER)
    return next(e for e in doc["extensions"] if e["key"] == "1")


@aio
async def test_four_calls_share_ten_yuan(db: str) -> None:
    """An extension holding 10.000 bridges four concurrent callers: each holds one chunk."""
    store = await _store(db, 10_000)
    try:
        decisions = [await _route(store, f"1767225600.{i}", quota_s=300) for i in range(4)]
        assert [d.action for d in decisions] == ["dial"] * 4
        assert [(d.granted_s, d.reserve, d.final) for d in decisions] == [(300, 3_000, False)] * 3 + [
            (100, 1_000, True)
        ]
        assert (await _ext(store))["available"] == 0
    finally:
        await store.close()


@aio
async def test_the_lease_decides_whether_setup_grants_a_chunk(db: str) -> None:
    """Without a supervisor holding the lease, setup grants everything (final); with it, a chunk."""
    store = await _store(db, 10_000)
    try:
        d = await _route(store, "1767225600.1", supervised=None)
        assert (d.granted_s, d.final, d.supervised) == (1_000, True, False)
        await store.run(tx_calls.settle, _ended("1767225600.1", 0))
        await store.run(tx_quota.take_lease, "me", 2**62)
        d = await _route(store, "1767225600.2", supervised=None)
        assert (d.granted_s, d.final, d.supervised) == (10, False, True)
        assert d.warning_ms == 0  # the supervisor warns, not Dial's L(x:y)
    finally:
        await store.close()


def _ended(bid: str, talk_ms: int) -> CallFacts:
    return CallFacts(
        billing_id=bid,
        answered=talk_ms > 0,
        talk_ms=talk_ms,
        answer_at="2026-01-01T00:00:00.000Z" if talk_ms else None,
        end_at="2026-01-01T00:01:00.000Z",
        disposition="ANSWER" if talk_ms else "NOANSWER",
        cause="16",
        settled_by="hangup",
    )


@aio
async def test_renewals_reserve_chunks_and_settlement_posts_the_real_cost_across_them(db: str) -> None:
    """Three renewals of 10 s, 25 s of talk: 0.250 posted over the chunks in order, the rest
    released, each chunk resolved once, and a repeated renewal number changes nothing."""
    store = await _store(db, 1_000)
    bid = "1767225600.7"
    try:
        await _route(store, bid)
        for seq in (1, 2, 3):
            r = await store.run(tx_quota.renew, bid, seq, 10)
            assert r.extended and r.granted_s == 10 * (seq + 1) and r.reserved == 100 * (seq + 1)
        again = await store.run(tx_quota.renew, bid, 3, 10)  # the same renewal asked twice
        assert not again.extended and again.granted_s == 40
        assert (await _ext(store))["reserved"] == 400
        res = await store.run(tx_calls.settle, _ended(bid, 25_000))
        assert (res.state, res.talk_s, res.cost) == ("rated", 25, 250)
        ext = await _ext(store)
        assert (ext["balance"], ext["reserved"], ext["available"]) == (750, 0, 750)
        rows = await store.read(
            lambda c: c.execute(
                "SELECT p.id, p.amount, r.kind, r.amount FROM transfers p JOIN transfers r "
                "ON r.pending_id = p.id WHERE coalesce(p.ref, substr(p.id, 6)) = ? AND p.kind = 'pending' ORDER BY p.seq",
                (bid,),
            ).fetchall()
        )
    finally:
        await store.close()
    assert [tuple(r) for r in rows] == [
        (f"call:{bid}", 100, "post", 100),
        (f"call:{bid}:r1", 100, "post", 100),
        (f"call:{bid}:r2", 100, "post", 50),
        (f"call:{bid}:r3", 100, "void", 0),
    ]


@aio
async def test_a_renewal_the_account_cannot_pay_makes_the_grant_final(db: str) -> None:
    """The money runs out: the last renewal gets what is left (final), then nothing more,
    and a recharge makes the call renewable again."""
    store = await _store(db, 150)
    bid = "1767225600.8"
    try:
        d = await _route(store, bid)
        assert (d.granted_s, d.final) == (10, False)
        r = await store.run(tx_quota.renew, bid, 1, 10)
        assert (r.extended, r.granted_s, r.final) == (True, 15, True)
        assert not await store.read(tx_quota.can_renew, bid, 10)
        r = await store.run(tx_quota.renew, bid, 2, 10)
        assert (r.extended, r.granted_s, r.final) == (False, 15, True)
        await store.run(tx_admin.recharge, NUMBER, "1", 1_000, "top-up")
        assert await store.read(tx_quota.can_renew, bid, 10)
        r = await store.run(tx_quota.renew, bid, 2, 10)
        assert (r.extended, r.granted_s, r.final) == (True, 25, False)
        assert (await _ext(store))["available"] == 1_150 - 250
    finally:
        await store.close()


@aio
async def test_a_settled_call_is_never_renewed(db: str) -> None:
    store = await _store(db, 1_000)
    bid = "1767225600.9"
    try:
        await _route(store, bid)
        await store.run(tx_calls.settle, _ended(bid, 3_000))
        r = await store.run(tx_quota.renew, bid, 1, 10)
        assert not r.live and not r.extended
        assert (await _ext(store))["reserved"] == 0
    finally:
        await store.close()


@aio
async def test_the_sweeper_and_unanswered_calls_close_every_chunk(db: str) -> None:
    """Void (unanswered) and expire (sweeper) resolve every chunk, not only the first."""
    store = await _store(db, 1_000)
    try:
        await _route(store, "1767225600.10")
        await store.run(tx_quota.renew, "1767225600.10", 1, 10)
        await store.run(tx_calls.settle, _ended("1767225600.10", 0))
        await _route(store, "1767225600.11")
        await store.run(tx_quota.renew, "1767225600.11", 1, 10)
        res = await store.run(tx_calls.expire, "1767225600.11", "charge", "sweeper")
        assert (res.state, res.cost) == ("rated", 200)
        ext = await _ext(store)
        assert (ext["balance"], ext["reserved"]) == (800, 0)
    finally:
        await store.close()


@pytest.mark.parametrize("renewals", [0, 2])
def test_calls_shows_the_granted_total_and_renewal_count(db: str, renewals: int) -> None:
    """`extbill calls --json` shows each call's granted total and how often it was renewed."""

    async def main() -> list[dict[str, Any]]:
        store = await _store(db, 1_000)
        try:
            await _route(store, "1767225600.12")
            for seq in range(1, renewals + 1):
                await store.run(tx_quota.renew, "1767225600.12", seq, 10)
            return await store.read(tx_calls.call_records, NUMBER, None, None)
        finally:
            await store.close()

    (rec,) = asyncio.run(main())
    assert (rec["granted_s"], rec["renewals"]) == (10 * (renewals + 1), renewals)


# ---- the supervisor: renew, move the cut-off, warn (fake AMI peer, real SQLite) ------------


class FakeAmi:
    """Answers actions as Asterisk would; records them. `gone` names channels that have hung up."""

    def __init__(self) -> None:
        self.connected = True
        self.actions: list[dict[str, str]] = []
        self.gone: set[str] = set()

    async def send_action(self, fields: dict[str, str], timeout_s: float | None = None) -> dict[str, str]:
        self.actions.append(dict(fields))
        if fields.get("Channel") in self.gone:
            return {"Response": "Error", "Message": "No such channel"}
        return {"Response": "Success", "Message": "Variable Set"}

    def of(self, variable: str) -> list[dict[str, str]]:
        return [a for a in self.actions if a.get("Variable") == variable]


async def _supervised(db: str, ext_money: int, quota_s: int = 2) -> tuple[Any, Any, FakeAmi]:
    from fastagi.runtime.clock import now_ms
    from fastagi.service.supervisor import Supervisor

    store = await _store(db, ext_money)
    ami = FakeAmi()
    sup = Supervisor(store, ami, quota_s=quota_s, renew_before_s=1, holder="test")
    await sup.start()
    bid = "1767225600.20"
    await _route(store, bid, quota_s=quota_s)
    sup.on_answered(bid, now_ms(), "callee-1")
    return store, sup, ami


async def _until(cond: Any, timeout_s: float = 15.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@aio
async def test_the_supervisor_renews_and_moves_the_callees_cut_off_after_reserving(db: str) -> None:
    """An answered call on 2 s chunks: each renewal is reserved first, then the callee's
    TIMEOUT(absolute) moves to the new end and the caller's EXTBILL_LIMIT_MS follows."""
    store, sup, ami = await _supervised(db, 1_000)
    try:
        await _until(lambda: len(ami.of("TIMEOUT(absolute)")) >= 2)
        moves = ami.of("TIMEOUT(absolute)")
        assert all(m["Channel"] == "callee-1" and m["Action"] == "Setvar" for m in moves)
        assert [a["Value"] for a in ami.of("EXTBILL_LIMIT_MS")][:2] == ["4000", "6000"]
        # each move allows no more than what is reserved: renewed 1 s before the end of a
        # 2 s chunk, the new end is at most 3 s away
        assert all(0 < float(m["Value"]) <= 3.0 for m in moves), moves
        grant = await store.read(tx_quota.call_grant, "1767225600.20")
        assert grant.renewals >= 2 and grant.reserved == cost(grant.granted_s, T)
    finally:
        await sup.stop()
        await store.close()


@aio
async def test_a_gone_callee_stops_the_supervision(db: str) -> None:
    """ "No such channel" for the callee: the call is over; nothing more is renewed."""
    store, sup, ami = await _supervised(db, 1_000)
    ami.gone.add("callee-1")
    try:
        await _until(lambda: len(ami.of("TIMEOUT(absolute)")) == 1)
        await _until(lambda: "1767225600.20" not in sup.watched())
        grant = await store.read(tx_quota.call_grant, "1767225600.20")
        assert grant.renewals == 1  # reserved once, then released by settlement later
    finally:
        await sup.stop()
        await store.close()


@aio
async def test_a_final_grant_is_warned_by_a_whisper_and_not_renewed(db: str) -> None:
    """An extension holding 3 s: the call's grant turns final, the warning is whispered into
    the caller's channel through ChanSpy, and no cut-off moves past the money."""
    store, sup, ami = await _supervised(db, 30)
    try:
        await _until(lambda: any(a["Action"] == "Originate" for a in ami.actions))
        (whisper,) = [a for a in ami.actions if a["Action"] == "Originate"]
        assert whisper["Application"] == "ChanSpy"
        assert (
            whisper["Data"].startswith("PJSIP/trunk-1767225600.20,") and "w" in whisper["Data"].split(",")[1]
        )
        grant = await store.read(tx_quota.call_grant, "1767225600.20")
        assert grant.final and grant.granted_s == 3 and grant.reserved == 30
        assert [a["Value"] for a in ami.of("EXTBILL_LIMIT_MS")] == ["3000"]
    finally:
        await sup.stop()
        await store.close()


@aio
async def test_no_renewal_while_ami_is_down(db: str) -> None:
    """With AMI down nothing could move the cut-off, so nothing more is reserved."""
    store, sup, ami = await _supervised(db, 1_000, quota_s=6)
    ami.connected = False
    try:
        await asyncio.sleep(5.3)  # past the first renewal time (1 s before the 6 s end)
        grant = await store.read(tx_quota.call_grant, "1767225600.20")
        assert grant.renewals == 0 and ami.actions == []
        ami.connected = True  # back before the end: the call is renewed after all
        await _until(lambda: len(ami.of("TIMEOUT(absolute)")) >= 1, timeout_s=0.65)
    finally:
        await sup.stop()
        await store.close()


@aio
async def test_the_supervisors_timers_stay_proportional_to_live_calls(db: str) -> None:
    """Calls that end within their first chunk (most calls) leave no growing timer heap behind."""
    from fastagi.runtime.clock import now_ms
    from fastagi.service import supervisor as sv

    store = await _store(db, 1_000)
    sup = sv.Supervisor(store, FakeAmi(), quota_s=300, renew_before_s=30, holder="test")
    try:
        for i in range(5_000):
            bid = f"1767225600.{i}"
            sup.note_grant(bid, 300, False, "PJSIP/x", "zh")
            sup.on_answered(bid, now_ms(), "callee")
            sup.on_ended(bid)
        assert sup.watched() == set()
        assert len(sup._heap) <= sv.HEAP_SLACK + 1  # noqa: SLF001  (the bound is the point)
    finally:
        await store.close()


@aio
async def test_the_lease_is_per_asterisk(db: str) -> None:
    """With several Asterisk servers on one database, a call gets chunks only while a supervisor
    of its own Asterisk (its uniqueid's systemname) holds the lease."""
    store = await _store(db, 10_000)
    try:
        await store.run(tx_quota.take_lease, "serve-a", 2**62, "pbx-a")
        on_a = await _route(store, "pbx-a-1767225600.1", supervised=None)
        on_b = await _route(store, "pbx-b-1767225600.1", supervised=None)
        assert (on_a.granted_s, on_a.supervised) == (10, True)
        assert (on_b.final, on_b.supervised) == (True, False)  # nobody renews pbx-b's calls
        await store.run(tx_quota.drop_lease, "serve-a", "pbx-a")
        await store.run(tx_quota.take_lease, "single", 2**62, "")  # one Asterisk, no system name set
        await store.run(tx_admin.recharge, NUMBER, "1", 10_000, "r-more")  # pbx-b's call holds the rest
        on_c = await _route(store, "pbx-c-1767225600.1", supervised=None)
        assert on_c.supervised  # covers its calls whatever their systemname
    finally:
        await store.close()


@aio
async def test_a_call_granted_without_a_supervisor_is_left_to_dials_own_limit(db: str) -> None:
    """A call set up while nobody held the lease (all it can pay, final, Dial's L(x:y) warning)
    and answered after AMI came back: the supervisor neither warns it again nor reserves more."""
    from fastagi.runtime.clock import now_ms
    from fastagi.service.supervisor import Supervisor

    store = await _store(db, 30)  # 3 s of money: warned and re-checked at once were it supervised
    ami = FakeAmi()
    sup = Supervisor(store, ami, quota_s=2, renew_before_s=1, holder="test")
    await sup.start()
    try:
        d = await _route(store, "1767225600.30", supervised=False)
        assert (d.granted_s, d.final, d.supervised) == (3, True, False) and d.warning_ms == 1_500
        sup.on_answered("1767225600.30", now_ms(), "callee-1")
        await _until(lambda: "1767225600.30" not in sup.watched(), timeout_s=5)
        await asyncio.sleep(2)
        assert [a for a in ami.actions if a["Action"] != "Ping"] == []
        assert await store.read(tx_quota.supervised_calls, 10) == []
    finally:
        await sup.stop()
        await store.close()
