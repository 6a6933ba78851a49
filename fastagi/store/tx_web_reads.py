"""What the console and the API read: call records and statements a page at a time, daily
spend, calls in progress. Read-only; each function takes the number (and key) already
checked by the web layer's scope (fastagi/web/scope.py) and trusts nothing else.

Paging is by keyset (the last row's sort key is the cursor), so page N costs what page 1
costs and an export of a year streams in bounded pages.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from fastagi.core.clock import iso_from_ms
from fastagi.store import tx_admin
from fastagi.store.base import NotFound
from fastagi.store.pages import statement_rows
from fastagi.store.rows import day_ms, iso
from fastagi.store.tx_calls import call_record
from fastagi.store.tx_ledger import load_account

PAGE_ROWS_MAX = 500  # rows per page of calls or statement, at most
NUMBERS_LISTED_MAX = 1000
IN_PROGRESS_MAX = 500
CALL_STATES = ("reserved", "rated", "unanswered", "unrated")


def _ids(conn: sqlite3.Connection, number: str, ext: str | None) -> tuple[int, int, int | None, int | None]:
    """(number id, main account id, extension id, extension account id)."""
    n = conn.execute("SELECT id, account_id FROM numbers WHERE number=?", (number,)).fetchone()
    if n is None:
        raise NotFound(f"unknown number {number}")
    if ext is None:
        return n[0], n[1], None, None
    e = conn.execute(
        "SELECT id, account_id FROM extensions WHERE number_id=? AND key=?", (n[0], ext)
    ).fetchone()
    if e is None:
        raise NotFound(f"number {number} has no extension {ext}")
    return n[0], n[1], e[0], e[1]


def numbers(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT number, name, suspended FROM numbers ORDER BY number LIMIT ?", (NUMBERS_LISTED_MAX,)
    )
    return [dict(r) for r in rows]


# Two fixed statements (no SQL is built from input): a later page starts below the previous
# page's last (start_ms, billing_id) as a row value, which SQLite seeks to in the
# calls_by_number index; an "IS NULL OR" there would make every page scan from the top.
# (PostgreSQL must be told a parameter's type where it is only tested for NULL: /*pg ::T*/.)
_CALLS_WHERE = (
    "FROM calls c JOIN dests d ON d.id = c.dest_id LEFT JOIN extensions e ON e.id = c.extension_id "
    "WHERE c.number_id = :n AND (:ext/*pg ::bigint*/ IS NULL OR c.extension_id = :ext) "
    "AND (:since/*pg ::bigint*/ IS NULL OR c.start_ms >= :since) "
    "AND (:until/*pg ::bigint*/ IS NULL OR c.start_ms < :until) "
    "AND (:state/*pg ::text*/ IS NULL OR c.state = :state) "
)
_CALLS_ORDER = "ORDER BY c.start_ms DESC, c.billing_id DESC LIMIT :limit"
_CALLS_FIRST_SQL = "SELECT c.*, d.dest, e.key AS ext_key " + _CALLS_WHERE + _CALLS_ORDER
_CALLS_AFTER_SQL = (
    "SELECT c.*, d.dest, e.key AS ext_key "
    + _CALLS_WHERE
    + "AND (c.start_ms, c.billing_id) < (:a_start, :a_id) "
    + _CALLS_ORDER
)


def calls_page(
    conn: sqlite3.Connection,
    number: str,
    ext: str | None,
    since: str | None,
    until_before: str | None,
    state: str | None,
    after: tuple[str, str] | None,
    limit: int,
) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """Calls newest first; `after` is the (start ISO text, billing_id) the previous page ended on
    (the cursor shows the time as text); since, until_before: 'YYYY-MM-DD' (UTC).

    Every filter is a fixed clause with a bound parameter; NULL turns it off.
    """
    number_id, _, ext_id, _ = _ids(conn, number, ext)
    after_start, after_id = after if after is not None else (None, None)
    rows = conn.execute(
        _CALLS_AFTER_SQL if after is not None else _CALLS_FIRST_SQL,
        {
            "n": number_id,
            "ext": ext_id,
            "since": day_ms(since) if since is not None else None,
            "until": day_ms(until_before) if until_before is not None else None,
            "state": state,
            "a_start": day_ms(after_start) if after_start is not None else None,
            "a_id": after_id,
            "limit": min(limit, PAGE_ROWS_MAX) + 1,
        },
    ).fetchall()
    page = rows[: min(limit, PAGE_ROWS_MAX)]
    nxt = (iso_from_ms(page[-1]["start_ms"]), page[-1]["billing_id"]) if len(rows) > len(page) else None
    return [call_record(r, number, r["ext_key"]) for r in page], nxt


def statement_page(
    conn: sqlite3.Connection, number: str, ext: str | None, before_seq: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """The account's transfers newest first (tx_admin.statement's rows), from before_seq down."""
    _, main_id, _, ext_account = _ids(conn, number, ext)
    account_id = main_id if ext is None else ext_account
    assert account_id is not None  # _ids raised NotFound for an unknown extension
    n = min(limit, PAGE_ROWS_MAX)
    # keyset: each page seeks the account's debit and credit indexes below before_seq (pages.py)
    rows = statement_rows(conn, account_id, n + 1, before_seq)
    page = rows[:n]
    out = [tx_admin.statement_entry(r, account_id) for r in page]
    return out, (page[-1]["seq"] if len(rows) > n else None)


def daily_spend(conn: sqlite3.Connection, number: str, ext: str, since_day: str) -> dict[str, int]:
    """Call charges posted to the extension per UTC day from since_day (YYYY-MM-DD) on."""
    _, _, _, account_id = _ids(conn, number, ext)
    # Newest first down the account's debit index, stopping at the first transfer older than
    # since_day (seq order is time order): the cost is the window's transfers, not the history.
    out: dict[str, int] = {}
    since_ms = day_ms(since_day)
    for created_ms, kind, amount in conn.execute(
        "SELECT created_ms, kind, amount FROM transfers WHERE debit_account_id = ? ORDER BY seq DESC",
        (account_id,),
    ):
        if created_ms < since_ms:
            break
        if kind == "post":
            day = iso_from_ms(created_ms)[:10]
            out[day] = out.get(day, 0) + amount
    return out


def extension_info(conn: sqlite3.Connection, number: str, ext: str) -> dict[str, Any]:
    """The extension's row of `balance` plus its low-balance threshold (configured or default).

    A removed extension is not in `balance`: its page still shows its account as it was left
    (its money went back to main), with status "removed" and when.
    """
    doc = tx_admin.balance(conn, number)
    e = next((e for e in doc["extensions"] if e["key"] == ext), None)
    if e is None:
        e = _removed(conn, number, ext)
    row = conn.execute(
        "SELECT e.low_balance, coalesce(e.plan_id, n.plan_id) FROM extensions e "
        "JOIN numbers n ON n.id = e.number_id WHERE n.number=? AND e.key=?",
        (number, ext),
    ).fetchone()
    plan = tx_admin.load_plan(conn, row[1])
    threshold = tx_admin.low_balance_threshold_of(plan.tariff if plan else None, row[0])
    return {
        "removed_at": None,
        **e,
        "low_balance": threshold,
        "low_balance_set": row[0] is not None,
        "number_name": doc["name"],
    }


def _removed(conn: sqlite3.Connection, number: str, ext: str) -> dict[str, Any]:
    _, _, ext_id, account_id = _ids(conn, number, ext)  # NotFound names an unknown one
    assert account_id is not None  # (an extension was asked for)
    e = conn.execute("SELECT key, name, dest, removed_at FROM extensions WHERE id=?", (ext_id,)).fetchone()
    acc = load_account(conn, account_id)
    # the kept counter (as `balance` shows a live one): the same on a year of calls as on
    # none, and unchanged by archiving
    spent = tx_admin.spent_of(conn, account_id)
    return {
        **dict(e),
        "plan": None,
        "balance": acc.balance,
        "reserved": acc.reserved,
        "available": acc.available,
        "spent": spent,
        "status": "removed",
    }


def in_progress(conn: sqlite3.Connection, number: str, ext: str | None) -> list[dict[str, Any]]:
    number_id, _, ext_id, _ = _ids(conn, number, ext)
    rows = conn.execute(
        "SELECT c.billing_id, c.caller, c.start_ms, c.answer_ms, c.granted_s, c.reserved, c.charged, "
        "e.key AS ext FROM calls c LEFT JOIN extensions e ON e.id = c.extension_id "
        # "+ 0": walk the open calls (the partial index calls_open), not the number's history
        "WHERE c.state = 'reserved' AND c.number_id + 0 = :n "
        "AND (:ext/*pg ::bigint*/ IS NULL OR c.extension_id = :ext) "
        "ORDER BY c.start_ms DESC LIMIT :limit",
        {"n": number_id, "ext": ext_id, "limit": IN_PROGRESS_MAX},
    ).fetchall()
    return [_in_progress_row(dict(r)) for r in rows]


def _in_progress_row(r: dict[str, Any]) -> dict[str, Any]:
    """An open call with its start and answer times as ISO text (as the console shows them)."""
    start_ms, answer_ms = r.pop("start_ms"), r.pop("answer_ms")
    return {
        "billing_id": r.pop("billing_id"),
        "caller": r.pop("caller"),
        "start_at": iso_from_ms(start_ms),
        "answer_at": iso(answer_ms),
        **r,
    }
