"""Bulk history for `extbill bench --history N`: N settled calls written as serve writes them.

Rows are generated in Python and inserted with executemany in large transactions (a call
through tx_calls costs ~0.3 ms; two million of them would take ten minutes): the same
columns, the same transfer pairs (a reservation, then its post or void) and the same
kept counters as route + settle would leave, checked afterwards by check_counters.
Spread: a year of calls, half of them on the first number (a reseller's busiest line),
the rest over every number; 80% charged to a funded extension, 85% answered.
"""

from __future__ import annotations

import random
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from fastagi.core.rating import Tariff, billed_seconds, cost
from fastagi.store.shared_texts import DESTS
from fastagi.store.tariff_snapshots import tariff_id, tariff_json
from fastagi.store.tx_ledger import FUNDING_ACCOUNT_ID, REVENUE_ACCOUNT_ID

CHUNK_CALLS = 50_000  # calls per executemany batch and transaction
DAY_MS = 86_400_000
BUSY_SHARE = 0.5  # of the calls, on the first number
EXT_SHARE, ANSWERED_SHARE = 0.8, 0.85
GRANT_S = 900  # every seeded call was granted this much (talk is at most 600 s)

_CALL_COLS = (
    "billing_id, number_id, extension_id, account_id, caller, channel, linkedid, dest_id, charged, "
    "start_ms, granted_s, reserved, state, answer_ms, end_ms, talk_s, billed_s, "
    "cost, disposition, cause, settled_by, settled_ms, renewals, grant_final, callee, tariff_id"
)
_CALL_SQL = f"INSERT INTO calls ({_CALL_COLS}) VALUES ({','.join('?' * 26)})"
_TRANSFER_SQL = (
    "INSERT INTO transfers (seq, id, kind, debit_account_id, credit_account_id, amount, pending_id, code, "
    "ref, created_ms) VALUES (?,?,?,?,?,?,?,?,?,?)"
)


@dataclass(frozen=True, slots=True)
class _Line:
    """Where a call can be charged: a number's main account or one funded extension."""

    number_id: int
    extension_id: int | None
    account_id: int
    dest_id: int  # its Dial string's row in `dests` (store/shared_texts.py)
    tariff: Tariff
    tariff_id: int


def _lines(conn: sqlite3.Connection) -> tuple[list[list[_Line]], list[_Line]]:
    """Per number: its funded extensions' lines; and every number's main line."""
    tid: dict[str, int] = {}

    def snapshot(t: Tariff) -> int:
        body = tariff_json(t)
        if body not in tid:
            tid[body] = tariff_id(conn, body)
        return tid[body]

    plans = {
        r[0]: Tariff(*r[1:])
        for r in conn.execute(
            "SELECT id, per_minute, initial_s, increment_s, connect_fee, grace_s, max_call_s FROM plans"
        )
    }
    mains, exts = [], []
    numbers = conn.execute("SELECT id, account_id, plan_id, default_dest FROM numbers ORDER BY id").fetchall()
    for nid, acc, pid, dest in numbers:
        t = plans[pid]
        mains.append(_Line(nid, None, acc, DESTS.id_of(conn, dest or "PJSIP/operator"), t, snapshot(t)))
        rows = conn.execute(
            "SELECT e.id, e.account_id, coalesce(e.plan_id, ?), e.dest FROM extensions e "
            "JOIN accounts a ON a.id = e.account_id WHERE e.number_id = ? AND a.credits_posted >= 1000000 "
            "ORDER BY e.id",
            (pid, nid),
        ).fetchall()
        exts.append(
            [_Line(nid, e, a, DESTS.id_of(conn, d), plans[p], snapshot(plans[p])) for e, a, p, d in rows]
        )
    return exts, mains


