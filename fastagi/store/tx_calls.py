"""Call setup and settlement in SQL: decide and reserve in one transaction; settle once.

The decision itself is calls.py (pure); this module reads the snapshot it needs,
writes the reservation and the call record, and resolves the reservation exactly
once, whichever settlement path (AMI, hangup handler, reconcile, sweeper) comes first.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import structlog

from fastagi.core.calls import Decision, decide_lookup, decide_route
from fastagi.core.clock import iso_from_ms, ms_from_iso
from fastagi.core.ids import system_of
from fastagi.core.ledger import TransferKind
from fastagi.core.quota import QUOTA_S_DEFAULT
from fastagi.core.rating import billed_seconds, cost
from fastagi.core.records import CallFacts, SettleResult
from fastagi.core.vocab import CallState, SettledBy, UnsettledPolicy
from fastagi.runtime.clock import now_ms
from fastagi.store import tx_outbox
from fastagi.store.archive_read import archived_calls
from fastagi.store.base import NotFound
from fastagi.store.pages import PAGE_ROWS_MAX, calls_rows, check_limit, parse_calls_cursor
from fastagi.store.rows import call_pending_id, call_ref, iso, ms_of
from fastagi.store.shared_texts import DESTS
from fastagi.store.tariff_snapshots import cached_tariff_id, tariff_from_json, tariff_id, tariff_json
from fastagi.store.tx_admin import low_balance_threshold_of, number_view, route_views, tariff_cols, tariff_of
from fastagi.store.tx_ledger import REVENUE_ACCOUNT_ID, account_at, account_cols, reserve
from fastagi.store.tx_quota import lease_until_ms, resolve_chunks

log = structlog.get_logger("extbill.calls")

OPEN_CALLS_MAX = 10_000  # one sweep or reconcile looks at this many reservations at most
GRANT_OVERRUN_S_MAX = 2  # talk past the grant up to this is measurement, not talk


def lookup(conn: sqlite3.Connection, number: str) -> Decision:
    return decide_lookup(number_view(conn, number))


def route(
    conn: sqlite3.Connection,
    billing_id: str,
    number: str,
    digits: str,
    try_no: int,
    caller: str,
    channel: str | None,
    linkedid: str | None,
    quota_s: int = QUOTA_S_DEFAULT,
    supervised: bool | None = None,
) -> Decision:
    """Decide the call and, for a Dial, reserve its money in the same transaction.

    supervised: whether a supervisor will renew the call mid-call (one chunk now) or not
    (everything the account can pay, final); None: whoever holds the lease decides.
    """
    existing = conn.execute(CALL_SQL, (billing_id,)).fetchone()
    if existing is not None:
        return _repeat(existing)
    nv, ev = route_views(conn, number, digits)
    start_ms = now_ms()  # one clock read: the record's time, the sweeper's and the lease's
    if supervised is None:
        # a supervisor of the call's own Asterisk (its uniqueid's systemname) must hold the lease
        supervised = lease_until_ms(conn, system_of(billing_id)) > start_ms
    d = decide_route(nv, digits, try_no, ev, caller, quota_s=quota_s, renewable=supervised)
    if d.action != "dial":
        return d
    assert nv is not None and d.account_id is not None and d.tariff is not None
    # The account the decision charges, as route_views read it in this transaction (the
    # write lock is held since BEGIN IMMEDIATE): reserve() need not read it again.
    if d.charged == "ext":
        assert ev is not None
        debit = ev.account
    else:
        debit = nv.main
    assert debit.id == d.account_id
    pending_id = call_pending_id(billing_id)
    # No call holds billing_id (checked above) and the call row and its reservation are
    # only ever written together, so pending_id is new.
    reserve(conn, pending_id, debit, REVENUE_ACCOUNT_ID, d.reserve, "call", call_ref(pending_id, billing_id))
    values = (
        billing_id,
        nv.number_id,
        d.extension_id,
        d.account_id,
        caller,
        channel,
        None if linkedid == billing_id else linkedid,  # most calls: kept as NULL (store/rows.py)
        d.charged,
        start_ms,
        d.granted_s,
        d.reserve,
        int(d.final),
        int(d.supervised),
    )
    body, dest = tariff_json(d.tariff), d.dest
    assert dest is not None  # a dial has a destination (decide_route)
    tid, did = cached_tariff_id(body), DESTS.cached(dest)
    # the remembered ids are checked by the INSERT itself (store/shared_texts.py)
    if (
        tid is None
        or did is None
        or conn.execute(_INSERT_CALL_SQL, (*values, tid, body, did, dest)).rowcount != 1
    ):
        shared = (tariff_id(conn, body), body, DESTS.id_of(conn, dest), dest)
        if conn.execute(_INSERT_CALL_SQL, (*values, *shared)).rowcount != 1:
            raise NotFound(f"tariff snapshot of call {billing_id} could not be stored")
    return d


# The call row with its tariff snapshot and its Dial string selected by id and text: no row
# without them.
_INSERT_CALL_SQL = (
    "INSERT INTO calls (billing_id, number_id, extension_id, account_id, caller, channel, linkedid, "
    "charged, start_ms, granted_s, reserved, state, grant_final, supervised, tariff_id, dest_id) "
    "SELECT ?,?,?,?,?,?,?,?,?,?,?, 'reserved', ?, ?, t.id, d.id FROM tariffs t, dests d "
    "WHERE t.id = ? AND t.body = ? AND d.id = ? AND d.dest = ?"
)
# What only a live call needs (the supervisor moves a call's cut-off through its channels'
# names) is not kept once it is settled: no record, listing or check shows it, and each call
# would carry ~40 bytes of it for good (README.md, "History at scale").
_LIVE_ONLY_CLEARED = "channel=NULL, callee=NULL"
# Kept counter of settled calls by state and path (/metrics reads it instead of counting rows).
_COUNT_SETTLED_SQL = (
    "INSERT INTO call_counts (state, settled_by, calls) VALUES (?, ?, 1) "
    "ON CONFLICT (state, settled_by) DO UPDATE SET calls = call_counts.calls + 1"
)
# A call with its tariff snapshot's text as `tariff` and its Dial string as `dest`.
CALL_SQL = (
    "SELECT c.*, t.body AS tariff, d.dest FROM calls c JOIN tariffs t ON t.id = c.tariff_id "
    "JOIN dests d ON d.id = c.dest_id WHERE c.billing_id=?"
)


def _repeat(row: sqlite3.Row) -> Decision:
    """The same channel asking again: the grant it already has, or nothing new."""
    if row["state"] != CallState.RESERVED:
        return Decision(action="prompt", prompt="service-unavailable", reason="call-already-settled")
    return Decision(
        action="dial",
        reason="repeat",
        dest=row["dest"],
        charged=row["charged"],
        account_id=row["account_id"],
        granted_s=row["granted_s"],
        reserve=row["reserved"],
        tariff=tariff_from_json(row["tariff"]),
        final=bool(row["grant_final"]),
        supervised=bool(row["supervised"]),
    )


def mark_answered(conn: sqlite3.Connection, billing_id: str, answer_ms: int) -> bool:
    """Remember the callee's answer time (Unix ms) as soon as it is known (survives a restart)."""
    cur = conn.execute(
        "UPDATE calls SET answer_ms=? WHERE billing_id=? AND state='reserved' AND answer_ms IS NULL",
        (answer_ms, billing_id),
    )
    return cur.rowcount == 1


