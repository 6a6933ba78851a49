"""The kept counters checked against the transfers they summarise.

Reads show an account's counters (balance, reserved, spent) as kept in its row, maintained
by the transaction that writes each transfer (tx_ledger.py), so a read costs the same
however long the history. This check is the other half of that bargain: it rebuilds every
counter from the immutable transfers and lists each one that differs. Archived transfers
(store/archive.py) count through their live summary: kind 'posted', code 'archive'.
"""

from __future__ import annotations

import sqlite3

SHOWN_MAX = 50  # discrepancies listed at most

COUNTERS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted", "spent")

# Per account: a reservation counts as pending while nothing resolves it; posted money is
# the plain transfers and the posts; spent is the posts it paid (and archived posts).
_REBUILD_SQL = """
SELECT a.id, a.kind, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, a.spent,
       coalesce(s.dp, 0), coalesce(s.dpo, 0), coalesce(s.cp, 0), coalesce(s.cpo, 0), coalesce(s.sp, 0)
FROM accounts a LEFT JOIN (
  SELECT acc, sum(dp) AS dp, sum(dpo) AS dpo, sum(cp) AS cp, sum(cpo) AS cpo, sum(sp) AS sp FROM (
    SELECT t.debit_account_id AS acc,
           CASE WHEN t.kind = 'pending' AND NOT EXISTS
                (SELECT 1 FROM transfers r WHERE r.pending_id = t.id) THEN t.amount ELSE 0 END AS dp,
           CASE WHEN t.kind IN ('posted', 'post') THEN t.amount ELSE 0 END AS dpo,
           0 AS cp, 0 AS cpo,
           CASE WHEN t.kind = 'post' OR t.code = 'archive' THEN t.amount ELSE 0 END AS sp
    FROM transfers t
    UNION ALL
    SELECT t.credit_account_id,
           0, 0,
           CASE WHEN t.kind = 'pending' AND NOT EXISTS
                (SELECT 1 FROM transfers r WHERE r.pending_id = t.id) THEN t.amount ELSE 0 END,
           CASE WHEN t.kind IN ('posted', 'post') THEN t.amount ELSE 0 END,
           0
    FROM transfers t) u
  GROUP BY acc) s ON s.acc = a.id
ORDER BY a.id
"""


def check_counters(conn: sqlite3.Connection) -> list[str]:
    """Every kept account counter that differs from the sum rebuilt from the transfers, one
    line each (at most SHOWN_MAX); empty when all agree."""
    found: list[str] = []
    for row in conn.execute(_REBUILD_SQL).fetchall():
        kept, rebuilt = row[2:7], row[7:12]
        for name, k, r in zip(COUNTERS, kept, rebuilt, strict=True):
            if k != r:
                # worded as core/ledger_check.py words the four it also checks
                found.append(f"account {row[0]}: {name} is {k} on its row, {r} from its transfers")
    missing = conn.execute(
        "SELECT count(*) FROM transfers t WHERE NOT EXISTS (SELECT 1 FROM accounts a "
        "WHERE a.id = t.debit_account_id) OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.credit_account_id)"
    ).fetchone()[0]
    if missing:
        found.append(f"{missing} transfers name an account that does not exist")
    return (found + _call_count_problems(conn))[:SHOWN_MAX]


def _call_count_problems(conn: sqlite3.Connection) -> list[str]:
    """The kept count of settled calls per (state, path) against the rows: equal, or, once
    calls were archived (their count stays), no lower."""
    archived = conn.execute("SELECT count(*) FROM archives").fetchone()[0] > 0
    rows = conn.execute(
        "SELECT state, coalesce(settled_by, 'unknown'), count(*) FROM calls WHERE state <> 'reserved' "
        "GROUP BY state, coalesce(settled_by, 'unknown')"
    ).fetchall()
    kept = {(s, b): n for s, b, n in conn.execute("SELECT state, settled_by, calls FROM call_counts")}
    live = {(s, b): n for s, b, n in rows}
    out = []
    for key in sorted(set(kept) | set(live)):
        k, n = kept.get(key, 0), live.get(key, 0)
        if k < n or (k > n and not archived):
            out.append(f"settled calls {key[0]} by {key[1]}: {k} kept but {n} in the call records")
    return out


def account_labels(conn: sqlite3.Connection) -> dict[int, str]:
    """What each account is, as an operator knows it: '4008001234 main', '4008001234 ext 1',
    'revenue', 'funding' (a removed extension's account keeps its number and key)."""
    labels = {i: kind for i, kind in conn.execute("SELECT id, kind FROM accounts")}
    for acc, number in conn.execute("SELECT account_id, number FROM numbers"):
        labels[acc] = f"{number} main"
    for acc, number, key in conn.execute(
        "SELECT e.account_id, n.number, e.key FROM extensions e JOIN numbers n ON n.id = e.number_id"
    ):
        labels[acc] = f"{number} ext {key}"
    return labels