def seed_history(
    conn: sqlite3.Connection, n: int, end_ms: int, *, days: int = 365, seed: int = 7
) -> dict[str, int]:
    """Add n settled calls started over `days` days before end_ms (and the recharges that
    paid them, dated before the first) to a seeded bench database; returns what was added."""
    rng = random.Random(seed)
    conn.execute("BEGIN IMMEDIATE")
    exts, mains = _lines(conn)
    conn.execute("COMMIT")
    seq0 = conn.execute("SELECT coalesce(max(seq), 0) FROM transfers").fetchone()[0]
    accounts = sorted({ln.account_id for ln in mains} | {ln.account_id for e in exts for ln in e})
    # recharges take the first seqs: written last (their amounts are the calls' total), shown first
    seq = seq0 + len(accounts)
    start_ms0 = end_ms - days * DAY_MS
    step = days * DAY_MS / max(n, 1)
    posted: dict[int, int] = defaultdict(int)
    answered_n = 0
    transfers: list[tuple[Any, ...]]
    for lo in range(0, n, CHUNK_CALLS):
        calls, transfers = [], []
        for i in range(lo, min(n, lo + CHUNK_CALLS)):
            k = 0 if rng.random() < BUSY_SHARE else rng.randrange(len(mains))
            line = rng.choice(exts[k]) if exts[k] and rng.random() < EXT_SHARE else mains[k]
            start = int(start_ms0 + i * step) + rng.randrange(1000)
            bid = f"{start // 1000}.{i}"
            answered = rng.random() < ANSWERED_SHARE
            talk = rng.randrange(3, 600) if answered else 0
            ring = rng.randrange(1_000, 15_000)
            paid = cost(talk, line.tariff) if answered else 0
            reserved = cost(GRANT_S, line.tariff)
            end_ms = start + ring + talk * 1000
            settled_ms = end_ms + 40
            pid = f"call:{bid}"  # as serve writes a settled call: no linkedid, channel, callee (tx_calls)
            calls.append((
                bid, line.number_id, line.extension_id, line.account_id,
                f"138{rng.randrange(100_000_000):08d}", None, None, line.dest_id,
                "ext" if line.extension_id else "main", start, GRANT_S, reserved,
                "rated" if answered else "unanswered",
                start + ring if answered else None, end_ms, talk,
                billed_seconds(talk, line.tariff) if answered else 0, paid,
                "ANSWER" if answered else "NOANSWER", "16", "ami", settled_ms, 0, 1,
                None, line.tariff_id,
            ))  # fmt: skip
            kind = "post" if answered else "void"
            transfers.append(
                (
                    seq + 1,
                    pid,
                    "pending",
                    line.account_id,
                    REVENUE_ACCOUNT_ID,
                    reserved,
                    None,
                    "call",
                    None,  # the billing id is the id's tail (store/rows.py call_ref)
                    start,
                )
            )
            transfers.append((seq + 2, f"{pid}:{kind}", kind, line.account_id, REVENUE_ACCOUNT_ID, paid, pid, "call", None, settled_ms))  # fmt: skip
            seq += 2
            posted[line.account_id] += paid
            answered_n += answered
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_TRANSFER_SQL, transfers)  # first: a call references its reservation
        conn.executemany(_CALL_SQL, calls)
        conn.execute("COMMIT")
    _pay(conn, accounts, posted, seq0, start_ms0 - DAY_MS)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(  # the kept count of settled calls (tx_calls.settle's)
        "INSERT INTO call_counts (state, settled_by, calls) VALUES (?, 'ami', ?) "
        "ON CONFLICT (state, settled_by) DO UPDATE SET calls = call_counts.calls + excluded.calls",
        [("rated", answered_n), ("unanswered", n - answered_n)],
    )
    conn.execute("COMMIT")
    return {"calls": n, "transfers": 2 * n + len(accounts)}


def _pay(conn: sqlite3.Connection, accounts: list[int], posted: dict[int, int], seq0: int, at: int) -> None:
    """The recharges that paid the history, and every counter the calls moved."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        _TRANSFER_SQL,
        [(seq0 + 1 + j, f"ref:bench-history-{seq0}-{a}", "posted", FUNDING_ACCOUNT_ID, a, posted[a], None,
          "recharge", f"bench-history-{seq0}-{a}", at) for j, a in enumerate(accounts)],
    )  # fmt: skip
    conn.executemany(
        "UPDATE accounts SET credits_posted = credits_posted + ?, debits_posted = debits_posted + ?, "
        "spent = spent + ? WHERE id = ?",
        [(posted[a], posted[a], posted[a], a) for a in accounts],
    )
    total = sum(posted[a] for a in accounts)
    conn.execute(
        "UPDATE accounts SET debits_posted = debits_posted + ? WHERE id = ?", (total, FUNDING_ACCOUNT_ID)
    )
    conn.execute(
        "UPDATE accounts SET credits_posted = credits_posted + ? WHERE id = ?", (total, REVENUE_ACCOUNT_ID)
    )
    conn.execute("COMMIT")
