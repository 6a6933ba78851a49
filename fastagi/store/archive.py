"""`extbill db archive`: settled calls and their transfers moved to an archive file.

One batch of one number's calls per transaction (the write lock is held briefly, call setup
goes on between batches). Each batch is first copied into the archive file and committed
there, then deleted from the live store in one transaction that also writes, per pair of
accounts, one summary transfer (kind 'posted', code 'archive') of what the archived
transfers posted. Counters are not touched: the archived rows had exactly the summary's
effect, so balances, spend and the ledger check are unchanged. Transfers are immutable:
the delete trigger lets a call's transfers go only while this transaction holds the
archive_guard row. A run interrupted between the two commits leaves rows in both files;
running it again copies nothing twice (INSERT OR IGNORE) and deletes them.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from fastagi.core.clock import iso_from_ms
from fastagi.core.period import month_of
from fastagi.runtime.clock import now_iso
from fastagi.store.archive_read import ARCHIVE_FORMAT, archive_store, check_same_store, store_id
from fastagi.store.base import StoreError
from fastagi.store.pages import TRANSFER_COLS
from fastagi.store.rows import day_ms
from fastagi.store.tx_quota import chunk_ids

ARCHIVE_BATCH_CALLS = 2_000  # calls moved per transaction
_IN_MAX = 400  # ids per IN (...) list: below every engine's parameter limit

_ARCHIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS archive_meta (format INTEGER NOT NULL, store TEXT);
CREATE TABLE IF NOT EXISTS transfers ({tcols}, PRIMARY KEY (seq), UNIQUE (id));
CREATE TABLE IF NOT EXISTS tariffs (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dests (id INTEGER PRIMARY KEY, dest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS summaries (id TEXT PRIMARY KEY);
CREATE INDEX IF NOT EXISTS transfers_by_debit ON transfers(debit_account_id, seq);
CREATE INDEX IF NOT EXISTS transfers_by_credit ON transfers(credit_account_id, seq);
"""


def check_archivable(conn: sqlite3.Connection, before: str) -> None:
    """Refuse (changing nothing) while a call started before the day is not settled, or a
    number with a monthly minimum has calls in a month before it that is not closed yet
    (closing the month reads those calls' cost)."""
    before_ms = day_ms(before)
    open_call = conn.execute(
        "SELECT billing_id, start_ms FROM calls WHERE state = 'reserved' AND start_ms < ? ORDER BY start_ms",
        (before_ms,),
    ).fetchone()
    if open_call is not None:
        raise StoreError(
            f"call {open_call[0]} (started {iso_from_ms(open_call[1])}) is not settled yet: nothing was archived; "
            "archive an earlier day, or wait for it to be settled"
        )
    for nid, number, tz in conn.execute(
        "SELECT id, number, time_zone FROM numbers WHERE monthly_minimum > 0"
    ).fetchall():
        first = conn.execute(
            "SELECT min(start_ms) FROM calls WHERE number_id = ? AND start_ms < ?", (nid, before_ms)
        ).fetchone()[0]
        last = conn.execute(
            "SELECT max(start_ms) FROM calls WHERE number_id = ? AND start_ms < ?", (nid, before_ms)
        ).fetchone()[0]
        if first is None:
            continue
        month, end = month_of(first, tz), month_of(last, tz)
        while month <= end:  # 'YYYY-MM' strings order as the months do
            if (
                conn.execute(
                    "SELECT 1 FROM period_closes WHERE number_id = ? AND month = ?", (nid, month)
                ).fetchone()
                is None
            ):
                raise StoreError(
                    f"number {number} has calls in {month}, whose monthly minimum is not closed yet: "
                    "nothing was archived; close it first (extbill period close)"
                )
            month = _next_month(month)


def _next_month(month: str) -> str:
    """The month after 'YYYY-MM'."""
    year, mon = int(month[:4]), int(month[5:7])
    return f"{year + 1:04d}-01" if mon == 12 else f"{year:04d}-{mon + 1:02d}"


