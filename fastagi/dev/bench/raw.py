"""The raw limit: the call-setup transactions of the server, with no protocol at all.

One thread, one plain sqlite3 connection configured as the store configures its own,
tx_calls.lookup (a read transaction) then tx_calls.route (an IMMEDIATE transaction)
per call, in a loop, on a copy of the benchmark database. Each granted call is then
settled the way serve settles it (mark_answered, then settle), timed apart: the setup
figure is setups per second of setup transactions, the full-call figure counts both.
"""

from __future__ import annotations

import sqlite3
import time

from fastagi.core.records import CallFacts
from fastagi.core.vocab import SettledBy
from fastagi.dev.bench.mix import CallMix
from fastagi.service.settlement import iso_from_ms
from fastagi.store import tx_calls
from fastagi.store.sqlite import _configure, _in_read, _in_transaction

CALLS_MAX = 1_000_000


def raw_setups_per_s(db: str, mix: CallMix, seconds: float) -> dict[str, float]:
    """Setups (lookup + route) per second on `db`, and full calls per second, for about `seconds`."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    clock = time.perf_counter
    try:
        _configure(conn)
        done = dialed = 0
        setup_s = settle_s = 0.0
        start = clock()
        deadline = start + seconds
        now_ms = int(time.time() * 1000)
        while done < CALLS_MAX:
            call = mix.next()
            t0 = clock()
            _in_read(conn, tx_calls.lookup, (call.number,))
            d = _in_transaction(
                conn, tx_calls.route, (call.billing_id, call.number, call.digits, 1, call.caller, None, None)
            )
            t1 = clock()
            setup_s += t1 - t0
            done += 1
            if d.action == "dial":
                dialed += 1
                answer_ms = now_ms + call.ring_ms
                end_ms = answer_ms + min(call.talk_ms, d.limit_ms)
                if call.answered:
                    _in_transaction(conn, tx_calls.mark_answered, (call.billing_id, iso_from_ms(answer_ms)))
                _in_transaction(
                    conn,
                    tx_calls.settle,
                    (
                        CallFacts(
                            billing_id=call.billing_id,
                            answered=call.answered,
                            talk_ms=end_ms - answer_ms if call.answered else 0,
                            answer_at=iso_from_ms(answer_ms) if call.answered else None,
                            end_at=iso_from_ms(end_ms),
                            disposition="ANSWER" if call.answered else "NOANSWER",
                            cause="16",
                            settled_by=SettledBy.HANGUP,
                        ),
                    ),
                )
                settle_s += clock() - t1
            if done % 64 == 0 and clock() >= deadline:
                break
        elapsed = clock() - start
    finally:
        conn.close()
    return {
        "raw_tx_per_s": done / setup_s,
        "raw_full_calls_per_s": done / (setup_s + settle_s),
        "raw_setups": done,
        "raw_dialed": dialed,
        "raw_seconds": elapsed,
    }
