"""Quota chunks in SQL: renew a call's grant, resolve all of its chunks once, the supervisor lease.

A call's first chunk is the pending transfer 'call:<id>' written at setup; renewal N adds
'call:<id>:r<N>' in its own transaction, idempotent by N. The calls row keeps the totals
(granted_s, reserved = cost(granted_s)), so settlement never reads more than it must.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from fastagi.core.ledger import TransferKind
from fastagi.core.quota import next_grant
from fastagi.core.vocab import CallState
from fastagi.store.base import NotFound
from fastagi.store.rows import call_pending_id, iso
from fastagi.store.tariff_snapshots import tariff_from_json
from fastagi.store.tx_ledger import REVENUE_ACCOUNT_ID, load_account, reserve, resolve


@dataclass(frozen=True, slots=True)
class Renewal:
    """A call's grant after a renewal attempt."""

    billing_id: str
    live: bool  # False: the call is already settled; nothing was reserved
    extended: bool  # this attempt reserved more
    granted_s: int  # the total grant now
    reserved: int
    renewals: int
    final: bool
    answer_at: str | None
    callee: str | None
    channel: str | None  # the caller's channel name (the warning is whispered to it)
    lang: str  # the number's prompt language
    supervised: bool = True  # granted as a chunk; False: Dial's own L(x:y) warns and cuts it


def chunk_ids(billing_id: str, renewals: int) -> list[str]:
    """The pending transfers of a call, first chunk first."""
    return [call_pending_id(billing_id)] + [f"call:{billing_id}:r{n}" for n in range(1, renewals + 1)]


def _renewal(row: sqlite3.Row, *, live: bool, extended: bool) -> Renewal:
    return Renewal(
        row["billing_id"],
        live,
        extended,
        row["granted_s"],
        row["reserved"],
        row["renewals"],
        bool(row["grant_final"]),
        iso(row["answer_ms"]),
        row["callee"],
        row["channel"],
        row["lang"],
        bool(row["supervised"]),
    )


_CALL_SQL = (
    "SELECT c.billing_id, c.account_id, t.body AS tariff, c.granted_s, c.reserved, c.renewals, c.grant_final, c.supervised, "
    "c.state, c.answer_ms, c.callee, c.channel, n.lang FROM calls c JOIN numbers n ON n.id = c.number_id "
    "JOIN tariffs t ON t.id = c.tariff_id "
    "WHERE c.billing_id=?"
)


def renew(conn: sqlite3.Connection, billing_id: str, seq: int, quota_s: int) -> Renewal:
    """Reserve the call's next chunk (renewal number `seq`) if its account can pay for it.

    Idempotent by seq: asking again for a renewal already made changes nothing. A call whose
    account cannot pay one more block becomes final. The reservation and the new totals are
    written in this one transaction; the caller moves Asterisk's cut-off only after it commits.
    """
    row = conn.execute(_CALL_SQL + " /*pg FOR UPDATE OF c*/", (billing_id,)).fetchone()  # see tx_calls
    if row is None:
        raise NotFound(f"no call {billing_id}")
    if row["state"] != CallState.RESERVED:
        return _renewal(row, live=False, extended=False)
    if row["renewals"] != seq - 1:
        return _renewal(row, live=True, extended=False)  # done already, or out of turn
    account = load_account(conn, row["account_id"])
    tariff = tariff_from_json(row["tariff"])
    grant = next_grant(row["granted_s"], row["reserved"], account.available, tariff, quota_s)
    if grant is None:
        if not row["grant_final"]:
            conn.execute("UPDATE calls SET grant_final=1 WHERE billing_id=?", (billing_id,))
        row = conn.execute(_CALL_SQL, (billing_id,)).fetchone()
        return _renewal(row, live=True, extended=False)
    extra = grant.reserved - row["reserved"]
    reserve(conn, f"call:{billing_id}:r{seq}", account, REVENUE_ACCOUNT_ID, extra, "call", billing_id)
    conn.execute(
        "UPDATE calls SET granted_s=?, reserved=?, renewals=?, grant_final=? WHERE billing_id=?",
        (grant.granted_s, grant.reserved, seq, int(grant.final), billing_id),
    )
    row = conn.execute(_CALL_SQL, (billing_id,)).fetchone()
    return _renewal(row, live=True, extended=True)


