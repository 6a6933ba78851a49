"""Ledger transfers in SQL: load accounts, apply the pure rules of ledger.py, write back.

Every function here runs inside the caller's transaction (see sqlite.py).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence

import structlog

from fastagi.core.ledger import (
    Account,
    AccountKind,
    LedgerError,
    TransferKind,
    apply_pending,
    apply_pending_debit,
    apply_posted,
    apply_resolve,
)
from fastagi.core.money import format_amount
from fastagi.core.numbers import is_suspended
from fastagi.core.rating import Tariff, first_block_cost
from fastagi.runtime.clock import now_iso, now_ms
from fastagi.store import tx_outbox
from fastagi.store.base import Conflict, Contended, NotFound, TransferResult

log = structlog.get_logger("extbill.ledger")

FUNDING_ACCOUNT_ID = 1
REVENUE_ACCOUNT_ID = 2
# a plan's tariff columns in Tariff's order (tx_admin.TARIFF_COLS; that module imports this one)
_TARIFF_COLS = ("per_minute", "initial_s", "increment_s", "connect_fee", "grace_s", "max_call_s")


def new_account(conn: sqlite3.Connection, kind: AccountKind) -> int:
    account_id: int = conn.execute(
        "INSERT INTO accounts (kind) VALUES (?) RETURNING id", (kind.value,)
    ).fetchall()[0][0]
    return account_id


# An account's columns as account_at reads them; other modules join them into their reads
# (prefixed: account_cols("a")) so a call needs no statement of its own per account.
ACCOUNT_COLS = ("id", "kind", "debits_pending", "debits_posted", "credits_pending", "credits_posted")
_KINDS = {k.value: k for k in AccountKind}  # a dict lookup instead of an Enum call per account


def account_cols(alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in ACCOUNT_COLS)


def account_at(row: Sequence, i: int) -> Account | None:
    """The Account in row[i:i+6] (ACCOUNT_COLS order), or None when row[i] is NULL (no such row)."""
    if row[i] is None:
        return None
    kind = row[i + 1]
    return Account(
        row[i],
        _KINDS[kind] if kind in _KINDS else AccountKind(kind),
        row[i + 2],
        row[i + 3],
        row[i + 4],
        row[i + 5],
    )


_ACCOUNT_BY_ID_SQL = f"SELECT {', '.join(ACCOUNT_COLS)} FROM accounts WHERE id = ?"


def load_account(conn: sqlite3.Connection, account_id: int) -> Account:
    row = conn.execute(_ACCOUNT_BY_ID_SQL, (account_id,)).fetchone()
    if row is None:
        raise NotFound(f"account {account_id} does not exist")
    return account_at(row, 0)  # type: ignore[return-value]


# An account's counters change by increments, never by writing back what was read: on
# PostgreSQL (READ COMMITTED) another transaction may have changed the row since this one
# read it, and an increment loses no update. The guard re-checks the no-overdraw rule on
# the row as it is now (PostgreSQL re-evaluates it after waiting for the row's lock), and
# RETURNING gives the account as written, for what follows (suspension, balance.low). Both
# are PostgreSQL's only (/*pg*/): on SQLite (one writer at a time) the read is current, the
# account computed from it is the account written, and the schema's CHECK is the second check.
_APPLY_SQL = (
    "UPDATE accounts SET debits_pending = debits_pending + :dp, debits_posted = debits_posted + :dpo, "
    "credits_pending = credits_pending + :cp, credits_posted = credits_posted + :cpo, "
    "spent = spent + :sp WHERE id = :id "
    "/*pg AND (kind NOT IN ('main', 'ext') OR debits_pending + debits_posted + :dp + :dpo <= "
    f"credits_posted + :cpo) RETURNING {', '.join(ACCOUNT_COLS)}*/"
)


def _apply(conn: sqlite3.Connection, old: Account, new: Account, spent: int = 0) -> Account:
    """Write new - old to the account's row; the account as written (Contended: it cannot pay).

    spent: what a call post adds to the account's kept spend (accounts.spent)."""
    cur = conn.execute(
        _APPLY_SQL,
        {
            "dp": new.debits_pending - old.debits_pending,
            "dpo": new.debits_posted - old.debits_posted,
            "cp": new.credits_pending - old.credits_pending,
            "cpo": new.credits_posted - old.credits_posted,
            "sp": spent,
            "id": old.id,
        },
    )
    if cur.description is None:  # SQLite: no guard nor RETURNING needed (see above)
        if cur.rowcount != 1:
            raise NotFound(f"account {old.id} does not exist")
        return new
    row = cur.fetchone()
    if row is None:
        raise Contended(f"account {old.id} changed since it was read")
    return account_at(row, 0)  # type: ignore[return-value]


def lock_order(account: Account) -> tuple[bool, int]:
    """The order in which a transaction writes (so locks) accounts: customer accounts by id,
    then the house's (funding, revenue). One order everywhere, so two transactions never
    wait for each other in a cycle; the house accounts last because every call writes
    revenue, so each transaction holds its lock for the shortest time."""
    return (account.id <= REVENUE_ACCOUNT_ID, account.id)


