"""HQ's money tasks in SQL: the monthly minimum's close, claw-back, removing an extension,
bulk recharge. Each function runs inside one transaction (sqlite.py); the arithmetic is
core/period.py's, every balance change a ledger transfer (tx_ledger.py).
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

from fastagi.core.clock import iso_from_ms
from fastagi.core.ledger import InsufficientFunds
from fastagi.core.money import format_amount
from fastagi.core.period import (
    PeriodError,
    check_month,
    check_month_over,
    last_closed_month,
    minimum_charge,
    month_window_ms,
)
from fastagi.runtime.clock import now_iso
from fastagi.store import tx_outbox
from fastagi.store.base import Conflict, NotFound, StoreError
from fastagi.store.tx_admin import _ext_row, _number_row, low_balance_threshold_of, recharge, tariff_of
from fastagi.store.tx_ledger import (
    REVENUE_ACCOUNT_ID,
    load_account,
    transfer,
    update_suspension,
)
from fastagi.store.tx_owed import MINIMUM_CODE, collect_owed

BULK_ROWS_MAX = 10_000  # rows in one `recharge --csv` file
NUMBERS_PER_CLOSE_MAX = 100_000  # numbers one month's close looks at


# ---- the monthly minimum -------------------------------------------------------------------


def _spent(conn: sqlite3.Connection, number_id: int, start_ms: int, end_ms: int) -> int:
    """What the number's billed calls (main and every extension) started in [start, end) cost."""
    return conn.execute(
        "SELECT coalesce(sum(cost), 0) FROM calls WHERE number_id=? AND state='rated' "
        "AND start_ms >= ? AND start_ms < ?",
        (number_id, start_ms, end_ms),
    ).fetchone()[0]


def _closed(conn: sqlite3.Connection, number_id: int, month: str) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT * FROM period_closes WHERE number_id=? AND month=?", (number_id, month)
    ).fetchone()


def _close_one(conn: sqlite3.Connection, n: sqlite3.Row, month: str, by: str) -> dict[str, Any]:
    """Close one number's month (already checked to be over): charge, record, notify."""
    done = _closed(conn, n["id"], month)
    if done is not None:
        return {**dict(done), "number": n["number"], "closed_now": False}
    start, end = month_window_ms(month, n["time_zone"])
    spent = _spent(conn, n["id"], start, end)
    main = load_account(conn, n["account_id"])
    mc = minimum_charge(n["monthly_minimum"], spent, main.available)
    if mc.paid:
        # keyed by number and month: a second close of the month cannot charge again
        transfer(
            conn, f"minimum:{n['number']}:{month}", main.id, REVENUE_ACCOUNT_ID, mc.paid, MINIMUM_CODE, month
        )
    row = {
        "number_id": n["id"],
        "month": month,
        "time_zone": n["time_zone"],
        "minimum": n["monthly_minimum"],
        "spent": spent,
        "charge": mc.charge,
        "paid": mc.paid,
        "owed": mc.owed,
        "owed_left": mc.owed,
        "closed_at": now_iso(),
        "closed_by": by,
    }
    conn.execute(
        f"INSERT INTO period_closes ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        tuple(row.values()),
    )
    if mc.owed:
        conn.execute("UPDATE numbers SET owed = owed + ? WHERE id=?", (mc.owed, n["id"]))
        update_suspension(conn, load_account(conn, main.id), reason="monthly-minimum", number_id=n["id"])
    if mc.charge:
        tx_outbox.enqueue(
            conn,
            "period.charged",
            n["number"],
            {
                "number": n["number"],
                "month": month,
                "time_zone": n["time_zone"],
                **{k: format_amount(row[k]) for k in ("minimum", "spent", "charge", "paid", "owed")},
            },
        )
    return {**row, "number": n["number"], "closed_now": True}


_NUMBER_SQL = "SELECT id, number, account_id, monthly_minimum, time_zone, created_at FROM numbers"