def can_renew(conn: sqlite3.Connection, billing_id: str, quota_s: int) -> bool:
    """Whether a renewal would reserve more now (read only: a final grant polls this for a
    recharge without taking the write lock)."""
    row = conn.execute(_CALL_SQL, (billing_id,)).fetchone()
    if row is None or row["state"] != CallState.RESERVED:
        return False
    account = load_account(conn, row["account_id"])
    tariff = tariff_from_json(row["tariff"])
    return next_grant(row["granted_s"], row["reserved"], account.available, tariff, quota_s) is not None


def resolve_chunks(conn: sqlite3.Connection, row: sqlite3.Row, posted: int, kind: TransferKind) -> None:
    """Close every chunk of a call once: post `posted` across them in order (each chunk
    releases what it does not post), or void / expire them all."""
    ids = chunk_ids(row["billing_id"], row["renewals"])
    if len(ids) == 1:  # most calls: one chunk, no read of the chunks needed
        resolve(conn, ids[0], kind, posted if kind is TransferKind.POST else 0, "call")
        return
    marks = ",".join("?" * len(ids))
    amounts = dict(conn.execute(f"SELECT id, amount FROM transfers WHERE id IN ({marks})", ids).fetchall())
    left = posted
    for chunk in ids:
        if chunk not in amounts:
            raise NotFound(f"no reservation {chunk}")
        if kind is TransferKind.POST and left > 0:
            part = min(left, amounts[chunk])
            left -= part
            resolve(conn, chunk, TransferKind.POST, part, "call")
        else:
            resolve(conn, chunk, TransferKind.VOID if kind is TransferKind.POST else kind, 0, "call")
    if left:
        raise NotFound(f"call {row['billing_id']}: {left} more to post than its chunks hold")


def call_grant(conn: sqlite3.Connection, billing_id: str) -> Renewal | None:
    """A call's grant as stored, or None when there is no such call."""
    row = conn.execute(_CALL_SQL, (billing_id,)).fetchone()
    if row is None:
        return None
    return _renewal(row, live=row["state"] == CallState.RESERVED, extended=False)


def supervised_calls(conn: sqlite3.Connection, limit: int) -> list[Renewal]:
    """Open supervised calls that were answered: the ones a restarted supervisor takes over."""
    rows = conn.execute(
        _CALL_SQL.replace(
            "WHERE c.billing_id=?", "WHERE c.state='reserved' AND c.answer_ms IS NOT NULL AND c.supervised=1"
        )
        + " ORDER BY c.start_ms LIMIT ?",
        (limit,),
    ).fetchall()
    return [_renewal(r, live=True, extended=False) for r in rows]


def take_lease(conn: sqlite3.Connection, holder: str, until_ms: int, system: str = "") -> None:
    """Hold (or extend) the supervisor lease of Asterisk `system` until `until_ms`."""
    conn.execute(
        "INSERT INTO supervisor_lease (system, holder, until_ms) VALUES (?,?,?) "
        "ON CONFLICT(system) DO UPDATE SET holder=excluded.holder, until_ms=excluded.until_ms",
        (system, holder, until_ms),
    )


def drop_lease(conn: sqlite3.Connection, holder: str, system: str = "") -> None:
    conn.execute("DELETE FROM supervisor_lease WHERE system=? AND holder=?", (system, holder))


def lease_until_ms(conn: sqlite3.Connection, system: str = "") -> int:
    """Until when some process supervises the calls of Asterisk `system` (0: nobody).

    A supervisor with no system name (asterisk_system_name unset: one Asterisk, whatever its
    systemname) covers the calls of every system."""
    row = conn.execute(
        "SELECT max(until_ms) FROM supervisor_lease WHERE system IN (?, '')", (system,)
    ).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])
