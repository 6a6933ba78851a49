"""The ledger: double entry, no overdraw, two-phase reservations; pure rules and the real SQLite store."""
from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, invariant, multiple,
                                 rule)

from fastagi.ledger import (Account, AccountKind, InsufficientFunds, InvalidTransfer,
                            LedgerError, TransferKind, apply_pending, apply_posted, apply_resolve,
                            invariant_holds)
from fastagi.rating import Tariff
from fastagi.store import tx_admin, tx_calls, tx_ledger
from fastagi.store.base import Conflict
from fastagi.store.sqlite import SqliteStore

# =============================== the pure rules ==============================================

FUNDING, REVENUE, MAIN, EXT1, EXT2 = range(5)
GUARDED = (MAIN, EXT1, EXT2)
amounts = st.integers(min_value=-5, max_value=5_000)


class PureLedger(RuleBasedStateMachine):
    """Random recharge / move / reserve / post / void / expire over five accounts, against a model."""

    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        kinds = [AccountKind.FUNDING, AccountKind.REVENUE, AccountKind.MAIN, AccountKind.EXT,
                 AccountKind.EXT]
        self.acc = [Account(i, k) for i, k in enumerate(kinds)]
        self.posted = [0] * 5     # the model: posted balance per account
        self.held = [0] * 5       # the model: money held by open reservations per account

    def _posted(self, debit: int, credit: int, amount: int) -> None:
        before = list(self.acc)
        must_refuse = amount <= 0 or (debit in GUARDED and amount > self.posted[debit] - self.held[debit])
        try:
            self.acc[debit], self.acc[credit] = apply_posted(self.acc[debit], self.acc[credit], amount)
        except LedgerError:
            assert must_refuse, f"refused a valid transfer of {amount}"
            assert self.acc == before
            return
        assert not must_refuse, f"accepted an invalid transfer of {amount}"
        self.posted[debit] -= amount
        self.posted[credit] += amount

    @rule(to=st.sampled_from(GUARDED), amount=amounts)
    def recharge(self, to: int, amount: int) -> None:
        self._posted(FUNDING, to, amount)

    @rule(src=st.sampled_from(GUARDED), dst=st.sampled_from(GUARDED), amount=amounts)
    def move(self, src: int, dst: int, amount: int) -> None:
        if src == dst:
            with pytest.raises(InvalidTransfer):
                apply_posted(self.acc[src], self.acc[dst], amount if amount > 0 else 1)
            return
        self._posted(src, dst, amount)

    @rule(target=reservations, src=st.sampled_from(GUARDED), amount=amounts)
    def reserve(self, src: int, amount: int):
        before = list(self.acc)
        must_refuse = amount < 0 or amount > self.posted[src] - self.held[src]
        try:
            self.acc[src], self.acc[REVENUE] = apply_pending(self.acc[src], self.acc[REVENUE], amount)
        except LedgerError:
            assert must_refuse
            assert self.acc == before
            return multiple()
        assert not must_refuse
        self.held[src] += amount
        return (src, amount)

    def _resolve(self, res: tuple[int, int], posted: int) -> None:
        src, amount = res
        self.acc[src], self.acc[REVENUE] = apply_resolve(self.acc[src], self.acc[REVENUE], amount, posted)
        self.held[src] -= amount
        self.posted[src] -= posted
        self.posted[REVENUE] += posted

    @rule(res=consumes(reservations), data=st.data())
    def post(self, res: tuple[int, int], data: st.DataObject) -> None:
        self._resolve(res, data.draw(st.integers(0, res[1]), label="posted"))

    @rule(res=consumes(reservations))
    def void(self, res: tuple[int, int]) -> None:
        self._resolve(res, 0)

    @rule(res=consumes(reservations))
    def expire(self, res: tuple[int, int]) -> None:
        self._resolve(res, 0)

    @rule(res=reservations, extra=st.integers(1, 100))
    def post_more_than_reserved_is_refused(self, res: tuple[int, int], extra: int) -> None:
        src, amount = res
        before = list(self.acc)
        with pytest.raises(InvalidTransfer):
            apply_resolve(self.acc[src], self.acc[REVENUE], amount, amount + extra)
        assert self.acc == before

    @invariant()
    def balances_match_the_model_and_never_go_negative(self) -> None:
        assert invariant_holds(self.acc)
        for i, a in enumerate(self.acc):
            assert a.balance == self.posted[i]
            assert a.reserved == (self.held[i] if i != REVENUE else 0)
        for i in GUARDED:
            assert self.acc[i].balance >= 0
            assert self.acc[i].available >= 0
        assert sum(a.balance for a in self.acc) == 0


