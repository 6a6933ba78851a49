"""What /metrics reads from the store: open calls and settlements, counted where they are kept."""

from __future__ import annotations

import sqlite3
from typing import Any

from fastagi.core.clock import ms_from_iso

LAG_SAMPLE_CALLS = 100  # settlement lag: the mean over this many latest settled calls


def call_metrics(conn: sqlite3.Connection, now_ms: int) -> dict[str, Any]:
    open_count, oldest_ms = conn.execute(
        "SELECT count(*), min(start_ms) FROM calls WHERE state='reserved'"
    ).fetchone()
    settled = [
        (state, by or "unknown", n)
        for state, by, n in conn.execute(
            "SELECT state, settled_by, count(*) FROM calls WHERE state != 'reserved' GROUP BY state, settled_by"
        )
    ]
    lags = [
        ms_from_iso(settled_at) - ms_from_iso(end_at)
        for settled_at, end_at in conn.execute(
            "SELECT settled_at, end_at FROM calls WHERE settled_at IS NOT NULL AND end_at IS NOT NULL "
            "ORDER BY settled_at DESC LIMIT ?",
            (LAG_SAMPLE_CALLS,),
        )
    ]
    return {
        "in_progress": open_count,
        "oldest_open_s": (now_ms - oldest_ms) / 1000 if oldest_ms is not None else 0.0,
        "settled": settled,
        "lag_s": max(0, sum(lags) / len(lags)) / 1000 if lags else 0.0,
    }
