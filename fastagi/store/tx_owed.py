"""What a number owes of its monthly minimum charges, collected from money coming into main.

Separate from tx_money.py so that tx_admin.py (recharges) can collect without importing
the money tasks that build on it.
"""

from __future__ import annotations

import sqlite3

from fastagi.core.period import collect
from fastagi.store.tx_ledger import REVENUE_ACCOUNT_ID, load_account, transfer, update_suspension

MINIMUM_CODE = "monthly-minimum"  # the transfers' code: statements show it with the month as ref


def collect_owed(conn: sqlite3.Connection, number_id: int, source_id: str) -> int:
    """Pay what the number owes, oldest month first, from main's available money.

    `source_id` is the transfer that just brought the money in: each collection transfer
    is keyed by month and source, so repeating the source collects nothing more.
    Returns what was collected.
    """
    n = conn.execute("SELECT number, account_id, owed FROM numbers WHERE id=?", (number_id,)).fetchone()
    if n is None or n["owed"] == 0:
        return 0
    collected = 0
    for p in conn.execute(
        "SELECT month, owed_left FROM period_closes WHERE number_id=? AND owed_left > 0 ORDER BY month",
        (number_id,),
    ).fetchall():
        amount = collect(p["owed_left"], load_account(conn, n["account_id"]).available)
        if amount == 0:
            break
        result = transfer(
            conn,
            f"minimum:{n['number']}:{p['month']}:owed:{source_id}",
            n["account_id"],
            REVENUE_ACCOUNT_ID,
            amount,
            MINIMUM_CODE,
            f"{p['month']} owed",
        )
        if not result.created:
            continue
        conn.execute(
            "UPDATE period_closes SET owed_left = owed_left - ? WHERE number_id=? AND month=?",
            (amount, number_id, p["month"]),
        )
        conn.execute("UPDATE numbers SET owed = owed - ? WHERE id=?", (amount, number_id))
        collected += amount
    if collected:
        update_suspension(conn, load_account(conn, n["account_id"]), reason="owed-paid", number_id=number_id)
    return collected
