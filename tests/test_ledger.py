"""The ledger: double entry, no overdraw, two-phase reservations; pure rules and the real stores
(SQLite and PostgreSQL: the `db` fixture, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, rule

from fastagi.core.ledger import (
    Account,
    AccountKind,
    InsufficientFunds,
    InvalidTransfer,
    LedgerError,
    TransferKind,
    apply_pending,
    apply_pending_debit,
    apply_posted,
    apply_resolve,
    invariant_holds,
)
from fastagi.core.rating import Tariff
from fastagi.core.records import CallFacts
from fastagi.store import tx_admin, tx_calls, tx_ledger
from fastagi.store.base import Conflict, Contended, NotFound
from fastagi.store.factory import open_store

# =============================== the pure rules ==============================================

FUNDING, REVENUE, MAIN, EXT1, EXT2 = range(5)
GUARDED = (MAIN, EXT1, EXT2)
amounts = st.integers(min_value=-5, max_value=5_000)


class PureLedger(RuleBasedStateMachine):
    """Random recharge / move / reserve / post / void / expire over five accounts, against a model."""

    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        kinds = [AccountKind.FUNDING, AccountKind.REVENUE, AccountKind.MAIN, AccountKind.EXT, AccountKind.EXT]
        self.acc = [Account(i, k) for i, k in enumerate(kinds)]
        self.posted = [0] * 5  # the model: posted balance per account
        self.held = [0] * 5  # the model: money held by open reservations per account

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
    overdrawn = [
        Account(0, AccountKind.FUNDING, credits_posted=5),
        Account(1, AccountKind.MAIN, debits_posted=5),
    ]
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


accounts_st = st.builds(
    Account,
    st.integers(1, 3),
    st.sampled_from(list(AccountKind)),
    st.integers(0, 1_000),
    st.integers(0, 1_000),
    st.integers(0, 1_000),
    st.integers(0, 2_000),
)


@given(debit=accounts_st, credit=accounts_st, amount=st.one_of(st.integers(-5, 3_000), st.just(True)))
def test_pending_debit_side_alone_is_apply_pending(debit: Account, credit: Account, amount: int) -> None:
    """apply_pending_debit (call setup's reservation) refuses exactly what apply_pending refuses and
    changes the debit exactly as it does; apply_pending's credit side only adds to credits_pending."""
    try:
        new_debit, new_credit = apply_pending(debit, credit, amount)
    except LedgerError as exc:
        with pytest.raises(type(exc), match=str(exc)):
            apply_pending_debit(debit, credit.id, amount)
        return
    assert apply_pending_debit(debit, credit.id, amount) == new_debit
    assert new_credit == Account(
        credit.id,
        credit.kind,
        credit.debits_pending,
        credit.debits_posted,
        credit.credits_pending + amount,
        credit.credits_posted,
    )


# =============================== the real SQLite store =======================================

NUMBER = "4008001234"
KEYS = ("1", "2")


def run(coro):
    return asyncio.run(coro)


async def _open_with_number(db: str, *, plan: Tariff | None = None, ext_billing: bool = False) -> Any:
    store = await open_store(db)
    await store.run(tx_admin.add_plan, "std", plan or Tariff(per_minute=600))
    await store.run(tx_admin.add_number, NUMBER, "HQ", "std", 0, "zh", "PJSIP/100", 5)
    for k in KEYS:
        await store.run(tx_admin.add_extension, NUMBER, k, f"branch {k}", f"PJSIP/20{k}", None)
    if ext_billing:
        await store.run(tx_admin.set_number, NUMBER, ext_billing=True)
    return store


DUMPED_TABLES = ("accounts", "transfers", "numbers", "extensions", "calls", "suspension_events", "outbox")


def _dump(conn: sqlite3.Connection) -> list[tuple]:
    """Every row of the ledger's tables (both engines): what "changed nothing" compares."""
    return [(t, *r) for t in DUMPED_TABLES for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()]


def _accounts(conn: sqlite3.Connection) -> list[Account]:
    return tx_ledger.all_accounts(conn)


def _account_ids(conn: sqlite3.Connection) -> dict[str | None, int]:
    ids: dict[str | None, int] = {
        None: conn.execute("SELECT account_id FROM numbers WHERE number=?", (NUMBER,)).fetchone()[0]
    }
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
    st.tuples(
        st.just("resolve"),
        st.integers(0, 20),
        st.sampled_from([TransferKind.POST, TransferKind.VOID, TransferKind.EXPIRE]),
        st.floats(0, 1),
    ),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(store_ops, min_size=1, max_size=25))