TestPureLedger = PureLedger.TestCase
TestPureLedger.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_invariant_detects_an_overdrawn_account() -> None:
    """The invariant check itself fails for an overdrawn customer account or an unbalanced ledger."""
    ok = [Account(0, AccountKind.FUNDING, debits_posted=5), Account(1, AccountKind.MAIN, credits_posted=5)]
    assert invariant_holds(ok)
    overdrawn = [Account(0, AccountKind.FUNDING, credits_posted=5), Account(1, AccountKind.MAIN, debits_posted=5)]
    assert not invariant_holds(overdrawn)
    unbalanced = [Account(0, AccountKind.FUNDING), Account(1, AccountKind.MAIN, credits_posted=5)]
    assert not invariant_holds(unbalanced)


def test_reservation_larger_than_available_is_refused() -> None:
    """A reservation one minor unit above the available amount is refused; exactly available is fine."""
    main = Account(1, AccountKind.MAIN, credits_posted=1_000, debits_pending=400)
    rev = Account(2, AccountKind.REVENUE)
    with pytest.raises(InsufficientFunds):
        apply_pending(main, rev, 601)
    new_main, _ = apply_pending(main, rev, 600)
    assert new_main.available == 0


# =============================== the real SQLite store =======================================

NUMBER = "4008001234"
KEYS = ("1", "2")


def run(coro):
    return asyncio.run(coro)


async def _open_with_number(path: Path, *, plan: Tariff | None = None,
                            ext_billing: bool = False) -> SqliteStore:
    store = await SqliteStore.open(str(path))
    await store.run(tx_admin.add_plan, "std", plan or Tariff(per_minute=600))
    await store.run(tx_admin.add_number, NUMBER, "HQ", "std", 0, "zh", "PJSIP/100", 5)
    for k in KEYS:
        await store.run(tx_admin.add_extension, NUMBER, k, f"branch {k}", f"PJSIP/20{k}", None)
    if ext_billing:
        await store.run(tx_admin.set_number, NUMBER, ext_billing=True)
    return store


def _dump(conn: sqlite3.Connection) -> list[str]:
    return list(conn.iterdump())


def _accounts(conn: sqlite3.Connection) -> list[Account]:
    return tx_ledger.all_accounts(conn)


def _account_ids(conn: sqlite3.Connection) -> dict[str | None, int]:
    ids: dict[str | None, int] = {None: conn.execute(
        "SELECT account_id FROM numbers WHERE number=?", (NUMBER,)).fetchone()[0]}
    for k in KEYS:
        ids[k] = conn.execute("SELECT account_id FROM extensions WHERE key=?", (k,)).fetchone()[0]
    return ids


def _check_books(conn: sqlite3.Connection) -> None:
    accounts = _accounts(conn)
    assert sum(a.credits_posted - a.debits_posted for a in accounts) == 0
    assert sum(a.credits_pending - a.debits_pending for a in accounts) == 0
    for a in accounts:
        if a.kind in (AccountKind.MAIN, AccountKind.EXT):
            assert a.balance >= 0 and a.available >= 0, a
    assert invariant_holds(accounts)