def _apply_pair(
    conn: sqlite3.Connection,
    debit: tuple[Account, Account],
    credit: tuple[Account, Account],
    spent: int = 0,
) -> tuple[Account, Account]:
    """_apply to both sides of a transfer in lock order; the new (debit, credit). `spent`
    goes to the debit side's kept spend."""
    if lock_order(debit[0]) < lock_order(credit[0]):
        new_debit = _apply(conn, *debit, spent)
        return new_debit, _apply(conn, *credit)
    new_credit = _apply(conn, *credit)
    return _apply(conn, *debit, spent), new_credit


def _existing(conn: sqlite3.Connection, transfer_id: str) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT id, kind, debit_account_id, credit_account_id, amount, pending_id, code "
        "FROM transfers WHERE id = ?",
        (transfer_id,),
    ).fetchone()


def _insert(
    conn: sqlite3.Connection,
    transfer_id: str,
    kind: TransferKind,
    debit_id: int,
    credit_id: int,
    amount: int,
    code: str,
    ref: str | None,
    pending_id: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount, pending_id, "
        "code, ref, created_ms) VALUES (?,?,?,?,?,?,?,?,?)",
        (transfer_id, kind.value, debit_id, credit_id, amount, pending_id, code, ref, now_ms()),
    )


def transfer(
    conn: sqlite3.Connection,
    transfer_id: str,
    debit_id: int,
    credit_id: int,
    amount: int,
    code: str,
    ref: str | None,
    *,
    pending: bool = False,
) -> TransferResult:
    """A posted or pending transfer, idempotent by id: a repeat with the same fields is a no-op."""
    kind = TransferKind.PENDING if pending else TransferKind.POSTED
    row = _existing(conn, transfer_id)
    if row is not None:
        same = (
            row["kind"],
            row["debit_account_id"],
            row["credit_account_id"],
            row["amount"],
            row["code"],
        ) == (kind.value, debit_id, credit_id, amount, code)
        if not same:
            raise Conflict(
                f"reference {ref or transfer_id!r} was already used for a different "
                f"{row['code']} of {format_amount(row['amount'])}"
            )
        return TransferResult(transfer_id, created=False, amount=amount)
    debit, credit = load_account(conn, debit_id), load_account(conn, credit_id)
    apply = apply_pending if pending else apply_posted
    new_debit, new_credit = apply(debit, credit, amount)  # raises LedgerError, nothing written
    _insert(conn, transfer_id, kind, debit_id, credit_id, amount, code, ref)
    new_debit, new_credit = _apply_pair(conn, (debit, new_debit), (credit, new_credit))
    if not pending:  # a reservation moves no posted money, so it cannot change suspension
        for acc in (new_debit, new_credit):
            if acc.kind is AccountKind.MAIN:
                update_suspension(conn, acc, reason=code)
    return TransferResult(transfer_id, created=True, amount=amount)


def reserve(
    conn: sqlite3.Connection,
    transfer_id: str,
    debit: Account,
    credit_id: int,
    amount: int,
    code: str,
    ref: str | None,
) -> TransferResult:
    """A new reservation (pending transfer) from an account already read in this transaction.

    transfer(..., pending=True) for call setup, minus three reads: `debit` is the account
    as call setup read it for its decision, and `transfer_id` is new - the caller has just
    found no call holding it; should it exist after all, the UNIQUE id makes the INSERT
    fail and the transaction rolls back. The credit side needs no read: no rule looks at a
    credited account's counters.
    """
    new_debit = apply_pending_debit(debit, credit_id, amount)  # raises LedgerError, nothing written
    # The conditional increment of _apply: on PostgreSQL another call may have reserved from
    # this account since it was read; it still cannot overdraw (Contended: run again).
    # The debit side first: customer accounts come before the house's (lock_order).
    _apply(conn, debit, new_debit)
    if (
        conn.execute(
            "UPDATE accounts SET credits_pending = credits_pending + ? WHERE id=?", (amount, credit_id)
        ).rowcount
        != 1
    ):
        raise NotFound(f"account {credit_id} does not exist")
    _insert(conn, transfer_id, TransferKind.PENDING, debit.id, credit_id, amount, code, ref)
    # a reservation moves no posted money, so it cannot change suspension
    return TransferResult(transfer_id, created=True, amount=amount)


# The reservation, whether it is already resolved, and both of its accounts: one read.
_RESOLVE_SQL = (
    "SELECT p.kind, p.amount, p.debit_account_id, p.credit_account_id, "
    "EXISTS (SELECT 1 FROM transfers WHERE pending_id = p.id), "
    f"{account_cols('d')}, {account_cols('c')} FROM transfers p "
    "LEFT JOIN accounts d ON d.id = p.debit_account_id "
    "LEFT JOIN accounts c ON c.id = p.credit_account_id WHERE p.id = ?"
)