def test_random_sequences_on_the_real_store_keep_the_books(
    new_db: Callable[[], str], ops: list[tuple]
) -> None:
    """Any sequence of recharges, moves, reservations and settlements keeps the total zero and no
    customer account negative; a refused operation leaves the database byte-for-byte unchanged."""

    async def scenario() -> None:
        store = await _open_with_number(new_db())
        try:
            ids = await store.read(_account_ids)
            reservations: list[tuple[str, int]] = []  # (pending id, amount)
            resolved: set[str] = set()
            for n, op in enumerate(ops):
                before = await store.read(_dump)
                avail_before = await store.read(
                    lambda c: {k: tx_ledger.load_account(c, i).available for k, i in ids.items()}
                )
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
                        if n % 2:  # call setup's path: the account read in the same transaction
                            await store.run(
                                lambda c: tx_ledger.reserve(
                                    c,
                                    pid,
                                    tx_ledger.load_account(c, ids[key]),
                                    tx_ledger.REVENUE_ACCOUNT_ID,
                                    amount,
                                    "call",
                                    pid,
                                )
                            )
                        else:
                            await store.run(
                                tx_ledger.transfer,
                                pid,
                                ids[key],
                                tx_ledger.REVENUE_ACCOUNT_ID,
                                amount,
                                "call",
                                pid,
                                pending=True,
                            )
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


def test_transfers_are_immutable(db: str) -> None:
    """Once written, a transfer row can be neither updated nor deleted, even by direct SQL."""

    async def scenario() -> None:
        store = await _open_with_number(db)
        try:
            await store.run(tx_admin.recharge, NUMBER, None, 1_000, "r")
            with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="immutable"):
                await store.run(lambda c: c.execute("UPDATE transfers SET amount = 1"))
            with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="immutable"):
                await store.run(lambda c: c.execute("DELETE FROM transfers"))
            rows = await store.read(lambda c: c.execute("SELECT amount FROM transfers").fetchall())
            assert [r[0] for r in rows] == [1_000]
        finally:
            await store.close()

    run(scenario())


def test_a_reservation_is_resolved_at_most_once(db: str) -> None:
    """Post, void or expire after a reservation was already settled returns False and moves no money."""

    async def scenario() -> None:
        store = await _open_with_number(db)
        try:
            ids = await store.read(_account_ids)
            await store.run(tx_admin.recharge, NUMBER, "1", 10_000, None)
            await store.run(
                tx_ledger.transfer,
                "p1",
                ids["1"],
                tx_ledger.REVENUE_ACCOUNT_ID,
                6_000,
                "call",
                "p1",
                pending=True,
            )
            ext = await store.read(tx_ledger.load_account, ids["1"])
            assert (ext.balance, ext.reserved, ext.available) == (10_000, 6_000, 4_000)
            assert await store.run(tx_ledger.resolve, "p1", TransferKind.POST, 2_500, "call") is True
            ext = await store.read(tx_ledger.load_account, ids["1"])
            assert (ext.balance, ext.reserved, ext.available) == (7_500, 0, 7_500)
            before = await store.read(_dump)
            for kind, amount in (
                (TransferKind.POST, 2_500),
                (TransferKind.VOID, 0),
                (TransferKind.EXPIRE, 0),
                (TransferKind.POST, 6_000),
            ):
                assert await store.run(tx_ledger.resolve, "p1", kind, amount, "call") is False
            assert await store.read(_dump) == before
            # a voided reservation releases everything, and is then also final
            await store.run(
                tx_ledger.transfer,
                "p2",
                ids["1"],
                tx_ledger.REVENUE_ACCOUNT_ID,
                7_500,
                "call",
                "p2",
                pending=True,
            )
            assert await store.run(tx_ledger.resolve, "p2", TransferKind.VOID, 0, "call") is True
            assert await store.run(tx_ledger.resolve, "p2", TransferKind.POST, 7_500, "call") is False
            ext = await store.read(tx_ledger.load_account, ids["1"])
            assert (ext.balance, ext.reserved, ext.available) == (7_500, 0, 7_500)
            await store.read(_check_books)
        finally:
            await store.close()

    run(scenario())