def close_period(
    conn: sqlite3.Connection, month: str, now_ms: int, number: str | None = None, by: str = "cli"
) -> list[dict[str, Any]]:
    """Close `month` for one number or every number, idempotently; refuse it if not over.

    Closing by hand charges each number's monthly minimum as it is set now. Every number is
    checked before any is charged, so a refusal changes nothing.
    """
    check_month(month)
    if number is not None:
        _number_row(conn, number)  # NotFound names it
        numbers = conn.execute(_NUMBER_SQL + " WHERE number=?", (number,)).fetchall()
    else:
        numbers = conn.execute(_NUMBER_SQL + " ORDER BY number LIMIT ?", (NUMBERS_PER_CLOSE_MAX,)).fetchall()
    for n in numbers:
        try:
            check_month_over(month, n["time_zone"], now_ms)
        except PeriodError as exc:
            raise PeriodError(f"{exc} (number {n['number']})") from None
    return [_close_one(conn, n, month, by) for n in numbers]


def close_due(conn: sqlite3.Connection, now_ms: int) -> list[dict[str, Any]]:
    """serve's close: each number's last month that is over in its zone, if not closed yet.

    A number added after that month ended is not charged for it.
    """
    out = []
    for n in conn.execute(_NUMBER_SQL + " ORDER BY id LIMIT ?", (NUMBERS_PER_CLOSE_MAX,)).fetchall():
        month = last_closed_month(now_ms, n["time_zone"])
        if _closed(conn, n["id"], month) is not None:
            continue
        if n["created_at"] >= iso_from_ms(month_window_ms(month, n["time_zone"])[1]):
            continue
        out.append(_close_one(conn, n, month, "serve"))
    return out


def periods(conn: sqlite3.Connection, number: str) -> list[dict[str, Any]]:
    n = _number_row(conn, number)
    return [
        dict(r)
        for r in conn.execute("SELECT * FROM period_closes WHERE number_id=? ORDER BY month DESC", (n["id"],))
    ]


# ---- claw-back and removal -----------------------------------------------------------------


def _ext_low_balance(conn: sqlite3.Connection, number: str, erow: sqlite3.Row, nrow: sqlite3.Row) -> None:
    """balance.low when taking money from an extension crosses its threshold (as settling does)."""
    plan_id = erow["plan_id"] if erow["plan_id"] is not None else nrow["plan_id"]
    tariff = None
    if plan_id is not None:
        r = conn.execute(
            "SELECT per_minute, initial_s, increment_s, connect_fee, grace_s, max_call_s FROM plans WHERE id=?",
            (plan_id,),
        ).fetchone()
        tariff = tariff_of(tuple(r))
    threshold = low_balance_threshold_of(tariff, erow["low_balance"])
    available = load_account(conn, erow["account_id"]).available
    below = available < threshold
    if below == bool(erow["low_flag"]):
        return
    conn.execute("UPDATE extensions SET low_flag=? WHERE id=?", (int(below), erow["id"]))
    if below:
        tx_outbox.balance_low(conn, number, erow["key"], available, threshold)


def reclaim(
    conn: sqlite3.Connection, number: str, key: str, amount: int | None, ref: str | None
) -> dict[str, Any]:
    """Move an extension's available money (all of it without `amount`) back to main.

    Money held by a call in progress is never available, so never taken. With --ref a
    repeat changes nothing (a repeat without AMOUNT means the amount the first one took).
    """
    nrow = _number_row(conn, number)
    erow = _ext_row(conn, nrow["id"], number, key)
    transfer_id = f"reclaim:{ref}" if ref else f"reclaim:auto:{uuid.uuid4().hex}"
    done = conn.execute("SELECT amount FROM transfers WHERE id=?", (transfer_id,)).fetchone()
    if done is not None:
        amount = done["amount"] if amount is None else amount
    else:
        acc = load_account(conn, erow["account_id"])
        held = f" ({format_amount(acc.reserved)} is held by calls in progress)" if acc.reserved else ""
        if amount is None and acc.available == 0:
            raise InsufficientFunds(f"extension {key} of {number} has nothing available to reclaim{held}")
        if amount is not None and amount > acc.available:
            raise InsufficientFunds(
                f"cannot reclaim {format_amount(amount)}: extension {key} of {number} has only "
                f"{format_amount(acc.available)} available{held}"
            )
        amount = acc.available if amount is None else amount
    result = transfer(conn, transfer_id, erow["account_id"], nrow["account_id"], amount, "reclaim", ref)
    collected = 0
    if result.created:
        collected = collect_owed(conn, nrow["id"], transfer_id)
        _ext_low_balance(conn, number, erow, nrow)
    return {"amount": amount, "created": result.created, "collected": collected}