def check_target(live: sqlite3.Connection, path: str) -> None:
    """Refuse, changing nothing, a FILE that could not take this store's calls: a directory,
    a missing directory, a file that is not an extbill archive (the live database itself
    included), an archive of an older format or of another store. Run before anything is
    moved, so a wrong path is told on the first run, even one with nothing to archive."""
    _check_place(path)
    if not os.path.exists(path):
        return
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read archive {path}: {exc}") from None
    try:
        _check_file(conn, path, store_id(live))
    except sqlite3.Error:
        raise StoreError(f"{path} is not an extbill archive") from None
    finally:
        conn.close()


def _check_place(path: str) -> None:
    if os.path.isdir(path):
        raise StoreError(f"{path} is a directory, not an archive file")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise StoreError(f"cannot create archive {path}: its directory does not exist")


def _check_file(conn: sqlite3.Connection, path: str, live_id: str | None) -> None:
    """Refuse a file that is neither empty nor an archive of this store in this format."""
    has = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not has:
        return
    if "archive_meta" not in has:
        raise StoreError(f"{path} is not an extbill archive")
    fmt = conn.execute("SELECT format FROM archive_meta").fetchone()
    if fmt is not None and fmt[0] != ARCHIVE_FORMAT:
        raise StoreError(f"{path} is an archive of format {fmt[0]} (an older extbill): archive to a new file")
    check_same_store(path, archive_store(conn), live_id)