def test_idempotent_repeat_changes_nothing_and_a_changed_repeat_is_a_conflict(db: str) -> None:
    """The same recharge or move repeated with its ref is a no-op; the same ref with another amount is refused."""

    async def scenario() -> None:
        store = await _open_with_number(db)
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
            for fn, args in (
                (tx_admin.recharge, (NUMBER, None, 5_001, "pay-1")),
                (tx_admin.recharge, (NUMBER, "1", 5_000, "pay-1")),
                (tx_admin.move, (NUMBER, "2", 1_999, "mv-1")),
                (tx_admin.move, (NUMBER, "1", 2_000, "mv-1")),
            ):
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
def test_parallel_reservations_never_overdraw_an_extension(
    db: str, ext_money: int, expected_calls: int
) -> None:
    """50 calls routed at once to one extension reserve at most its balance; the rest hear arrears,
    even though the main account has plenty of money."""
    # 0.6/min, 60/60, calls capped at one minute: every granted call reserves exactly 0.600.
    plan = Tariff(per_minute=600, max_call_s=60)

    async def scenario() -> None:
        setup = await _open_with_number(db, plan=plan, ext_billing=True)
        await setup.run(tx_admin.recharge, NUMBER, None, 1_000_000, None)
        await setup.run(tx_admin.recharge, NUMBER, "1", ext_money, None)
        # several connections, so the reservations really race through the database's locking
        stores = [setup] + [await open_store(db) for _ in range(4)]
        try:
            decisions = await asyncio.gather(
                *(
                    stores[i % len(stores)].run(
                        tx_calls.route,
                        f"call-{i}",
                        NUMBER,
                        "1",
                        1,
                        "13800000000",
                        f"PJSIP/in-{i}",
                        f"call-{i}",
                    )
                    for i in range(50)
                )
            )
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


# ---- call setup's fast paths: the same effects with fewer statements ---------------------------


