"""Reading an archive file (store/archive.py writes it) beside the live store.

An archive is an SQLite file with the live `calls` and `transfers` columns; its pages are
read with the live keyset statements (pages.py) and merged with the live page, so
`calls --archive FILE` and `statement --archive FILE` page through both as one history.
The live summary transfers that stand for the archived ones are left out of such a page.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from fastagi.store.base import StoreError
from fastagi.store.pages import calls_rows, statement_rows

ARCHIVE_FORMAT = 2  # archive_meta.format of the files this code writes (and reads)
ARCHIVE_FORMATS_READ = (1, 2)  # 1: times as ISO 8601 text (schema version 5)

# Format 1 read through views with the live columns of today (migrations/0006): temporary
# views shadow the file's tables for this read-only connection, so the same statements read
# it. Its calls hold their Dial string: a call's dest_id there is its own billing id.
_ISO_MS = "CAST(strftime('%s', {c}) AS INTEGER) * 1000 + CAST(substr({c}, 21, 3) AS INTEGER)"
_FORMAT_1_VIEWS = f"""
CREATE TEMP VIEW calls AS SELECT billing_id, number_id, extension_id, account_id, caller, channel,
    linkedid, billing_id AS dest_id, charged, {_ISO_MS.format(c="start_at")} AS start_ms, granted_s, reserved, state,
    {_ISO_MS.format(c="answer_at")} AS answer_ms, {_ISO_MS.format(c="end_at")} AS end_ms, talk_s,
    billed_s, cost, disposition, cause, settled_by, {_ISO_MS.format(c="settled_at")} AS settled_ms,
    renewals, grant_final, supervised, callee, tariff_id FROM main.calls;
CREATE TEMP VIEW dests AS SELECT billing_id AS id, dest FROM main.calls;
CREATE TEMP VIEW transfers AS SELECT seq, id, kind, debit_account_id, credit_account_id, amount,
    pending_id, code, ref, {_ISO_MS.format(c="created_at")} AS created_ms FROM main.transfers;
"""


def store_id(live: sqlite3.Connection) -> str | None:
    """The live store's own id (migrations/0007); None on a store made before it."""
    row = live.execute("SELECT id FROM store_identity").fetchone()
    return row[0] if row else None


def archive_store(conn: sqlite3.Connection) -> str | None:
    """The id of the store that wrote this archive; None for a file older than that record."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(archive_meta)")}
    if "store" not in cols:
        return None
    row = conn.execute("SELECT store FROM archive_meta").fetchone()
    return row[0] if row else None


def check_same_store(path: str, written_by: str | None, live: str | None) -> None:
    """An archive names its store's numbers and accounts by their ids: another store's file
    would be read (or written) as this one's history, under the wrong numbers."""
    if written_by is not None and live is not None and written_by != live:
        raise StoreError(
            f"{path} is an archive of another extbill store (its numbers and accounts are not this "
            "store's): archive this store to a file of its own"
        )


def open_archive(path: str, live: sqlite3.Connection) -> sqlite3.Connection:
    """The archive file, read only; one clear error when it is missing, not an archive, or
    an archive of another store than `live`."""
    if not os.path.isfile(path):
        raise StoreError(f"no archive file {path}")
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        row = conn.execute("SELECT format FROM archive_meta").fetchone()
        written_by = archive_store(conn)
    except sqlite3.Error:
        raise StoreError(f"{path} is not an extbill archive") from None
    if row is None or row[0] not in ARCHIVE_FORMATS_READ:
        conn.close()
        raise StoreError(f"{path} is not an extbill archive of format {ARCHIVE_FORMAT}")
    try:
        check_same_store(path, written_by, store_id(live))
    except StoreError:
        conn.close()
        raise
    if row[0] == 1:
        conn.executescript(_FORMAT_1_VIEWS)
    return conn


def archived_statement(
    live: sqlite3.Connection, path: str, account_id: int, limit: int, before_seq: int | None
) -> list[dict[str, Any]]:
    """A page of the account's live and archived transfers, newest first, without the live
    summaries of this archive (its rows stand in for them)."""
    conn = open_archive(path, live)
    try:
        old = statement_rows(conn, account_id, limit, before_seq)
        summaries = {r[0] for r in conn.execute("SELECT id FROM summaries")}
    finally:
        conn.close()
    # read as many more live rows as summaries may be dropped, so none is skipped
    rows = [
        r
        for r in statement_rows(live, account_id, limit + len(summaries), before_seq)
        if r["id"] not in summaries
    ]
    seen = {r["id"] for r in rows}
    rows += [r for r in old if r["id"] not in seen]
    rows.sort(key=lambda r: r["seq"], reverse=True)
    return rows[:limit]


def archived_calls(
    conn_live: sqlite3.Connection,
    path: str,
    live: list[dict[str, Any]],
    number_id: int,
    extension_id: int | None,
    since: str | None,
    limit: int,
    before: tuple[int, str] | None,
) -> list[dict[str, Any]]:
    """The live page merged with the archive's page of the same calls, newest first."""
    conn = open_archive(path, conn_live)
    try:
        old = calls_rows(conn, number_id, extension_id, since, limit, before)
    finally:
        conn.close()
    seen = {r["billing_id"] for r in live}  # an interrupted archive run may leave both copies
    rows = live + [r for r in old if r["billing_id"] not in seen]
    rows.sort(key=lambda r: (r["start_ms"], r["billing_id"]), reverse=True)
    return rows[:limit]