# One step of a random sequence; ("resolve", i, ...) refers to the i-th reservation made so far.
targets = st.sampled_from([None, *KEYS])
store_ops = st.one_of(
    st.tuples(st.just("recharge"), targets, st.integers(1, 50_000), st.sampled_from([None, "r1", "r2"])),
    st.tuples(st.just("move"), st.sampled_from(KEYS), st.integers(1, 50_000), st.sampled_from([None, "m1"])),
    st.tuples(st.just("reserve"), targets, st.integers(0, 30_000)),
    st.tuples(st.just("resolve"), st.integers(0, 20),
              st.sampled_from([TransferKind.POST, TransferKind.VOID, TransferKind.EXPIRE]),
              st.floats(0, 1)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(store_ops, min_size=1, max_size=25))
def test_random_sequences_on_the_real_store_keep_the_books(tmp_path: Path, ops: list[tuple]) -> None:
    """Any sequence of recharges, moves, reservations and settlements keeps the total zero and no
    customer account negative; a refused operation leaves the database byte-for-byte unchanged."""

    async def scenario() -> None:
        store = await _open_with_number(tmp_path / f"{uuid.uuid4().hex}.db")
        try:
            ids = await store.read(_account_ids)
            reservations: list[tuple[str, int]] = []   # (pending id, amount)
            resolved: set[str] = set()
            for n, op in enumerate(ops):
                before = await store.read(_dump)
                avail_before = await store.read(
                    lambda c: {k: tx_ledger.load_account(c, i).available for k, i in ids.items()})
                try:
                    if op[0] == "recharge":
                        _, key, amount, ref = op
                        await store.run(tx_admin.recharge, NUMBER, key, amount, ref)
                    elif op[0] == "move":
                        _, key, amount, ref = op
                        await store.run(tx_admin.move, NUMBER, key, amount, ref)
                        assert ref is not None or amount <= avail_before[None]
                    elif op[0] == "reserve":
                        _, key, amount = op
                        pid = f"test:{n}"
                        await store.run(tx_ledger.transfer, pid, ids[key], tx_ledger.REVENUE_ACCOUNT_ID,
                                        amount, "call", pid, pending=True)
                        assert amount <= avail_before[key]
                        reservations.append((pid, amount))
                    else:
                        _, idx, kind, fraction = op
                        if not reservations:
                            continue
                        pid, amount = reservations[idx % len(reservations)]
                        posted = int(amount * fraction) if kind is TransferKind.POST else 0
                        done = await store.run(tx_ledger.resolve, pid, kind, posted, "call")
                        assert done == (pid not in resolved), "a reservation resolved twice"
                        resolved.add(pid)
                        if not done:
                            assert await store.read(_dump) == before
                except (LedgerError, Conflict) as exc:
                    assert await store.read(_dump) == before, f"refused {op} but changed the database"
                    if isinstance(exc, InsufficientFunds):
                        key = op[1]
                        src = None if op[0] == "move" else key
                        assert op[2] > avail_before[src]
                await store.read(_check_books)
        finally:
            await store.close()

    run(scenario())


def test_transfers_are_immutable(tmp_path: Path) -> None:
    """Once written, a transfer row can be neither updated nor deleted, even by direct SQL."""

    async def scenario() -> None:
        store = await _open_with_number(tmp_path / "x.db")
        try:
            await store.run(tx_admin.recharge, NUMBER, None, 1_000, "r")
            with pytest.raises(sqlite3.DatabaseError, match="immutable"):
                await store.run(lambda c: c.execute("UPDATE transfers SET amount = 1"))
            with pytest.raises(sqlite3.DatabaseError, match="immutable"):
                await store.run(lambda c: c.execute("DELETE FROM transfers"))
            rows = await store.read(lambda c: c.execute("SELECT amount FROM transfers").fetchall())
            assert [r[0] for r in rows] == [1_000]
        finally:
            await store.close()

    run(scenario())


def test_a_reservation_is_resolved_at_most_once(tmp_path: Path) -> None:
    """Post, void or expire after a reservation was already settled returns False and moves no money."""

    async def scenario() -> None:
        store = await _open_with_number(tmp_path / "x.db")
        try:
            ids = await store.read(_account_ids)
            await store.run(tx_admin.recharge, NUMBER, "1", 10_000, None)
            await store.run(tx_ledger.transfer, "p1", ids["1"], tx_ledger.REVENUE_ACCOUNT_ID, 6_000,
                            "call", "p1", pending=True)
            ext = await store.read(tx_ledger.load_account, ids["1"])
            assert (ext.balance, ext.reserved, ext.available) == (10_000, 6_000, 4_000)
            assert await store.run(tx_ledger.resolve, "p1", TransferKind.POST, 2_500, "call") is True
            ext = await store.read(tx_ledger.load_account, ids["1"])
            assert (ext.balance, ext.reserved, ext.available) == (7_500, 0, 7_500)
            before = await store.read(_dump)
            for kind, amount in ((TransferKind.POST, 2_500), (TransferKind.VOID, 0),
                                 (TransferKind.EXPIRE, 0), (TransferKind.POST, 6_000)):
                assert await store.run(tx_ledger.resolve, "p1", kind, amount, "call") is False
            assert await store.read(_dump) == before
            # a voided reservation releases everything, and is then also final
            await store.run(tx_ledger.transfer, "p2", ids["1"], tx_ledger.REVENUE_ACCOUNT_ID, 7_500,
                            "call", "p2", pending=True)
            assert await store.run(tx_ledger.resolve, "p2", TransferKind.VOID, 0, "call") is True
            assert await store.run(tx_ledger.resolve, "p2", TransferKind.POST, 7_500, "call") is False
            ext = await store.read(tx_ledger.load_account, ids["1"])
            assert (ext.balance, ext.reserved, ext.available) == (7_500, 0, 7_500)
            await store.read(_check_books)
        finally:
            await store.close()

    run(scenario())


def test_idempotent_repeat_changes_nothing_and_a_changed_repeat_is_a_conflict(tmp_path: Path) -> None:
    """The same recharge or move repeated with its ref is a no-op; the same ref with another amount is refused."""

    async def scenario() -> None:
        store = await _open_with_number(tmp_path / "x.db")
        try:
            first = await store.run(tx_admin.recharge, NUMBER, None, 5_000, "pay-1")
            assert first.created
            moved = await store.run(tx_admin.move, NUMBER, "2", 2_000, "mv-1")
            assert moved.created
            before = await store.read(_dump)
            again = await store.run(tx_admin.recharge, NUMBER, None, 5_000, "pay-1")
            assert not again.created
            assert not (await store.run(tx_admin.move, NUMBER, "2", 2_000, "mv-1")).created
            assert await store.read(_dump) == before
            for fn, args in ((tx_admin.recharge, (NUMBER, None, 5_001, "pay-1")),
                             (tx_admin.recharge, (NUMBER, "1", 5_000, "pay-1")),
                             (tx_admin.move, (NUMBER, "2", 1_999, "mv-1")),
                             (tx_admin.move, (NUMBER, "1", 2_000, "mv-1"))):
                with pytest.raises(Conflict):
                    await store.run(fn, *args)
                assert await store.read(_dump) == before
            doc = await store.read(tx_admin.balance, NUMBER)
            assert doc["main"]["balance"] == 3_000
            assert [e["balance"] for e in doc["extensions"]] == [0, 2_000]
        finally:
            await store.close()

    run(scenario())


@pytest.mark.parametrize("ext_money, expected_calls", [(10_000, 16), (599, 0), (600, 1)])
def test_parallel_reservations_never_overdraw_an_extension(tmp_path: Path, ext_money: int,
                                                           expected_calls: int) -> None:
    """50 calls routed at once to one extension reserve at most its balance; the rest hear arrears,
    even though the main account has plenty of money."""
    # 0.6/min, 60/60, calls capped at one minute: every granted call reserves exactly 0.600.
    plan = Tariff(per_minute=600, max_call_s=60)
    path = tmp_path / "x.db"

    async def scenario() -> None:
        setup = await _open_with_number(path, plan=plan, ext_billing=True)
        await setup.run(tx_admin.recharge, NUMBER, None, 1_000_000, None)
        await setup.run(tx_admin.recharge, NUMBER, "1", ext_money, None)
        # several connections, so the reservations really race through SQLite's locking
        stores = [setup] + [await SqliteStore.open(str(path)) for _ in range(4)]
        try:
            decisions = await asyncio.gather(*(
                stores[i % len(stores)].run(tx_calls.route, f"call-{i}", NUMBER, "1", 1,
                                            "13800000000", f"PJSIP/in-{i}", f"call-{i}")
                for i in range(50)))
            dials = [d for d in decisions if d.action == "dial"]
            assert len(dials) == expected_calls
            assert all(d.charged == "ext" and d.reserve == 600 for d in dials)
            assert all(d.prompt == "ext-in-arrears" for d in decisions if d.action != "dial")
            ids = await setup.read(_account_ids)
            ext = await setup.read(tx_ledger.load_account, ids["1"])
            assert ext.reserved == sum(d.reserve for d in dials) <= ext_money
            assert ext.available >= 0 and ext.balance == ext_money
            main = await setup.read(tx_ledger.load_account, ids[None])
            assert main.reserved == 0 and main.balance == 1_000_000
            await setup.read(_check_books)
        finally:
            for s in stores:
                await s.close()

    run(scenario())
