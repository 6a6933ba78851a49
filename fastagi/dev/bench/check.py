"""After a run: is the ledger consistent, and was every granted call settled exactly once?"""

from __future__ import annotations

import sqlite3
from typing import Any

from fastagi.store.tx_ledger import REVENUE_ACCOUNT_ID, all_accounts


def check_ledger(db: str, expect: dict[str, int]) -> dict[str, Any]:
    """Read the database of a finished run (the server stopped).

    `expect` is the load generator's own count: granted, answered, unanswered, talk_s_total.
    """
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        accounts = all_accounts(conn)
        total = sum(a.credits_posted - a.debits_posted for a in accounts)
        pending_left = sum(a.debits_pending + a.credits_pending for a in accounts)
        overdrawn = sum(
            1 for a in accounts if a.guarded and a.debits_pending + a.debits_posted > a.credits_posted
        )
        q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        calls = q("SELECT count(*) FROM calls")
        open_calls = q("SELECT count(*) FROM calls WHERE state='reserved'")
        pendings = q("SELECT count(*) FROM transfers WHERE kind='pending' AND code='call'")
        resolving = q("SELECT count(*) FROM transfers WHERE pending_id IS NOT NULL")
        # every call's reservation has exactly one resolving transfer
        not_once = q(
            "SELECT count(*) FROM calls c WHERE (SELECT count(*) FROM transfers t "
            "WHERE t.pending_id = c.pending_id) != 1"
        )
        by_state = dict(conn.execute("SELECT state, count(*) FROM calls GROUP BY state").fetchall())
        by_path = dict(
            conn.execute(
                "SELECT coalesce(settled_by, '-'), count(*) FROM calls GROUP BY settled_by"
            ).fetchall()
        )
        talk_s = q("SELECT coalesce(sum(talk_s), 0) FROM calls WHERE state='rated'")
        cost = q("SELECT coalesce(sum(cost), 0) FROM calls")
        revenue = next(a for a in accounts if a.id == REVENUE_ACCOUNT_ID)
    finally:
        conn.close()
    ledger_consistent = total == 0 and pending_left == 0 and overdrawn == 0 and open_calls == 0
    # every granted call (as the load generator counted them) has exactly one resolving transfer
    settled_exactly_once = (
        calls == expect["granted"]
        and pendings == calls
        and resolving == calls
        and not_once == 0
        and open_calls == 0
    )
    # ... and was resolved the way its simulated end calls for: answered ones rated for the
    # talk time simulated, unanswered ones voided; revenue is the sum of the calls' costs
    talk_time_matches = talk_s == expect["talk_s_total"]
    revenue_matches_costs = revenue.credits_posted == cost and revenue.credits_pending == 0
    billed_as_simulated = (
        by_state.get("rated", 0) == expect["answered"]
        and by_state.get("unanswered", 0) == expect["unanswered"]
        and talk_time_matches
        and revenue_matches_costs
    )
    return {
        "ledger_consistent": ledger_consistent,
        "settled_exactly_once": settled_exactly_once,
        "billed_as_simulated": billed_as_simulated,
        "talk_time_matches": talk_time_matches,
        "revenue_matches_costs": revenue_matches_costs,
        "ledger": {
            "sum_credits_minus_debits": total,
            "pending_left": pending_left,
            "overdrawn_accounts": overdrawn,
            "calls": calls,
            "open_calls": open_calls,
            "reservations": pendings,
            "resolutions": resolving,
            "calls_not_resolved_once": not_once,
            "calls_by_state": by_state,
            "calls_by_settlement_path": by_path,
            "talk_s_rated": talk_s,
            "talk_s_expected": expect["talk_s_total"],
            "revenue_posted": revenue.credits_posted,
            "costs": cost,
        },
    }
