"""After a run: is the ledger consistent, and was every granted call settled exactly once?

The ledger part is `extbill db check`'s own (store/ledger_check.py + core/ledger_check.py):
the account rows against their counters rebuilt from the transfers, resolutions counted
per reservation from the rows. On top of it, the run's own expectations: the load
generator's counts of granted, answered and unanswered calls and of talk time.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from fastagi.core.ledger_check import expectation_discrepancies, ledger_discrepancies
from fastagi.store.factory import is_pg
from fastagi.store.ledger_check import ledger_facts
from fastagi.store.sqlite import _in_read


def _sqlite_facts(db: str) -> Any:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        return _in_read(conn, ledger_facts, ())
    finally:
        conn.close()


def _pg_facts(url: str) -> Any:
    import psycopg  # noqa: PLC0415

    from fastagi.store.pg_conn import PgConn, configure_types, row_factory  # noqa: PLC0415

    with psycopg.connect(url, row_factory=row_factory) as pg:  # one transaction, rolled back
        configure_types(pg)
        pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn: Any = PgConn(pg)
        return ledger_facts(conn)


def check_ledger(db: str, expect: dict[str, int]) -> dict[str, Any]:
    """Read the database of a finished run (the server stopped).

    `expect` is the load generator's own count: granted, answered, unanswered, talk_s_total.
    """
    f = _pg_facts(db) if is_pg(db) else _sqlite_facts(db)
    ledger = ledger_discrepancies(f, quiescent=True)
    exp = expectation_discrepancies(f, expect)
    # every granted call has exactly one resolution per reservation, counted from the rows
    settled_exactly_once = (
        not exp["calls"]
        and not f.resolved_twice
        and not f.call_mismatches
        and f.open_reservations == 0
        and f.open_calls == 0
        and f.resolutions == f.reservations
    )
    return {
        "ledger_consistent": not ledger,
        "settled_exactly_once": settled_exactly_once,
        # ... and resolved the way its simulated end calls for: answered ones rated for the
        # talk time simulated, unanswered ones voided; revenue is the sum of the calls' costs
        "billed_as_simulated": not (exp["states"] or exp["talk_time"] or exp["revenue"]),
        "talk_time_matches": not exp["talk_time"],
        "revenue_matches_costs": not exp["revenue"],
        "discrepancies": ledger + exp["calls"] + exp["states"] + exp["talk_time"] + exp["revenue"],
        "ledger": {
            "sum_credits_minus_debits": sum(a.credits_posted - a.debits_posted for a in f.accounts),
            "pending_left": sum(a.debits_pending + a.credits_pending for a in f.accounts),
            "calls": f.calls,
            "open_calls": f.open_calls,
            "reservations": f.reservations,
            "resolutions": f.resolutions,
            "reservations_resolved_more_than_once": len(f.resolved_twice),
            "calls_by_state": f.calls_by_state,
            "calls_by_settlement_path": f.calls_by_path,
            "talk_s_rated": f.talk_s_rated,
            "talk_s_expected": expect["talk_s_total"],
            "revenue_posted": f.revenue.credits_posted,
            "costs": f.costs,
        },
    }