def test_reserve_has_the_effect_of_a_pending_transfer(db: str) -> None:
    """tx_ledger.reserve (call setup) writes the same transfer row and counters as transfer(pending=True);
    an amount over what is available, or a reused id, is refused and changes nothing."""

    async def scenario() -> None:
        store = await _open_with_number(db)
        try:
            ids = await store.read(_account_ids)
            await store.run(tx_admin.recharge, NUMBER, "1", 10_000, None)
            await store.run(tx_admin.recharge, NUMBER, "2", 10_000, None)
            rev = tx_ledger.REVENUE_ACCOUNT_ID
            await store.run(tx_ledger.transfer, "a", ids["1"], rev, 4_000, "call", "ra", pending=True)
            await store.run(
                lambda c: tx_ledger.reserve(
                    c, "b", tx_ledger.load_account(c, ids["2"]), rev, 4_000, "call", "rb"
                )
            )
            e1, e2, r = [await store.read(tx_ledger.load_account, i) for i in (ids["1"], ids["2"], rev)]
            assert (
                (e1.debits_pending, e1.debits_posted, e1.credits_posted)
                == (e2.debits_pending, e2.debits_posted, e2.credits_posted)
                == (4_000, 0, 10_000)
            )
            assert r.credits_pending == 8_000
            rows = await store.read(
                lambda c: c.execute(
                    "SELECT id, kind, credit_account_id, amount, pending_id, code FROM transfers "
                    "WHERE id IN ('a', 'b') ORDER BY id"
                ).fetchall()
            )
            assert [tuple(x) for x in rows] == [
                ("a", "pending", rev, 4_000, None, "call"),
                ("b", "pending", rev, 4_000, None, "call"),
            ]
            await store.read(_check_books)
            before = await store.read(_dump)
            with pytest.raises(InsufficientFunds):
                await store.run(
                    lambda c: tx_ledger.reserve(
                        c, "c", tx_ledger.load_account(c, ids["2"]), rev, 6_001, "call", "rc"
                    )
                )
            with pytest.raises(
                (sqlite3.IntegrityError, psycopg.IntegrityError)
            ):  # the UNIQUE id guards a reused id
                await store.run(
                    lambda c: tx_ledger.reserve(
                        c, "b", tx_ledger.load_account(c, ids["2"]), rev, 1, "call", "rb"
                    )
                )
            with pytest.raises(NotFound):
                await store.run(
                    lambda c: tx_ledger.reserve(
                        c, "d", tx_ledger.load_account(c, ids["2"]), 999, 1, "call", "rd"
                    )
                )
            with pytest.raises(InvalidTransfer):
                await store.run(
                    lambda c: tx_ledger.reserve(
                        c, "e", tx_ledger.load_account(c, ids["2"]), ids["2"], 1, "call", "re"
                    )
                )
            # A stale read never overwrites newer counters: the reservation adds to what the row
            # holds now, and is refused when that can no longer pay (PostgreSQL: the guarded
            # update finds the account changed; SQLite: the schema's no-overdraw CHECK).
            stale = await store.read(tx_ledger.load_account, ids["2"])
            await store.run(tx_admin.recharge, NUMBER, "2", 1, None)
            await store.run(tx_ledger.reserve, "f", stale, rev, 1, "call", "rf")
            e2 = await store.read(tx_ledger.load_account, ids["2"])
            assert (e2.balance, e2.reserved) == (10_001, 4_001)
            await store.run(tx_ledger.transfer, "g", ids["2"], rev, 6_000, "call", "rg", pending=True)
            after_recharge = await store.read(_dump)
            with pytest.raises((Contended, sqlite3.IntegrityError), match="changed since|CHECK constraint"):
                await store.run(tx_ledger.reserve, "h", stale, rev, 1_000, "call", "rh")
            assert await store.read(_dump) == after_recharge
            before = after_recharge
            assert await store.read(_dump) == before
        finally:
            await store.close()

    run(scenario())


def test_resolve_refuses_what_is_not_a_reservation(db: str) -> None:
    """resolve (one read for the reservation, its resolution and both accounts) refuses an unknown id
    and a posted transfer, and refuses to post money through a void."""

    async def scenario() -> None:
        store = await _open_with_number(db)
        try:
            ids = await store.read(_account_ids)
            await store.run(tx_admin.recharge, NUMBER, "1", 10_000, "r1")
            await store.run(
                tx_ledger.transfer,
                "p",
                ids["1"],
                tx_ledger.REVENUE_ACCOUNT_ID,
                1_000,
                "call",
                "p",
                pending=True,
            )
            before = await store.read(_dump)
            with pytest.raises(NotFound):
                await store.run(tx_ledger.resolve, "nope", TransferKind.POST, 0, "call")
            with pytest.raises(NotFound):
                await store.run(tx_ledger.resolve, "ref:r1", TransferKind.VOID, 0, "call")
            with pytest.raises(LedgerError):
                await store.run(tx_ledger.resolve, "p", TransferKind.VOID, 1, "call")
            with pytest.raises(InvalidTransfer):
                await store.run(tx_ledger.resolve, "p", TransferKind.POST, 1_001, "call")
            assert await store.read(_dump) == before
        finally:
            await store.close()

    run(scenario())


