"""What /metrics reads from the store: open calls and settlements, counted where they are kept."""

from __future__ import annotations

import sqlite3
from typing import Any

LAG_SAMPLE_CALLS = 100  # settlement lag: the mean over this many latest settled calls

# The latest settled calls, found from the newest resolutions of their first reservation
# (the tail of transfers, by seq) rather than by sorting every call on settled_ms.
_LAG_SQL = (
    "SELECT c.settled_ms, c.end_ms FROM (SELECT pending_id FROM transfers WHERE code = 'call' "
    "AND pending_id IS NOT NULL ORDER BY seq DESC LIMIT ?) r "
    # a first reservation's id is 'call:' + the billing id: the call is found by its key
    "JOIN calls c ON c.billing_id = substr(r.pending_id, 6) AND r.pending_id = 'call:' || c.billing_id "
    "WHERE c.settled_ms IS NOT NULL AND c.end_ms IS NOT NULL"
)


def call_metrics(conn: sqlite3.Connection, now_ms: int) -> dict[str, Any]:
    open_count, oldest_ms = conn.execute(
        "SELECT count(*), min(start_ms) FROM calls WHERE state='reserved'"
    ).fetchone()
    # kept counters (tx_calls.settle / expire), not a count over every call ever made
    settled = [
        (state, by, n)
        for state, by, n in conn.execute(
            "SELECT state, settled_by, calls FROM call_counts WHERE calls > 0 ORDER BY state, settled_by"
        )
    ]
    lags = [settled_ms - end_ms for settled_ms, end_ms in conn.execute(_LAG_SQL, (LAG_SAMPLE_CALLS,))]
    return {
        "in_progress": open_count,
        "oldest_open_s": (now_ms - oldest_ms) / 1000 if oldest_ms is not None else 0.0,
        "settled": settled,
        "lag_s": max(0, sum(lags) / len(lags)) / 1000 if lags else 0.0,
    }
