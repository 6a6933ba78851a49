"""The raw limit: the call-setup transactions of the server, with no protocol at all.

One thread, one plain sqlite3 connection configured as the store configures its own,
tx_calls.lookup (a read transaction) then tx_calls.route (an IMMEDIATE transaction)
per call, in a loop, on a copy of the benchmark database.
"""
from __future__ import annotations

import sqlite3
import time

from ..store import tx_calls
from ..store.sqlite import _configure, _in_read, _in_transaction
from .mix import CallMix

CALLS_MAX = 1_000_000


def raw_setups_per_s(db: str, mix: CallMix, seconds: float) -> dict[str, float]:
    """Setups (lookup + route) per second on `db` for about `seconds`."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        _configure(conn)
        done = dialed = 0
        start = time.perf_counter()
        deadline = start + seconds
        while done < CALLS_MAX:
            call = mix.next()
            _in_read(conn, tx_calls.lookup, (call.number,))
            d = _in_transaction(conn, tx_calls.route, (call.billing_id, call.number, call.digits, 1,
                                                       call.caller, None, None))
            done += 1
            dialed += d.action == "dial"
            if done % 64 == 0 and time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return {"raw_tx_per_s": done / elapsed, "raw_setups": done, "raw_dialed": dialed,
            "raw_seconds": elapsed}