def _reference_views(conn: sqlite3.Connection, number: str, key: str) -> tuple[object, ...]:
    """What call setup's views hold, read the plain way: one row at a time."""
    from fastagi.core.calls import PlanView  # noqa: PLC0415

    def plan(pid: int | None) -> PlanView | None:
        if pid is None:
            return None
        r = conn.execute(
            "SELECT per_minute, initial_s, increment_s, connect_fee, grace_s, max_call_s "
            "FROM plans WHERE id=?",
            (pid,),
        ).fetchone()
        rates = dict(
            conn.execute("SELECT prefix, per_minute FROM plan_rates WHERE plan_id=?", (pid,)).fetchall()
        )
        return PlanView(Tariff(*r), rates)

    n = conn.execute("SELECT * FROM numbers WHERE number=?", (number,)).fetchone()
    if n is None:
        return (None,)
    keys = [k for (k,) in conn.execute("SELECT key FROM extensions WHERE number_id=?", (n["id"],))]
    e = conn.execute("SELECT * FROM extensions WHERE number_id=? AND key=?", (n["id"], key)).fetchone()
    ext = (
        None
        if e is None or not key
        else (e["id"], e["key"], e["dest"], tx_ledger.load_account(conn, e["account_id"]), plan(e["plan_id"]))
    )
    return (
        (
            n["id"],
            n["number"],
            n["lang"],
            bool(n["ivr"]),
            bool(n["ext_billing"]),
            n["min_balance"],
            n["default_dest"],
            n["digit_timeout_s"],
            tx_ledger.load_account(conn, n["account_id"]),
            plan(n["plan_id"]),
        ),
        max((len(k) for k in keys), default=None),
        ext,
    )


def _ext_view(conn: sqlite3.Connection, number_id: int, key: str) -> tx_admin.ExtView | None:
    """One extension by its own statement: what route_views' join must read."""
    row = conn.execute(
        f"SELECT {tx_admin._EXT_COLS} FROM extensions e {tx_admin._EXT_JOINS} "
        "WHERE e.number_id = ? AND e.key = ?",
        (number_id, key),
    ).fetchone()
    return None if row is None else tx_admin._ext_at(row, 0)


def _views(conn: sqlite3.Connection, number: str, key: str) -> tuple[object, ...]:
    nv = tx_admin.number_view(conn, number)
    rnv, ev = tx_admin.route_views(conn, number, key)
    if nv is None:
        assert rnv is None and ev is None
        return (None,)
    assert rnv is not None and rnv.max_key_len is None
    # route_views reads the same number as number_view, and the same extension as _ext_view
    assert rnv == tx_admin.NumberView(**{**{f: getattr(nv, f) for f in nv.__slots__}, "max_key_len": None})
    if key:
        assert ev == _ext_view(conn, nv.number_id, key)
    else:
        assert ev is None
    ext = None if ev is None else (ev.extension_id, ev.key, ev.dest, ev.account, ev.plan)
    return (
        (
            nv.number_id,
            nv.number,
            nv.lang,
            nv.ivr,
            nv.ext_billing,
            nv.min_balance,
            nv.default_dest,
            nv.digit_timeout_s,
            nv.main,
            nv.plan,
        ),
        nv.max_key_len,
        ext,
    )