def mark_answered_many(conn: sqlite3.Connection, answers: list[tuple[str, int, str | None]]) -> int:
    """mark_answered for several calls in one statement: (billing id, answer time in Unix ms, callee
    channel or None) triples, in order (a call's first answer time wins). The callee is kept
    for a restarted supervisor. How many calls got an answer time."""
    cur = conn.executemany(
        "UPDATE calls SET answer_ms=?, callee=coalesce(callee, ?) WHERE billing_id=? AND state='reserved' "
        "AND answer_ms IS NULL",
        [(at, callee, bid) for bid, at, callee in answers],
    )
    return cur.rowcount


# Settling paths (AMI, hangup handler, sweeper, reconcile; on PostgreSQL several serve
# processes) may race for one call: on PostgreSQL the first locks the row and the others wait,
# then read the state it committed (SQLite's one writer at a time needs no lock).
# ... locked for the settlement on PostgreSQL (the call's row only, not the shared snapshot)
_CALL_FOR_UPDATE_SQL = (
    "SELECT c.*, t.body AS tariff, d.dest FROM calls c JOIN tariffs t ON t.id = c.tariff_id "
    "JOIN dests d ON d.id = c.dest_id WHERE c.billing_id=? /*pg FOR UPDATE OF c*/"
)


def _result(row: sqlite3.Row, settled_now: bool, low: dict[str, Any] | None = None) -> SettleResult:
    return SettleResult(
        row["billing_id"],
        settled_now,
        CallState(row["state"]),
        row["talk_s"],
        row["cost"],
        SettledBy(row["settled_by"]) if row["settled_by"] is not None else None,
        low,
        iso(row["answer_ms"]),
        iso(row["end_ms"]),
    )


