"""HQ's money tasks from the console and the API, each with its audit row: the monthly
minimum, claw-back, removing an extension, bulk recharge, and the operator's event retry.

The operations are tx_money's and tx_outbox's (the CLI's rules and words); this module runs
them inside the caller's transaction together with the audit row (tx_web_actions.py), and
keeps a bulk file to the one number the web user or API key may reach.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from fastagi.core.money import format_amount
from fastagi.store import tx_admin, tx_money, tx_outbox
from fastagi.store.base import StoreError
from fastagi.store.tx_web_actions import Actor, _audit, _audited, _state, set_number

REMOVED_LISTED_MAX = 200  # removed extensions shown on a number's page


def set_monthly_minimum(
    conn: sqlite3.Connection, actor: Actor, number: str, amount: int, ref: str | None
) -> None:
    """`extbill number set N --monthly-minimum AMOUNT` (0 = none), audited."""
    set_number(conn, actor, number, ref, {"monthly_minimum": amount})


def reclaim(
    conn: sqlite3.Connection, actor: Actor, number: str, ext: str, amount: int | None, ref: str
) -> dict[str, Any]:
    """`extbill reclaim N KEY [AMOUNT] --ref REF`, audited with main's and the extension's states."""

    def what(r: dict[str, Any]) -> str:
        return f"reclaim {format_amount(r['amount'])} ext {ext} -> main"

    op = lambda: tx_money.reclaim(conn, number, ext, amount, ref)
    return _audited(conn, actor, what, number, ext, ref, op, watch_main=True)


def remove_extension(
    conn: sqlite3.Connection, actor: Actor, number: str, ext: str, ref: str | None
) -> dict[str, Any]:
    """`extbill ext remove N KEY`, audited (after it, the extension shows as removed)."""
    label = f"ext {ext}"
    before = {"main": _state(conn, number, None), label: _state(conn, number, ext)}
    r = tx_money.remove_extension(conn, number, ext)
    after = {"main": _state(conn, number, None), label: {"removed": True}}
    what = f"remove ext {ext}: {format_amount(r['returned'])} returned to main"
    _audit(conn, actor, what, number, ext, before, after, ref)
    return r


# ---- bulk recharge, one number's rows ----------------------------------------------------------


def _accounts_of(conn: sqlite3.Connection, number: str) -> set[int]:
    """Every account of the number: main and its extensions (removed ones too)."""
    n = tx_admin._number_row(conn, number)
    exts = conn.execute("SELECT account_id FROM extensions WHERE number_id=?", (n["id"],)).fetchall()
    return {n["account_id"], *(r[0] for r in exts)}


def _used_elsewhere(conn: sqlite3.Connection, ref: str, accounts: set[int]) -> bool:
    row = conn.execute(
        "SELECT credit_account_id, debit_account_id FROM transfers WHERE id=?", (f"ref:{ref}",)
    ).fetchone()
    return row is not None and not ({row[0], row[1]} & accounts)


def check_bulk(conn: sqlite3.Connection, number: str, rows: list[tx_money.BulkRow]) -> list[tuple[int, str]]:
    """tx_money.check_bulk for the rows of `number`; a row of any other number is refused with
    the words of an unknown number, and a reference another number used is named without
    telling what it was used for (nothing tells the user that the other number exists)."""
    accounts = _accounts_of(conn, number)
    errors: list[tuple[int, str]] = []
    mine = []
    for r in rows:
        if r.number != number:
            errors.append((r.line, f"unknown number {r.number}"))
        else:
            mine.append(r)
    refs = {r.line: r.ref for r in mine}
    for line, msg in tx_money.check_bulk(conn, mine):
        if msg.startswith("reference ") and _used_elsewhere(conn, refs[line], accounts):
            msg = f"reference {refs[line]!r} was already used; choose another"
        errors.append((line, msg))
    return sorted(errors)


def bulk_recharge(
    conn: sqlite3.Connection, actor: Actor, number: str, rows: list[tx_money.BulkRow], ref: str | None
) -> dict[str, Any]:
    """All rows of `number` applied in this transaction, or none (BulkError lists every bad row)."""
    if not rows:
        raise StoreError("the file has no rows to recharge")
    errors = check_bulk(conn, number, rows)
    if errors:
        raise tx_money.BulkError(errors)
    keys = sorted({r.key for r in rows if r.key is not None})
    # (the ledger gives the rule; the audit shows main and each extension the file touched)
    states = lambda: {
        "main": _state(conn, number, None),
        **{f"ext {k}": _state(conn, number, k) for k in keys},
    }
    before = states()
    r = tx_money.bulk_recharge(conn, rows)
    what = (
        f"bulk recharge: {r['applied']} recharges applied ({format_amount(r['total'])}), "
        f"{r['already']} already done"
    )
    _audit(conn, actor, what, number, None, before, states(), ref)
    return r


# ---- reads and the operator's events -----------------------------------------------------------


def removed_extensions(conn: sqlite3.Connection, number: str) -> list[dict[str, Any]]:
    """The number's removed extensions, newest removal first: their history stays readable."""
    n = tx_admin._number_row(conn, number)
    rows = conn.execute(
        "SELECT key, name, removed_at FROM extensions WHERE number_id=? AND removed_at IS NOT NULL "
        "ORDER BY removed_at DESC, id DESC LIMIT ?",
        (n["id"], REMOVED_LISTED_MAX),
    ).fetchall()
    return [dict(r) for r in rows]


def periods(conn: sqlite3.Connection, number: str) -> list[dict[str, Any]]:
    """`extbill period list N --json`'s rows: the closed months, newest first."""
    money = ("minimum", "spent", "charge", "paid", "owed", "owed_left")
    return [
        {k: format_amount(v) if k in money else v for k, v in r.items() if k != "number_id"}
        for r in tx_money.periods(conn, number)
    ]


def retry_event(conn: sqlite3.Connection, actor: Actor, outbox_id: int, ref: str | None) -> dict[str, Any]:
    """`extbill events retry ID`, audited in the log of the event's number."""
    r = tx_outbox.retry_event(conn, outbox_id)
    stream = conn.execute("SELECT stream FROM outbox WHERE id=?", (outbox_id,)).fetchone()[0]
    what = f"retry event {outbox_id} ({r['event_id']})"
    _audit(conn, actor, what, stream, None, {"state": r["was"]}, {"state": "pending"}, ref)
    return r
