"""Money actions and setting changes from the console and the API, each with its audit row.

The operation itself is tx_admin's (the CLI's words and rules); this module wraps it in the
same transaction with what the audit log needs (the state before and after) and, for the
API, the Idempotency-Key record, so an action and its record commit or fail together.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastagi.core.money import format_amount
from fastagi.runtime.clock import now_iso
from fastagi.store import tx_admin, tx_web
from fastagi.store.base import NotFound, StoreError

AUDIT_ROWS_MAX = 200  # one page of the audit log


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a console user or an API key, with the address the request came from."""

    who: str
    role: str
    address: str | None


class IdempotencyMismatch(StoreError):
    """An Idempotency-Key used again with a different request."""


def _state(conn: sqlite3.Connection, number: str, ext: str | None) -> dict[str, Any]:
    doc = tx_admin.balance(conn, number)
    if ext is None:
        m = doc["main"]
        return {
            "balance": format_amount(m["balance"]),
            "available": format_amount(m["available"]),
            "status": doc["status"],
            "ivr": doc["ivr"],
            "ext_billing": doc["ext_billing"],
            "min_balance": format_amount(doc["min_balance"]),
            "monthly_minimum": format_amount(doc["monthly_minimum"]),
            "owed": format_amount(doc["owed"]),
        }
    e = next((e for e in doc["extensions"] if e["key"] == ext), None)
    if e is None:  # (no bare next(): a StopIteration cannot cross the store's future)
        # a removed extension is refused in the store's words ("... was removed on ...")
        tx_admin._ext_row(conn, tx_admin._number_row(conn, number)["id"], number, ext)
        raise NotFound(f"number {number} has no extension {ext}")
    low = conn.execute(
        "SELECT e.low_balance FROM extensions e JOIN numbers n ON n.id = e.number_id "
        "WHERE n.number=? AND e.key=?",
        (number, ext),
    ).fetchone()[0]
    return {
        "balance": format_amount(e["balance"]),
        "available": format_amount(e["available"]),
        "status": e["status"],
        "low_balance": None if low is None else format_amount(low),
    }


def _audit(
    conn: sqlite3.Connection,
    actor: Actor,
    action: str,
    number: str,
    ext: str | None,
    before: dict[str, Any],
    after: dict[str, Any],
    idem_key: str | None,
) -> None:
    conn.execute(
        "INSERT INTO audit_log (at, who, role, address, action, number, ext, before, after, idem_key) "
        "VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            now_iso(),
            actor.who,
            actor.role,
            actor.address,
            action,
            number,
            ext,
            json.dumps(before, ensure_ascii=False),
            json.dumps(after, ensure_ascii=False),
            idem_key,
        ),
    )


def _audited(
    conn: sqlite3.Connection,
    actor: Actor,
    action: str | Callable[[Any], str],
    number: str,
    ext: str | None,
    idem_key: str | None,
    op: Callable[[], Any],
    *,
    watch_main: bool = False,
) -> Any:
    """Run op() between two snapshots of what it changes and log both.

    `action` may be a function of op's result (a reclaim of "all" names the amount taken).
    """
    targets = [None] if ext is None else ([None, ext] if watch_main else [ext])

    def snap() -> dict[str, Any]:
        states = {("main" if t is None else f"ext {t}"): _state(conn, number, t) for t in targets}
        return states if len(states) > 1 else next(iter(states.values()))

    before = snap()
    result = op()
    what = action(result) if callable(action) else action
    _audit(conn, actor, what, number, ext, before, snap(), idem_key)
    return result


def recharge(
    conn: sqlite3.Connection, actor: Actor, number: str, ext: str | None, amount: int, ref: str
) -> dict[str, Any]:
    what = f"recharge {format_amount(amount)}"
    r = _audited(
        conn, actor, what, number, ext, ref, lambda: tx_admin.recharge(conn, number, ext, amount, ref)
    )
    return {"created": r.created, "transfer_id": r.transfer_id}


def transfer(
    conn: sqlite3.Connection, actor: Actor, number: str, ext: str, amount: int, ref: str
) -> dict[str, Any]:
    what = f"transfer {format_amount(amount)} main -> ext {ext}"
    op = lambda: tx_admin.move(conn, number, ext, amount, ref)
    r = _audited(conn, actor, what, number, ext, ref, op, watch_main=True)
    return {"created": r.created, "transfer_id": r.transfer_id}


def set_number(
    conn: sqlite3.Connection, actor: Actor, number: str, ref: str | None, changes: dict[str, Any]
) -> None:
    """tx_admin.set_number with `changes` (its keyword arguments), audited."""
    money = ("min_balance", "monthly_minimum")
    shown = {k: (format_amount(v) if k in money else v) for k, v in changes.items() if v is not None}
    what = "set " + ", ".join(f"{k}={v}" for k, v in shown.items())
    _audited(conn, actor, what, number, None, ref, lambda: tx_admin.set_number(conn, number, **changes))


def set_low_balance(
    conn: sqlite3.Connection, actor: Actor, number: str, ext: str, low: int, ref: str | None
) -> None:
    what = f"set low_balance={format_amount(low)}"
    op = lambda: tx_admin.set_extension(conn, number, ext, low_balance=low)
    _audited(conn, actor, what, number, ext, ref, op)


def audit_page(conn: sqlite3.Connection, number: str, before_id: int | None) -> list[dict[str, Any]]:
    """The number's audit rows, newest first, from before_id down (None: the newest)."""
    rows = conn.execute(
        "SELECT * FROM audit_log WHERE number=? AND id < ? ORDER BY id DESC LIMIT ?",
        (number, before_id if before_id is not None else 2**62, AUDIT_ROWS_MAX),
    ).fetchall()
    return [dict(r) for r in rows]


# ---- the API's Idempotency-Key ---------------------------------------------------------------


def idempotent(
    conn: sqlite3.Connection,
    key_id: int,
    idem_key: str,
    body_hash: str,
    op: Callable[..., tuple[int, dict[str, Any]]],
    *args: Any,
) -> tuple[int, dict[str, Any]]:
    """The first answer to (key, Idempotency-Key), or op's answer recorded with it.

    A refused op raises and records nothing: it changed nothing, so a retry is judged anew.
    """
    row = conn.execute(
        "SELECT body_hash, status, response FROM api_requests WHERE api_key_id=? AND idem_key=?",
        (key_id, idem_key),
    ).fetchone()
    if row is not None:
        if row["body_hash"] != body_hash:
            raise IdempotencyMismatch(
                f"Idempotency-Key {idem_key!r} was already used for a different request"
            )
        return row["status"], json.loads(row["response"])
    status, doc = op(conn, *args)
    conn.execute(
        "INSERT INTO api_requests (api_key_id, idem_key, body_hash, status, response, created_at) "
        "VALUES (?,?,?,?,?,?)",
        (key_id, idem_key, body_hash, status, json.dumps(doc, ensure_ascii=False), now_iso()),
    )
    return status, doc


# ---- the console's one-time form tokens -------------------------------------------------------


def once(
    conn: sqlite3.Connection,
    token: str,
    session: str,
    now_ms: int,
    ttl_ms: int,
    fn: Callable[..., Any],
    *args: Any,
) -> tuple[bool, Any]:
    """fn(conn, *args) the first time this form token is submitted; (False, None) on a repeat.

    In one transaction: a refused fn leaves the token unused, so the form can be fixed and sent.
    """
    if not tx_web.consume_form_token(conn, token, session, now_ms, ttl_ms):
        return False, None
    return True, fn(conn, *args)