def test_call_setup_views_read_what_the_rows_hold(db: str) -> None:
    """number_view / route_views (one joined statement each) hold exactly what the rows say, and a
    change made through another connection (the `extbill` CLI) shows in the very next read."""

    async def scenario() -> None:
        store = await _open_with_number(
            db, plan=Tariff(per_minute=600, initial_s=30, increment_s=6), ext_billing=True
        )
        cli = await open_store(db)  # another process, as far as caching goes
        try:
            await store.run(tx_admin.add_plan, "own", Tariff(per_minute=900, connect_fee=100))
            await store.run(tx_admin.add_number, "4008005678", "Bare", None, 0, "en", None, 9)
            await store.run(tx_admin.add_extension, NUMBER, "345", "deep", "PJSIP/345", "own")
            await store.run(tx_admin.recharge, NUMBER, None, 70_000, None)
            await store.run(tx_admin.recharge, NUMBER, "345", 5_000, None)

            async def check() -> None:
                for number in (NUMBER, "4008005678", "4009999999"):
                    for key in ("", "1", "345", "9", "34"):
                        got = await store.read(_views, number, key)
                        assert got == await store.read(_reference_views, number, key), (number, key)

            await check()
            await cli.run(tx_admin.set_plan_rate, "std", "00", 3_000)
            await cli.run(tx_admin.set_plan_rate, "own", "0086", 700)
            await check()
            nv = await store.read(tx_admin.number_view, NUMBER)
            assert dict(nv.plan.rates) == {"00": 3_000} and nv.max_key_len == 3
            await cli.run(tx_admin.set_plan_rate, "std", "00", 2_500)
            await cli.run(tx_admin.set_plan_rate, "std", "", 650)
            await cli.run(tx_admin.set_number, NUMBER, min_balance=80_000)
            await check()
            nv = await store.read(tx_admin.number_view, NUMBER)
            assert dict(nv.plan.rates) == {"00": 2_500} and nv.plan.tariff.per_minute == 650
            assert nv.suspended
            bare = await store.read(tx_admin.number_view, "4008005678")
            assert bare.plan is None and bare.max_key_len is None
        finally:
            await cli.close()
            await store.close()

    run(scenario())


@pytest.mark.parametrize(
    "own_plan, low_balance, threshold",
    [
        (None, None, 10 * 600),  # the number's plan: 10 first blocks of 60 s at 0.6/min
        ("own", None, 10 * (100 + 450)),  # the extension's own plan: 30 s at 0.9/min + 0.1 connect fee
        ("own", 9_000, 9_000),  # configured: the plan is not asked
        (None, 1_000, 1_000),  # configured and still above it: no warning
    ],
)
def test_balance_low_threshold_follows_the_extensions_plan(
    db: str, own_plan: str | None, low_balance: int | None, threshold: int
) -> None:
    """Settling an extension's call reports balance.low against its own plan's first blocks, else its
    number's, unless a threshold is configured."""

    async def scenario() -> None:
        store = await _open_with_number(db, ext_billing=True)
        try:
            await store.run(tx_admin.add_plan, "own", Tariff(per_minute=900, initial_s=30, connect_fee=100))
            await store.run(tx_admin.recharge, NUMBER, None, 100_000, None)
            await store.run(tx_admin.recharge, NUMBER, "1", 10_000, None)
            if own_plan or low_balance:
                await store.run(tx_admin.set_extension, NUMBER, "1", plan=own_plan, low_balance=low_balance)
            d = await store.run(tx_calls.route, "b1", NUMBER, "1", 1, "13800000000", None, None)
            assert d.action == "dial" and d.charged == "ext"
            res = await store.run(
                tx_calls.settle,
                CallFacts(
                    "b1",
                    True,
                    8 * 60_000,
                    "2026-01-01T00:00:00.000Z",
                    "2026-01-01T00:08:00.000Z",
                    "ANSWER",
                    "16",
                    "hangup",
                ),
            )
            available = 10_000 - res.cost
            assert (available < threshold) == (low_balance != 1_000)
            if available < threshold:
                assert res.low_balance == {
                    "number": NUMBER,
                    "ext": "1",
                    "available": available,
                    "threshold": threshold,
                }
            else:
                assert res.low_balance is None
            flag = await store.read(
                lambda c: c.execute("SELECT low_flag FROM extensions WHERE key='1'").fetchone()[0]
            )
            assert flag == int(available < threshold)
        finally:
            await store.close()

    run(scenario())
