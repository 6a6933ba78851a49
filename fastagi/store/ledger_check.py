"""The ledger check's reads: the account rows, and the same counters rebuilt from transfers.

One read transaction (store.read, or _in_read on a plain connection). The comparison is
pure, in core/ledger_check.py; `extbill db check` and the benchmark both run this.
"""

from __future__ import annotations

import sqlite3

from fastagi.core.ledger_check import CallMismatch, LedgerFacts, Sums
from fastagi.store.tx_ledger import REVENUE_ACCOUNT_ID, all_accounts

SHOWN_MAX = 50  # discrepancies of one kind read and reported at most

# Each account's four counters summed again from the immutable rows: a reservation counts
# as pending while nothing resolves it; posted money is the plain transfers and the posts.
_REBUILD_SQL = """
WITH t AS (
  SELECT debit_account_id AS d, credit_account_id AS c,
         CASE WHEN kind = 'pending' AND NOT EXISTS
              (SELECT 1 FROM transfers r WHERE r.pending_id = transfers.id) THEN amount ELSE 0 END AS pend,
         CASE WHEN kind IN ('posted', 'post') THEN amount ELSE 0 END AS post
  FROM transfers)
SELECT acc, sum(dp), sum(dpo), sum(cp), sum(cpo) FROM (
  SELECT d AS acc, pend AS dp, post AS dpo, 0 AS cp, 0 AS cpo FROM t
  UNION ALL
  SELECT c, 0, 0, pend, post FROM t) AS sides
GROUP BY acc
"""

_COUNTS_SQL = """
SELECT (SELECT count(*) FROM transfers WHERE kind = 'pending'),
       (SELECT count(*) FROM transfers WHERE pending_id IS NOT NULL),
       (SELECT count(*) FROM transfers p WHERE p.kind = 'pending'
          AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = p.id))
"""

# Resolutions counted from the rows, not trusted to the unique index.
_RESOLVED_TWICE_SQL = f"""
SELECT pending_id, count(*) FROM transfers WHERE pending_id IS NOT NULL
GROUP BY pending_id HAVING count(*) > 1 LIMIT {SHOWN_MAX}
"""

# A resolution must close a reservation between the same two accounts, post no more than
# was held, and post nothing when it voids or expires.
_BAD_RESOLUTIONS_SQL = f"""
SELECT r.id, r.kind, r.amount, p.kind, p.amount FROM transfers r
LEFT JOIN transfers p ON p.id = r.pending_id
WHERE r.pending_id IS NOT NULL AND (p.id IS NULL OR p.kind != 'pending'
   OR r.debit_account_id != p.debit_account_id OR r.credit_account_id != p.credit_account_id
   OR r.amount > p.amount OR (r.kind != 'post' AND r.amount != 0))
LIMIT {SHOWN_MAX}
"""

# A call reservation's billing id: its ref, or on the first one (no ref) its id's tail
# after 'call:' (store/rows.py).
_CALL_OF = "coalesce(p.ref, substr(p.id, 6))"
_ORPHAN_RESERVATIONS_SQL = f"""
SELECT p.id, {_CALL_OF} FROM transfers p WHERE p.kind = 'pending' AND p.code = 'call'
  AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.billing_id = {_CALL_OF})
LIMIT {SHOWN_MAX}
"""

# Each call against its reservations (pending transfers of code 'call' of its billing id):
# a reserved call has one open, a settled one none, and they posted what it cost. Each call
# is found by its key from the grouped reservations (joined the other way round, SQLite
# scanned the grouped rows once per call: minutes at 200,000 calls); then the calls
# without a first reservation.
_CALL_MISMATCH_SQL = f"""
WITH per_call AS (
  SELECT {_CALL_OF} AS billing_id, count(*) AS reservations, sum(CASE WHEN r.id IS NULL THEN 1 ELSE 0 END) AS open,
         coalesce(sum(r.amount), 0) AS posted
  FROM transfers p LEFT JOIN transfers r ON r.pending_id = p.id
  WHERE p.kind = 'pending' AND p.code = 'call' GROUP BY {_CALL_OF})
SELECT c.billing_id, c.state, coalesce(c.cost, 0), pc.reservations, pc.open, pc.posted
FROM per_call pc JOIN calls c ON c.billing_id = pc.billing_id
WHERE (c.state = 'reserved') != (pc.open > 0)
   OR (c.state != 'reserved' AND pc.posted != coalesce(c.cost, 0))
UNION ALL
SELECT c.billing_id, c.state, coalesce(c.cost, 0), 0, 0, 0 FROM calls c
WHERE NOT EXISTS (SELECT 1 FROM transfers p WHERE p.id = 'call:' || c.billing_id)
LIMIT {SHOWN_MAX}
"""


def ledger_facts(conn: sqlite3.Connection) -> LedgerFacts:
    """Everything the check compares, read in the caller's (read) transaction."""
    rebuilt = {row[0]: Sums(row[1], row[2], row[3], row[4]) for row in conn.execute(_REBUILD_SQL).fetchall()}
    reservations, resolutions, open_reservations = conn.execute(_COUNTS_SQL).fetchone()
    problems = [
        f"resolution {rid} ({kind} {amount}) does not fit its reservation"
        + (f" ({pkind} {pamount})" if pkind is not None else " (no such reservation)")
        for rid, kind, amount, pkind, pamount in conn.execute(_BAD_RESOLUTIONS_SQL).fetchall()
    ]
    problems += [
        f"reservation {pid} is for call {ref}, which has no row"
        for pid, ref in conn.execute(_ORPHAN_RESERVATIONS_SQL).fetchall()
    ]
    q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
    return LedgerFacts(
        accounts=all_accounts(conn),
        rebuilt=rebuilt,
        reservations=reservations,
        resolutions=resolutions,
        open_reservations=open_reservations,
        resolved_twice=[(r[0], r[1]) for r in conn.execute(_RESOLVED_TWICE_SQL).fetchall()],
        transfer_problems=problems,
        calls=q("SELECT count(*) FROM calls"),
        calls_by_state={
            r[0]: r[1] for r in conn.execute("SELECT state, count(*) FROM calls GROUP BY state").fetchall()
        },
        calls_by_path={
            r[0]: r[1]
            for r in conn.execute(
                "SELECT coalesce(settled_by, '-'), count(*) FROM calls GROUP BY settled_by"
            ).fetchall()
        },
        talk_s_rated=q("SELECT coalesce(sum(talk_s), 0) FROM calls WHERE state = 'rated'"),
        costs=q("SELECT coalesce(sum(cost), 0) FROM calls"),
        call_mismatches=[CallMismatch(*r) for r in conn.execute(_CALL_MISMATCH_SQL).fetchall()],
        revenue_account_id=REVENUE_ACCOUNT_ID,
    )
