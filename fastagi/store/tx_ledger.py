"""Ledger transfers in SQL: load accounts, apply the pure rules of ledger.py, write back.

Every function here runs inside the caller's transaction (see sqlite.py).
"""
from __future__ import annotations

import sqlite3

import structlog

from ..clock import now_iso
from ..ledger import (Account, AccountKind, LedgerError, TransferKind, apply_pending,
                      apply_posted, apply_resolve)
from ..money import format_amount
from ..numbers import is_suspended
from .base import Conflict, NotFound, TransferResult

log = structlog.get_logger("extbill.ledger")

FUNDING_ACCOUNT_ID = 1
REVENUE_ACCOUNT_ID = 2


def new_account(conn: sqlite3.Connection, kind: AccountKind) -> int:
    return conn.execute("INSERT INTO accounts (kind) VALUES (?)", (kind.value,)).lastrowid


def load_account(conn: sqlite3.Connection, account_id: int) -> Account:
    row = conn.execute(
        "SELECT id, kind, debits_pending, debits_posted, credits_pending, credits_posted "
        "FROM accounts WHERE id = ?", (account_id,)).fetchone()
    if row is None:
        raise NotFound(f"account {account_id} does not exist")
    return Account(row[0], AccountKind(row[1]), row[2], row[3], row[4], row[5])


def _save(conn: sqlite3.Connection, a: Account) -> None:
    conn.execute(
        "UPDATE accounts SET debits_pending=?, debits_posted=?, credits_pending=?, credits_posted=? "
        "WHERE id=?", (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, a.id))


def _existing(conn: sqlite3.Connection, transfer_id: str) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT id, kind, debit_account_id, credit_account_id, amount, pending_id, code "
        "FROM transfers WHERE id = ?", (transfer_id,)).fetchone()


def _insert(conn: sqlite3.Connection, transfer_id: str, kind: TransferKind, debit_id: int,
            credit_id: int, amount: int, code: str, ref: str | None,
            pending_id: str | None = None) -> None:
    conn.execute(
        "INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount, pending_id, "
        "code, ref, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
        (transfer_id, kind.value, debit_id, credit_id, amount, pending_id, code, ref, now_iso()))


def transfer(conn: sqlite3.Connection, transfer_id: str, debit_id: int, credit_id: int,
             amount: int, code: str, ref: str | None, *, pending: bool = False) -> TransferResult:
    """A posted or pending transfer, idempotent by id: a repeat with the same fields is a no-op."""
    kind = TransferKind.PENDING if pending else TransferKind.POSTED
    row = _existing(conn, transfer_id)
    if row is not None:
        same = (row["kind"], row["debit_account_id"], row["credit_account_id"], row["amount"],
                row["code"]) == (kind.value, debit_id, credit_id, amount, code)
        if not same:
            raise Conflict(f"reference {ref or transfer_id!r} was already used for a different "
                           f"{row['code']} of {format_amount(row['amount'])}")
        return TransferResult(transfer_id, created=False, amount=amount)
    debit, credit = load_account(conn, debit_id), load_account(conn, credit_id)
    apply = apply_pending if pending else apply_posted
    new_debit, new_credit = apply(debit, credit, amount)  # raises LedgerError, nothing written
    _insert(conn, transfer_id, kind, debit_id, credit_id, amount, code, ref)
    _save(conn, new_debit)
    _save(conn, new_credit)
    if not pending:   # a reservation moves no posted money, so it cannot change suspension
        for acc in (new_debit, new_credit):
            if acc.kind is AccountKind.MAIN:
                update_suspension(conn, acc, reason=code)
    return TransferResult(transfer_id, created=True, amount=amount)


def resolve(conn: sqlite3.Connection, pending_id: str, kind: TransferKind, posted_amount: int,
            code: str) -> bool:
    """Post part of a reservation (releasing the rest), or void or expire it.

    Returns False when the reservation was already resolved (by any kind): exactly once.
    """
    pend = _existing(conn, pending_id)
    if pend is None or pend["kind"] != TransferKind.PENDING.value:
        raise NotFound(f"no reservation {pending_id}")
    done = conn.execute("SELECT 1 FROM transfers WHERE pending_id = ?", (pending_id,)).fetchone()
    if done is not None:
        return False
    if kind is not TransferKind.POST and posted_amount:
        raise LedgerError("void and expire post nothing")
    debit = load_account(conn, pend["debit_account_id"])
    credit = load_account(conn, pend["credit_account_id"])
    new_debit, new_credit = apply_resolve(debit, credit, pend["amount"], posted_amount)
    _insert(conn, f"{pending_id}:{kind.value}", kind, debit.id, credit.id, posted_amount, code,
            None, pending_id=pending_id)
    _save(conn, new_debit)
    _save(conn, new_credit)
    if new_debit.kind is AccountKind.MAIN and posted_amount:
        update_suspension(conn, new_debit, reason=code)
    return True


def update_suspension(conn: sqlite3.Connection, main: Account, *, reason: str,
                      number_id: int | None = None) -> bool | None:
    """Recompute a number's suspension from its main balance; record and log any change."""
    if number_id is None:
        row = conn.execute("SELECT id, number, min_balance, suspended FROM numbers WHERE account_id=?",
                           (main.id,)).fetchone()
    else:
        row = conn.execute("SELECT id, number, min_balance, suspended FROM numbers WHERE id=?",
                           (number_id,)).fetchone()
    if row is None:
        return None
    now = is_suspended(main.balance, row["min_balance"])
    if now != bool(row["suspended"]):
        conn.execute("UPDATE numbers SET suspended=? WHERE id=?", (int(now), row["id"]))
        conn.execute(
            "INSERT INTO suspension_events (number_id, suspended, balance, min_balance, reason, at) "
            "VALUES (?,?,?,?,?,?)", (row["id"], int(now), main.balance, row["min_balance"], reason, now_iso()))
        log.info("number.suspended" if now else "number.resumed", number=row["number"],
                 balance=main.balance, min_balance=row["min_balance"], reason=reason)
    return now


def all_accounts(conn: sqlite3.Connection) -> list[Account]:
    return [Account(r[0], AccountKind(r[1]), r[2], r[3], r[4], r[5]) for r in conn.execute(
        "SELECT id, kind, debits_pending, debits_posted, credits_pending, credits_posted FROM accounts")]