def settle(conn: sqlite3.Connection, f: CallFacts) -> SettleResult:
    """Rate and post an ended call, or void an unanswered one: exactly once by billing id."""
    row = conn.execute(_CALL_FOR_UPDATE_SQL, (f.billing_id,)).fetchone()
    if row is None:
        raise NotFound(f"no call {f.billing_id}")
    if row["state"] != CallState.RESERVED:
        return _result(row, False)
    tariff = tariff_from_json(row["tariff"])
    if f.answered:
        talk_s = (max(f.talk_ms, 0) + 500) // 1000  # to the nearest second
        if talk_s > row["granted_s"]:
            # Asterisk cuts the bridge at the grant; a little more is the caller's leg
            # finishing the warning prompt, not talk. Far more is worth a look.
            if talk_s > row["granted_s"] + GRANT_OVERRUN_S_MAX:
                log.warning(
                    "call.talk_over_grant",
                    billing_id=f.billing_id,
                    talk_s=talk_s,
                    granted_s=row["granted_s"],
                    settled_by=f.settled_by,
                )
            talk_s = row["granted_s"]
        billed_s = billed_seconds(talk_s, tariff)
        rated = cost(talk_s, tariff)
        charged = min(rated, row["reserved"])  # never more than was held
        if rated > row["reserved"]:
            log.warning(
                "call.cost_capped",
                billing_id=f.billing_id,
                rated=rated,
                reserved=row["reserved"],
                talk_s=talk_s,
                granted_s=row["granted_s"],
            )
        resolve_chunks(conn, row, charged, TransferKind.POST)
        state = CallState.RATED
    else:
        talk_s, billed_s, charged = 0, 0, 0
        resolve_chunks(conn, row, 0, TransferKind.VOID)
        state = CallState.UNANSWERED
    conn.execute(
        "UPDATE calls SET state=?, answer_ms=?, end_ms=?, talk_s=?, billed_s=?, cost=?, "
        "disposition=?, cause=?, settled_by=?, settled_ms=?, " + _LIVE_ONLY_CLEARED + " WHERE billing_id=?",
        (
            state,
            ms_of(answer_at := (f.answer_at if f.answered else None)),
            ms_from_iso(f.end_at),
            talk_s,
            billed_s,
            charged,
            f.disposition,
            f.cause,
            f.settled_by,
            now_ms(),
            f.billing_id,
        ),
    )
    conn.execute(_COUNT_SETTLED_SQL, (state, f.settled_by))
    return SettleResult(
        f.billing_id,
        True,
        state,
        talk_s,
        charged,
        f.settled_by,
        _low_balance(conn, row, charged),
        answer_at,
        f.end_at,
    )


