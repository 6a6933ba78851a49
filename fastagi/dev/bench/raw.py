"""The raw limit: the call-setup transactions of the server, with no protocol at all.

One thread, one plain sqlite3 connection configured as the store configures its own, on a
copy of the benchmark database, committing the way serve's store does (store/sqlite.py
group commit): `concurrency` calls at once, their lookups (tx_calls.lookup) run as one
read batch, then their routes (tx_calls.route, decide + reserve) as one write batch -
each operation in its own savepoint, one COMMIT per batch of at most BATCH_OPS_MAX.
Each granted call is then settled the way serve settles it (mark_answered, then settle),
batched the same way and timed apart: the setup figure is setups per second of setup
transactions, the full-call figure counts both. The same work as serve, minus FastAGI:
the ceiling serve's figures are a share of (ratio_vs_raw).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from fastagi.core.records import CallFacts
from fastagi.core.vocab import SettledBy
from fastagi.dev.bench.mix import Call, CallMix
from fastagi.service.settlement import iso_from_ms
from fastagi.store import tx_calls
from fastagi.store.sqlite import BATCH_OPS_MAX, _configure, _run_batch

CALLS_MAX = 1_000_000


def _batch(conn: sqlite3.Connection, ops: list[tuple[Callable[..., Any], tuple, bool]]) -> list[Any]:
    """One group-committed batch, as serve's store runs it; any failed operation fails the run."""
    out = []
    for ok, value in _run_batch(conn, ops):
        if not ok:
            raise value
        out.append(value)
    return out


def _facts(call: Call, limit_ms: int, now_ms: int) -> CallFacts:
    answer_ms = now_ms + call.ring_ms
    end_ms = answer_ms + min(call.talk_ms, limit_ms)
    return CallFacts(
        billing_id=call.billing_id,
        answered=call.answered,
        talk_ms=end_ms - answer_ms if call.answered else 0,
        answer_at=iso_from_ms(answer_ms) if call.answered else None,
        end_at=iso_from_ms(end_ms),
        disposition="ANSWER" if call.answered else "NOANSWER",
        cause="16",
        settled_by=SettledBy.HANGUP,
    )


def _settle(conn: sqlite3.Connection, granted: list[tuple[Call, int]], now_ms: int) -> None:
    answers = [
        (tx_calls.mark_answered, (c.billing_id, now_ms + c.ring_ms), True) for c, _ in granted if c.answered
    ]
    for i in range(0, len(answers), BATCH_OPS_MAX):
        _batch(conn, answers[i : i + BATCH_OPS_MAX])
    settles = [(tx_calls.settle, (_facts(c, limit_ms, now_ms),), True) for c, limit_ms in granted]
    for i in range(0, len(settles), BATCH_OPS_MAX):
        _batch(conn, settles[i : i + BATCH_OPS_MAX])


def raw_setups_per_s(
    db: str, mix: CallMix, seconds: float, concurrency: int = BATCH_OPS_MAX
) -> dict[str, float]:
    """Setups (lookup + route) per second on `db`, and full calls per second, for about
    `seconds`, `concurrency` calls at once (at most BATCH_OPS_MAX per commit, as serve)."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    clock = time.perf_counter
    per_batch = max(1, min(concurrency, BATCH_OPS_MAX))
    try:
        _configure(conn)
        done = dialed = 0
        setup_s = settle_s = 0.0
        start = clock()
        deadline = start + seconds
        now_ms = int(time.time() * 1000)
        while done < CALLS_MAX and clock() < deadline:
            calls = [mix.next() for _ in range(per_batch)]
            t0 = clock()
            _batch(conn, [(tx_calls.lookup, (c.number,), False) for c in calls])
            routes = [
                (tx_calls.route, (c.billing_id, c.number, c.digits, 1, c.caller, None, None), True)
                for c in calls
            ]
            decisions = _batch(conn, routes)
            t1 = clock()
            setup_s += t1 - t0
            done += len(calls)
            granted = [(c, d.limit_ms) for c, d in zip(calls, decisions) if d.action == "dial"]
            dialed += len(granted)
            _settle(conn, granted, now_ms)
            settle_s += clock() - t1
        elapsed = clock() - start
    finally:
        conn.close()
    return {
        "raw_tx_per_s": done / setup_s,
        "raw_full_calls_per_s": done / (setup_s + settle_s),
        "raw_setups": done,
        "raw_dialed": dialed,
        "raw_calls_per_commit": per_batch,
        "raw_seconds": elapsed,
    }