def resolve(
    conn: sqlite3.Connection, pending_id: str, kind: TransferKind, posted_amount: int, code: str
) -> bool:
    """Post part of a reservation (releasing the rest), or void or expire it.

    Returns False when the reservation was already resolved (by any kind): exactly once.
    """
    pend = conn.execute(_RESOLVE_SQL, (pending_id,)).fetchone()
    if pend is None or pend[0] != TransferKind.PENDING.value:
        raise NotFound(f"no reservation {pending_id}")
    if pend[4]:
        return False
    if kind is not TransferKind.POST and posted_amount:
        raise LedgerError("void and expire post nothing")
    debit, credit = account_at(pend, 5), account_at(pend, 11)
    if debit is None:
        raise NotFound(f"account {pend[2]} does not exist")
    if credit is None:
        raise NotFound(f"account {pend[3]} does not exist")
    new_debit, new_credit = apply_resolve(debit, credit, pend[1], posted_amount)
    _insert(
        conn,
        f"{pending_id}:{kind.value}",
        kind,
        debit.id,
        credit.id,
        posted_amount,
        code,
        None,
        pending_id=pending_id,
    )
    # the kept spend (accounts.spent) moves with the post, in this transaction
    spent = posted_amount if kind is TransferKind.POST else 0
    new_debit, new_credit = _apply_pair(conn, (debit, new_debit), (credit, new_credit), spent)
    if new_debit.kind is AccountKind.MAIN and posted_amount:
        update_suspension(conn, new_debit, reason=code)
    return True


# The number of a main account, with what its suspension and its balance.low need.
_SUSPENSION_SQL = (
    "SELECT n.id, n.number, n.min_balance, n.suspended, n.owed, n.low_balance, n.low_flag, "
    f"p.id AS plan_id, {', '.join('p.' + c for c in _TARIFF_COLS)} "
    "FROM numbers n LEFT JOIN plans p ON p.id = n.plan_id WHERE "
)


def update_suspension(
    conn: sqlite3.Connection, main: Account, *, reason: str, number_id: int | None = None
) -> bool | None:
    """Recompute a number's suspension from its main balance and what it owes; record, log
    and notify any change; notify balance.low once per crossing of main's threshold."""
    if number_id is None:
        row = conn.execute(_SUSPENSION_SQL + "n.account_id=?", (main.id,)).fetchone()
    else:
        row = conn.execute(_SUSPENSION_SQL + "n.id=?", (number_id,)).fetchone()
    if row is None:
        return None
    now = is_suspended(main.balance, row["min_balance"], row["owed"])
    if now != bool(row["suspended"]):
        conn.execute("UPDATE numbers SET suspended=? WHERE id=?", (int(now), row["id"]))
        conn.execute(
            "INSERT INTO suspension_events (number_id, suspended, balance, min_balance, reason, at) "
            "VALUES (?,?,?,?,?,?)",
            (row["id"], int(now), main.balance, row["min_balance"], reason, now_iso()),
        )
        log.info(
            "number.suspended" if now else "number.resumed",
            number=row["number"],
            balance=main.balance,
            min_balance=row["min_balance"],
            owed=row["owed"],
            reason=reason,
        )
        tx_outbox.suspension(conn, row["number"], now, main.balance, row["min_balance"], row["owed"], reason)
    if not row["owed"]:  # while it owes, number.suspended says it all (and money in is collected)
        _main_low_balance(conn, row, main, notify=reason != "created")
    return now


@functools.lru_cache(maxsize=256)
def _default_threshold(tariff: tuple[int, ...]) -> int:
    """Ten first blocks at a base tariff (as an extension's default), once per distinct tariff."""
    return 10 * first_block_cost(Tariff(*tariff))


def _main_low_balance(conn: sqlite3.Connection, row: sqlite3.Row, main: Account, *, notify: bool) -> None:
    """balance.low of a main account, once per crossing: a flag set going down, cleared going up.

    Called on every posted change of main, so the flag follows the balance both ways.
    Threshold: the number's low_balance, else ten first blocks at its plan's base tariff.
    """
    if row["low_balance"] is not None:
        threshold = row["low_balance"]
    elif row["plan_id"] is not None:
        threshold = _default_threshold(tuple(row[c] for c in _TARIFF_COLS))
    else:
        threshold = 0
    below = main.available < threshold
    if below == bool(row["low_flag"]):
        return
    conn.execute("UPDATE numbers SET low_flag=? WHERE id=?", (int(below), row["id"]))
    if below and notify:  # a new number starts below without a notification
        log.info("balance.low", number=row["number"], account="main", available=main.available)
        tx_outbox.balance_low(conn, row["number"], None, main.available, threshold)


def all_accounts(conn: sqlite3.Connection) -> list[Account]:
    return [
        account_at(r, 0)  # type: ignore[misc]  # never None: every column is there
        for r in conn.execute(f"SELECT {', '.join(ACCOUNT_COLS)} FROM accounts")
    ]