def expire(
    conn: sqlite3.Connection, billing_id: str, policy: UnsettledPolicy, settled_by: SettledBy
) -> SettleResult:
    """Close a reservation nobody settled: charge the whole grant, or release it and mark it unrated."""
    row = conn.execute(_CALL_FOR_UPDATE_SQL, (billing_id,)).fetchone()
    if row is None:
        raise NotFound(f"no call {billing_id}")
    if row["state"] != CallState.RESERVED:
        return _result(row, False)
    if policy == UnsettledPolicy.CHARGE:
        resolve_chunks(conn, row, row["reserved"], TransferKind.POST)
        state, talk, billed, charged = CallState.RATED, row["granted_s"], row["granted_s"], row["reserved"]
    else:
        resolve_chunks(conn, row, 0, TransferKind.EXPIRE)
        state, talk, billed, charged = CallState.UNRATED, None, None, 0
    now = now_ms()
    conn.execute(
        "UPDATE calls SET state=?, talk_s=?, billed_s=?, cost=?, disposition=coalesce(disposition, ?), "
        "settled_by=?, settled_ms=?, end_ms=coalesce(end_ms, ?), "
        + _LIVE_ONLY_CLEARED
        + " WHERE billing_id=?",
        (state, talk, billed, charged, "UNKNOWN", settled_by, now, now, billing_id),
    )
    conn.execute(_COUNT_SETTLED_SQL, (state, settled_by))
    return SettleResult(
        billing_id,
        True,
        state,
        talk,
        charged,
        settled_by,
        _low_balance(conn, row, charged),
        iso(row["answer_ms"]),
        iso(row["end_ms"] if row["end_ms"] is not None else now),
    )


def _low_balance(conn: sqlite3.Connection, row: sqlite3.Row, cost: int) -> dict[str, Any] | None:
    """balance.low once per crossing: set a flag going down, clear it going back up.

    `row` is the call as it was before settling; `cost` is what settling it charged.
    """
    if row["extension_id"] is None or row["charged"] != "ext":
        return None
    ext = conn.execute(_LOW_BALANCE_SQL, (row["extension_id"],)).fetchone()
    plan_id = ext["plan_id"] if ext["plan_id"] is not None else ext["number_plan_id"]
    tariff = None
    if plan_id is not None:
        if ext[10] is None:
            raise NotFound(f"plan {plan_id} does not exist")
        tariff = tariff_of(tuple(ext[11:17]))
    threshold = low_balance_threshold_of(tariff, ext["low_balance"])
    account = account_at(ext, 4)
    if account is None:
        raise NotFound(f"account {ext['account_id']} does not exist")
    available = account.available
    below = available < threshold
    # The flag is only looked at here, so a recharge that lifted the account back above the
    # threshold has not cleared it: the amount just before this call's charge tells whether
    # the account was still below, or went back above and is crossing again now.
    was_below = bool(ext["low_flag"]) and available + cost < threshold
    if below != bool(ext["low_flag"]):
        conn.execute("UPDATE extensions SET low_flag=? WHERE id=?", (int(below), ext[0]))
    if not below or was_below:
        return None
    tx_outbox.balance_low(
        conn, ext["number"], ext["key"], available, threshold
    )  # the webhook, same transaction
    return {"number": ext["number"], "ext": ext["key"], "available": available, "threshold": threshold}