def _archive_conn(path: str, call_cols: list[str], live_id: str | None) -> sqlite3.Connection:
    _check_place(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _check_file(conn, path, live_id)
        ccols = ", ".join(c for c in call_cols)
        conn.executescript(
            "BEGIN IMMEDIATE;"
            + _ARCHIVE_SCHEMA.format(tcols=", ".join(TRANSFER_COLS))
            + f"CREATE TABLE IF NOT EXISTS calls ({ccols}, PRIMARY KEY (billing_id));"
            "CREATE INDEX IF NOT EXISTS calls_by_number ON calls(number_id, start_ms);"
            "CREATE INDEX IF NOT EXISTS calls_by_extension ON calls(extension_id, start_ms);"
            "COMMIT;"
        )
        if "store" not in {r[1] for r in conn.execute("PRAGMA table_info(archive_meta)")}:
            conn.execute("ALTER TABLE archive_meta ADD COLUMN store TEXT")  # a file from before the record
        if conn.execute("SELECT count(*) FROM archive_meta").fetchone()[0] == 0:
            conn.execute("INSERT INTO archive_meta (format, store) VALUES (?, ?)", (ARCHIVE_FORMAT, live_id))
        else:  # a file older than the record is this store's from now on
            conn.execute("UPDATE archive_meta SET store = ? WHERE store IS NULL", (live_id,))
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot write archive {path}: {exc}") from None
    except StoreError:
        conn.close()
        raise
    return conn


def _in_chunks(conn: sqlite3.Connection, sql: str, ids: list[str]) -> list[tuple]:
    out: list[tuple] = []
    for i in range(0, len(ids), _IN_MAX):
        part = ids[i : i + _IN_MAX]
        out += conn.execute(sql.format(marks=",".join("?" * len(part))), part).fetchall()
    return out


def _summaries(transfers: list[tuple], before: str, file: str) -> list[tuple]:
    """One posted transfer per (debit, credit) pair with what the archived ones posted, in
    the seq of the pair's newest archived transfer (free once it is gone): a statement shows
    it where that history was."""
    pairs: dict[tuple[int, int], list[int]] = {}
    at: dict[int, int] = {}
    for t in transfers:
        seq, kind, debit, credit, amount, created = t[0], t[2], t[3], t[4], t[5], t[9]
        p = pairs.setdefault((debit, credit), [0, 0])
        p[0] += amount if kind == "post" else 0
        p[1] = max(p[1], seq)
        at[seq] = created
    ref = f"calls before {before} archived to {Path(file).name}"
    return [
        (seq, f"archive:{seq}", "posted", d, c, posted, None, "archive", ref, at[seq])
        for (d, c), (posted, seq) in sorted(pairs.items())
        if posted
    ]


def archive_batch(conn: sqlite3.Connection, before: str, file: str) -> dict[str, Any]:
    """Move up to ARCHIVE_BATCH_CALLS settled calls of one number started before the day."""
    check_archivable(conn, before)
    before_ms = day_ms(before)
    nid = conn.execute(
        "SELECT n.id FROM numbers n WHERE EXISTS (SELECT 1 FROM calls c WHERE c.number_id = n.id "
        "AND c.start_ms < ?) ORDER BY n.id",
        (before_ms,),
    ).fetchone()
    if nid is None:
        return {"calls": 0, "transfers": 0, "summaries": 0}
    cur = conn.execute(
        "SELECT * FROM calls WHERE number_id = ? AND start_ms < ? ORDER BY start_ms LIMIT ?",
        (nid[0], before_ms, ARCHIVE_BATCH_CALLS),
    )
    call_cols = [d[0] for d in cur.description]
    calls = [tuple(r) for r in cur.fetchall()]
    ix = {c: i for i, c in enumerate(call_cols)}
    bids = [r[ix["billing_id"]] for r in calls]
    pending = [p for r in calls for p in chunk_ids(r[ix["billing_id"]], r[ix["renewals"]])]
    tcols = ", ".join(TRANSFER_COLS)
    transfers = _in_chunks(conn, f"SELECT {tcols} FROM transfers WHERE id IN ({{marks}})", pending)
    transfers += _in_chunks(conn, f"SELECT {tcols} FROM transfers WHERE pending_id IN ({{marks}})", pending)
    transfers = [tuple(t) for t in transfers]
    tariffs = _in_chunks(
        conn,
        "SELECT id, body FROM tariffs WHERE id IN ({marks})",
        sorted({r[ix["tariff_id"]] for r in calls}),
    )
    dests = _in_chunks(
        conn, "SELECT id, dest FROM dests WHERE id IN ({marks})", sorted({r[ix["dest_id"]] for r in calls})
    )
    summaries = _summaries(transfers, before, file)
    # 1. the archive file first: a crash after this leaves the rows in both places
    arc = _archive_conn(file, call_cols, store_id(conn))
    try:
        arc.execute("BEGIN IMMEDIATE")
        marks = ",".join("?" * len(call_cols))
        arc.executemany(f"INSERT OR IGNORE INTO calls ({', '.join(call_cols)}) VALUES ({marks})", calls)
        arc.executemany(
            f"INSERT OR IGNORE INTO transfers ({tcols}) VALUES ({','.join('?' * len(TRANSFER_COLS))})",
            transfers,
        )
        arc.executemany("INSERT OR IGNORE INTO tariffs (id, body) VALUES (?, ?)", [tuple(t) for t in tariffs])
        arc.executemany("INSERT OR IGNORE INTO dests (id, dest) VALUES (?, ?)", [tuple(d) for d in dests])
        arc.executemany("INSERT OR IGNORE INTO summaries (id) VALUES (?)", [(s[1],) for s in summaries])
        arc.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot write archive {file}: {exc}") from None
    finally:
        arc.close()
    # 2. the live store: calls, then resolutions, then reservations (references first)
    conn.execute("INSERT INTO archive_guard (id, before) VALUES (1, ?)", (before,))
    for i in range(0, len(bids), _IN_MAX):
        part = bids[i : i + _IN_MAX]
        conn.execute(f"DELETE FROM calls WHERE billing_id IN ({','.join('?' * len(part))})", part)
    resolutions = [(t[1],) for t in transfers if t[6] is not None]
    conn.executemany("DELETE FROM transfers WHERE id = ?", resolutions)
    conn.executemany("DELETE FROM transfers WHERE id = ?", [(t[1],) for t in transfers if t[6] is None])
    conn.executemany(
        f"INSERT INTO transfers ({tcols}) VALUES ({','.join('?' * len(TRANSFER_COLS))})", summaries
    )
    conn.execute("DELETE FROM archive_guard")
    conn.execute(
        "INSERT INTO archives (before, file, calls, transfers, archived_at) VALUES (?,?,?,?,?)",
        (before, os.path.abspath(file), len(calls), len(transfers), now_iso()),
    )
    return {"calls": len(calls), "transfers": len(transfers), "summaries": len(summaries)}
