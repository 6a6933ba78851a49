"""Keyset pages of an account's transfers and of a number's calls, newest first.

Each page seeks an index from the previous page's last row (the cursor) instead of
counting rows from the top, so the first page and every later one cost the same on a store
with millions of rows as on an empty one. A row committed while a reader pages is newer
than every cursor already handed out, so it lands above the first page and the pages
still return each older row exactly once. The same statements read an archive file
(store/archive.py), whose tables have the live ones' columns.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from fastagi.store.base import StoreError
from fastagi.store.rows import day_ms, transfer_view

PAGE_ROWS_DEFAULT = 100  # rows of one page when the user gives no --limit
PAGE_ROWS_MAX = 10_000  # the most one page returns
_SEQ_TOP = 2**62  # "before the newest row": above every seq

TRANSFER_COLS = (
    "seq",
    "id",
    "kind",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "pending_id",
    "code",
    "ref",
    "created_ms",
)
_T = ", ".join(TRANSFER_COLS)
# Debits and credits seek their own index; a call's transfers always credit revenue, never a
# main or extension account, so the credit side skips them (the partial index leaves them out).
_STATEMENT_SQL = (
    f"SELECT {_T} FROM (SELECT {_T} FROM transfers WHERE debit_account_id = ? AND seq < ? "
    "ORDER BY seq DESC LIMIT ?) d UNION ALL "
    f"SELECT {_T} FROM (SELECT {_T} FROM transfers WHERE credit_account_id = ? AND code <> 'call' "
    "AND seq < ? ORDER BY seq DESC LIMIT ?) c ORDER BY seq DESC LIMIT ?"
)


def check_limit(limit: int) -> int:
    if not 1 <= limit <= PAGE_ROWS_MAX:
        raise StoreError(f"--limit must be 1 to {PAGE_ROWS_MAX}")
    return limit


def statement_rows(
    conn: sqlite3.Connection, account_id: int, limit: int, before_seq: int | None
) -> list[dict[str, Any]]:
    """Up to `limit` transfers of the account with seq < before_seq, newest first."""
    top = _SEQ_TOP if before_seq is None else before_seq
    rows = conn.execute(_STATEMENT_SQL, (account_id, top, limit, account_id, top, limit, limit)).fetchall()
    return [transfer_view(dict(zip(TRANSFER_COLS, r, strict=True))) for r in rows]


def parse_statement_cursor(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise StoreError(f"--before {text!r} is not a statement cursor (the number a previous page printed)")
    return int(text)


# ---- calls --------------------------------------------------------------------------------

_CURSOR_SEP = "~"


def calls_cursor(start_at: str, billing_id: str) -> str:
    """The cursor of a page whose last call is this one (`calls` prints it)."""
    return f"{start_at}{_CURSOR_SEP}{billing_id}"


def parse_calls_cursor(text: str | None) -> tuple[int, str] | None:
    """(start_ms, billing_id) of a calls cursor."""
    if text is None:
        return None
    start, sep, billing_id = text.partition(_CURSOR_SEP)
    refused = StoreError(f"--before {text!r} is not a calls cursor (the text a previous page printed)")
    if not sep or not start or not billing_id or len(text) > 200:
        raise refused
    try:
        return day_ms(start), billing_id
    except StoreError:
        raise refused from None


def calls_rows(
    conn: sqlite3.Connection,
    number_id: int,
    extension_id: int | None,
    since: str | None,
    limit: int,
    before: tuple[int, str] | None,
) -> list[dict[str, Any]]:
    """Up to `limit` call rows of the number (or of one extension), newest first, from the
    cursor down: ordered by (start_ms, billing_id), which no later write changes.
    since: 'YYYY-MM-DD' (UTC)."""
    sql = "SELECT c.*, d.dest FROM calls c JOIN dests d ON d.id = c.dest_id WHERE "
    params: list[Any] = []
    if extension_id is not None:  # calls_by_extension
        sql += "c.extension_id = ?"
        params.append(extension_id)
    else:  # calls_by_number
        sql += "c.number_id = ?"
        params.append(number_id)
    if since is not None:
        sql += " AND c.start_ms >= ?"
        params.append(day_ms(since))
    if before is not None:
        # the first condition bounds the index range; the second breaks ties of start_ms
        sql += " AND c.start_ms <= ? AND (c.start_ms < ? OR c.billing_id < ?)"
        params += [before[0], before[0], before[1]]
    sql += " ORDER BY c.start_ms DESC, c.billing_id DESC LIMIT ?"
    params.append(limit)
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