# The extension, its number, its account (as settling just left it) and the base tariff
# of its plan (its own, else the number's) in one read; the threshold needs no prefix rates.
_LOW_BALANCE_SQL = (
    "SELECT e.id, e.key, e.low_balance, e.low_flag, " + account_cols("a") + ", "  # 0..3, 4..9
    "p.id, " + tariff_cols("p") + ", "  # 10, 11..16
    "n.number, e.plan_id, n.plan_id AS number_plan_id, e.account_id "
    "FROM extensions e JOIN numbers n ON n.id = e.number_id "
    "LEFT JOIN accounts a ON a.id = e.account_id "
    "LEFT JOIN plans p ON p.id = coalesce(e.plan_id, n.plan_id) WHERE e.id=?"
)


def open_call(conn: sqlite3.Connection, billing_id: str) -> dict[str, Any] | None:
    """One reservation not yet settled, or None."""
    row = conn.execute(
        "SELECT billing_id, start_ms, granted_s, answer_ms FROM calls WHERE billing_id=? AND state='reserved'",
        (billing_id,),
    ).fetchone()
    return _open(row) if row is not None else None


def _open(row: Any) -> dict[str, Any]:
    """An open call as the settlement paths read it (times as ISO text and start_ms)."""
    r = dict(row)
    return {**r, "answer_at": iso(r.pop("answer_ms")), "start_at": iso(r["start_ms"])}


def open_calls(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Reservations not yet settled, oldest first."""
    return [
        _open(r)
        for r in conn.execute(
            "SELECT billing_id, start_ms, granted_s, answer_ms FROM calls WHERE state='reserved' "
            "ORDER BY start_ms LIMIT ?",
            (OPEN_CALLS_MAX,),
        )
    ]


def call_records(
    conn: sqlite3.Connection,
    number: str,
    ext: str | None,
    since: str | None,
    limit: int = PAGE_ROWS_MAX,
    before: str | None = None,
    archive: str | None = None,
) -> list[dict[str, Any]]:
    """One page of the number's (or one extension's) call records, newest first.

    before: the cursor of the previous page (calls_cursor of its last row); archive: also
    read the calls moved to this archive file (store/archive.py).
    """
    nrow = conn.execute("SELECT id FROM numbers WHERE number=?", (number,)).fetchone()
    if nrow is None:
        raise NotFound(f"unknown number {number}")
    keys = {i: k for i, k in conn.execute("SELECT id, key FROM extensions WHERE number_id=?", (nrow["id"],))}
    ext_id = None
    if ext is not None:
        ext_id = next((i for i, k in keys.items() if k == ext), None)
        if ext_id is None:
            raise NotFound(f"number {number} has no extension {ext}")
    check_limit(limit)
    cursor = parse_calls_cursor(before)
    rows = calls_rows(conn, nrow["id"], ext_id, since, limit, cursor)
    if archive is not None:
        rows = archived_calls(conn, archive, rows, nrow["id"], ext_id, since, limit, cursor)
    return [call_record(r, number, keys.get(r["extension_id"])) for r in rows]


# The columns of `extbill calls --csv` and of the console's CSV export, in order.
CSV_FIELDS = (
    "id",
    "number",
    "ext",
    "caller",
    "start",
    "answer",
    "end",
    "talk_s",
    "billed_s",
    "granted_s",
    "renewals",
    "cost",
    "disposition",
    "cause",
    "settled_by",
    "state",
)


def call_record(r: Any, number: str, ext_key: str | None) -> dict[str, Any]:
    """A call as `extbill calls`, the console and the API show it (money in minor units)."""
    return {
        "id": r["billing_id"],
        "number": number,
        "ext": ext_key,
        "charged": r["charged"],
        "caller": r["caller"],
        "dest": r["dest"],
        "start": iso_from_ms(r["start_ms"]),
        "answer": iso(r["answer_ms"]),
        "end": iso(r["end_ms"]),
        "talk_s": r["talk_s"],
        "billed_s": r["billed_s"],
        "granted_s": r["granted_s"],
        "renewals": r["renewals"],
        "reserved": r["reserved"],
        "cost": r["cost"],
        "disposition": r["disposition"],
        "cause": r["cause"],
        "settled_by": r["settled_by"],
        "state": r["state"],
    }
