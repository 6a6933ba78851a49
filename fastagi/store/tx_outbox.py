"""The notification outbox in SQL: events written in the caller's transaction, read and
marked by the delivery loop (service/outbox.py), listed and retried by the operator.

An event is written by the same transaction as the change that caused it, so it exists
exactly when the change does; serve delivers it later, never inside a call's setup.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any

from fastagi.core.money import format_amount
from fastagi.core.webhook import RETRY_FIRST_S, RETRY_MAX_GAP_S, RETRY_WINDOW_S, gives_up, retry_delay_s
from fastagi.runtime.clock import now_iso, now_ms
from fastagi.store.base import NotFound, StoreError

EVENT_TYPES = ("balance.low", "number.suspended", "number.resumed", "period.charged")
EVENTS_LIST_MAX = 200  # `events list` shows this many, newest first
ERROR_CHARS_MAX = 300  # of a failed attempt's error kept for the operator


def enqueue(conn: sqlite3.Connection, type_: str, number: str, data: dict[str, Any]) -> str:
    """Write one event for delivery; its stream is the number (delivered in order per number)."""
    assert type_ in EVENT_TYPES, type_
    event_id = f"evt_{uuid.uuid4().hex}"
    now = now_ms()
    conn.execute(
        "INSERT INTO outbox (event_id, type, stream, payload, created_at, next_at_ms, retry_from_ms) "
        "VALUES (?,?,?,?,?,?,?)",
        (event_id, type_, number, json.dumps(data, ensure_ascii=False), now_iso(), now, now),
    )
    return event_id


def balance_low(
    conn: sqlite3.Connection, number: str, ext_key: str | None, available: int, threshold: int
) -> str:
    """balance.low of an extension (ext_key) or of the number's main account (None)."""
    return enqueue(
        conn,
        "balance.low",
        number,
        {
            "number": number,
            "account": "main" if ext_key is None else "ext",
            "ext": ext_key,
            "available": format_amount(available),
            "threshold": format_amount(threshold),
        },
    )


def suspension(
    conn: sqlite3.Connection,
    number: str,
    suspended: bool,
    balance: int,
    min_balance: int,
    owed: int,
    reason: str,
) -> str:
    return enqueue(
        conn,
        "number.suspended" if suspended else "number.resumed",
        number,
        {
            "number": number,
            "balance": format_amount(balance),
            "min_balance": format_amount(min_balance),
            "owed": format_amount(owed),
            "reason": reason,
        },
    )


def body(row: sqlite3.Row | dict[str, Any]) -> bytes:
    """The JSON a receiver gets: the same bytes on every attempt of the event."""
    doc = {
        "id": row["event_id"],
        "type": row["type"],
        "created_at": row["created_at"],
        "data": json.loads(row["payload"]),
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


# ---- delivery ------------------------------------------------------------------------------

# The oldest pending event of each number, if its next attempt is due: a later event of a
# number waits until the earlier one is delivered (or given up), so each number's events
# arrive in order.
_DUE_SQL = (
    "SELECT o.id, o.event_id, o.type, o.stream, o.payload, o.created_at, o.attempts FROM outbox o "
    "WHERE o.id IN (SELECT min(id) FROM outbox WHERE state='pending' GROUP BY stream) "
    "AND o.next_at_ms <= ? ORDER BY o.id LIMIT ?"
)


def due(conn: sqlite3.Connection, at_ms: int, limit: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(_DUE_SQL, (at_ms, limit))]


def next_due_ms(conn: sqlite3.Connection) -> int | None:
    """When the earliest pending event is next due (None: nothing pending)."""
    return conn.execute("SELECT min(next_at_ms) FROM outbox WHERE state='pending'").fetchone()[0]


def mark_delivered(conn: sqlite3.Connection, outbox_id: int) -> None:
    conn.execute(
        "UPDATE outbox SET state='delivered', attempts=attempts+1, delivered_at=?, last_error=NULL "
        "WHERE id=? AND state='pending'",
        (now_iso(), outbox_id),
    )


def mark_attempt_failed(
    conn: sqlite3.Connection,
    outbox_id: int,
    error: str,
    at_ms: int,
    first_s: float = RETRY_FIRST_S,
    max_gap_s: float = RETRY_MAX_GAP_S,
    window_s: float = RETRY_WINDOW_S,
) -> str:
    """Count a failed attempt; schedule the next one, or give up past the window. Returns the state."""
    row = conn.execute(
        "SELECT attempts, retry_from_ms FROM outbox WHERE id=? AND state='pending'", (outbox_id,)
    ).fetchone()
    if row is None:
        return "gone"
    attempts = row["attempts"] + 1
    next_ms = at_ms + int(retry_delay_s(attempts, first_s, max_gap_s) * 1000)
    state = "failed" if gives_up(row["retry_from_ms"], next_ms, window_s) else "pending"
    conn.execute(
        "UPDATE outbox SET attempts=?, next_at_ms=?, last_error=?, state=? WHERE id=?",
        (attempts, next_ms, error[:ERROR_CHARS_MAX], state, outbox_id),
    )
    return state


# ---- the operator --------------------------------------------------------------------------


def list_events(conn: sqlite3.Connection, failed_only: bool) -> list[dict[str, Any]]:
    where = "WHERE state='failed'" if failed_only else ""
    rows = conn.execute(
        "SELECT id, event_id, type, stream, payload, created_at, state, attempts, next_at_ms, "
        f"last_error, delivered_at FROM outbox {where} ORDER BY id DESC LIMIT ?",
        (EVENTS_LIST_MAX,),
    ).fetchall()
    return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]


def retry_event(conn: sqlite3.Connection, outbox_id: int) -> dict[str, Any]:
    """Put a failed (or waiting) event back in line now, with a new retry window."""
    row = conn.execute("SELECT id, event_id, state FROM outbox WHERE id=?", (outbox_id,)).fetchone()
    if row is None:
        raise NotFound(f"no event {outbox_id} (see extbill events list)")
    if row["state"] == "delivered":
        raise StoreError(f"event {outbox_id} was already delivered; nothing to retry")
    now = now_ms()
    conn.execute(
        "UPDATE outbox SET state='pending', next_at_ms=?, retry_from_ms=? WHERE id=?", (now, now, outbox_id)
    )
    return {"id": row["id"], "event_id": row["event_id"], "was": row["state"]}