def remove_extension(conn: sqlite3.Connection, number: str, key: str) -> dict[str, Any]:
    """Return the extension's money to main and retire it; refused during a call of its own."""
    nrow = _number_row(conn, number)
    erow = _ext_row(conn, nrow["id"], number, key)
    acc = load_account(conn, erow["account_id"])
    busy = conn.execute(
        "SELECT count(*) FROM calls WHERE extension_id=? AND state='reserved'", (erow["id"],)
    ).fetchone()[0]
    if busy or acc.reserved:
        raise Conflict(
            f"extension {key} of {number} has a call in progress; remove it once the call has ended"
        )
    collected = 0
    if acc.balance:
        transfer_id = f"ext-remove:{number}:{erow['id']}"
        transfer(conn, transfer_id, acc.id, nrow["account_id"], acc.balance, "ext-remove", f"ext {key}")
        collected = collect_owed(conn, nrow["id"], transfer_id)
    conn.execute("UPDATE extensions SET removed_at=? WHERE id=?", (now_iso(), erow["id"]))
    return {"returned": acc.balance, "collected": collected}


# ---- bulk recharge -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BulkRow:
    line: int  # in the file, for the error message
    number: str
    key: str | None  # None: the main account
    amount: int
    ref: str


class BulkError(StoreError):
    """Bad rows of a bulk file; nothing was applied. str() is every row's error, one per line."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        self.errors = errors
        super().__init__("\n".join(f"line {line}: {msg}" for line, msg in errors))


def _check_row(conn: sqlite3.Connection, r: BulkRow) -> str | None:
    try:
        nrow = _number_row(conn, r.number)
        account_id = (
            nrow["account_id"] if r.key is None else _ext_row(conn, nrow["id"], r.number, r.key)["account_id"]
        )
    except NotFound as exc:
        return str(exc)
    done = conn.execute(
        "SELECT credit_account_id, amount, code FROM transfers WHERE id=?", (f"ref:{r.ref}",)
    ).fetchone()
    if done is not None and (done["credit_account_id"], done["amount"], done["code"]) != (
        account_id,
        r.amount,
        "recharge",
    ):
        return f"reference {r.ref!r} was already used for a different {done['code']} of {format_amount(done['amount'])}"
    return None


def check_bulk(conn: sqlite3.Connection, rows: list[BulkRow]) -> list[tuple[int, str]]:
    """Every bad row, with its line: unknown number or extension, a reference used twice in
    the file or already used for a different transfer."""
    errors: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    for r in rows:
        if r.ref in first_line:
            errors.append((r.line, f"reference {r.ref!r} is also on line {first_line[r.ref]}"))
            continue
        first_line[r.ref] = r.line
        msg = _check_row(conn, r)
        if msg is not None:
            errors.append((r.line, msg))
    return errors


def bulk_recharge(conn: sqlite3.Connection, rows: list[BulkRow]) -> dict[str, Any]:
    """Check every row, then apply them all in this one transaction, or none (BulkError)."""
    if not rows:
        raise StoreError("the file has no rows to recharge")
    if len(rows) > BULK_ROWS_MAX:
        raise StoreError(f"the file has {len(rows)} rows; at most {BULK_ROWS_MAX} at once")
    errors = check_bulk(conn, rows)
    if errors:
        raise BulkError(errors)
    applied = already = collected = total = 0
    for r in rows:
        result = recharge(conn, r.number, r.key, r.amount, r.ref)
        if result.created:
            applied += 1
            total += r.amount
            collected += result.collected
        else:
            already += 1
    return {"applied": applied, "already": already, "total": total, "collected": collected}
