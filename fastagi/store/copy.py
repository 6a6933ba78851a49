"""`extbill db copy SQLITE_FILE postgresql://...`: move a ledger from SQLite to PostgreSQL.

One PostgreSQL transaction: the schema is created if missing, a target holding anything
of its own is refused, every table is streamed over (COPY), identity counters are moved
past the copied ids, and the ledger's invariants are checked on the copy before it
commits (the check of `extbill db check`: double entry, no overdraw, every account's
counters equal its transfers, each reservation resolved at most once). A failed check
leaves the target as it was. The source is only read (serve should be stopped, or it
keeps writing to a file that is no longer the ledger).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg

from fastagi.core.ledger_check import ledger_discrepancies
from fastagi.store.base import StoreError
from fastagi.store.factory import redact
from fastagi.store.ledger_check import ledger_facts
from fastagi.store.pg import migrate, scalar
from fastagi.store.pg_conn import PgConn, configure_types, row_factory
from fastagi.store.sqlite import SCHEMA_VERSION

COPY_BATCH_ROWS = 5000  # rows read from SQLite at a time

# Every table, parents before children (foreign keys), with its identity column if any.
TABLES: tuple[tuple[str, str | None], ...] = (
    ("accounts", "id"),
    ("plans", "id"),
    ("plan_rates", None),
    ("numbers", "id"),
    ("extensions", "id"),
    ("transfers", "seq"),
    ("suspension_events", "id"),
    ("tariffs", "id"),
    ("dests", "id"),
    ("calls", None),
    ("call_counts", None),
    ("archives", "id"),
    ("supervisor_lease", None),
    ("period_closes", None),
    ("outbox", "id"),
    ("users", "id"),
    ("web_sessions", None),
    ("form_tokens", None),
    ("api_keys", "id"),
    ("api_requests", None),
    ("audit_log", "id"),
    ("store_identity", None),
)
ORDER = {"transfers": "seq"}  # a resolution's reservation (pending_id) comes before it


class CopyError(StoreError):
    pass


def copy_sqlite_to_pg(source: str, target: str) -> dict[str, int]:
    """Copy every row; the rows copied per table. Raises CopyError (nothing written)."""
    src = _open_source(source)
    try:
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        with psycopg.connect(target, autocommit=True, row_factory=row_factory) as pg:
            configure_types(pg)
            migrate(pg, create=True, shown=redact(target))
            with pg.transaction():
                _refuse_non_empty(pg, target)
                pg.execute("DELETE FROM accounts")  # the house accounts: the source has its own
                if "store_identity" in tables:
                    pg.execute("DELETE FROM store_identity")  # the same ledger: its archives stay readable
                counts = {t: _copy_table(src, pg, t) for t, _ in TABLES if t in tables}
                for table, column in TABLES:
                    if column and table in tables:
                        pg.execute(
                            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                            f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
                        )
                check_ledger(pg)
                _check_counts(pg, counts)
    except psycopg.Error as exc:
        raise CopyError(f"copy to {redact(target)} failed, nothing written: {_first(exc)}") from None
    finally:
        src.close()
    return counts


def _open_source(source: str) -> sqlite3.Connection:
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        version = src.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise CopyError(f"cannot read {source}: {exc}") from None
    if version != SCHEMA_VERSION:
        src.close()
        raise CopyError(
            f"{source} has schema version {version}, this extbill copies version {SCHEMA_VERSION} "
            f"(migrate it first: extbill db init --db {source})"
        )
    return src


def _refuse_non_empty(pg: psycopg.Connection[Any], target: str) -> None:
    for table in ("transfers", "plans", "numbers", "calls"):
        if scalar(pg, f"SELECT EXISTS (SELECT 1 FROM {table})"):
            raise CopyError(
                f"{redact(target)} is not empty (its {table} table has rows); copy into a new database"
            )
    if scalar(pg, "SELECT count(*) FROM accounts WHERE id > 2"):
        raise CopyError(f"{redact(target)} is not empty (it has accounts); copy into a new database")


def _copy_table(src: sqlite3.Connection, pg: psycopg.Connection[Any], table: str) -> int:
    cur = src.execute(f"SELECT * FROM {table} ORDER BY {ORDER.get(table, 'rowid')}")
    cols = ", ".join(d[0] for d in cur.description)
    n = 0
    with pg.cursor().copy(f"COPY {table} ({cols}) FROM STDIN") as out:
        while rows := cur.fetchmany(COPY_BATCH_ROWS):
            for row in rows:
                out.write_row(row)
            n += len(rows)
    return n


def _check_counts(pg: psycopg.Connection[Any], counts: dict[str, int]) -> None:
    for table, n in counts.items():
        have = scalar(pg, f"SELECT count(*) FROM {table}")
        if have != n:
            raise CopyError(f"copy check failed: {table} has {have} rows, the source {n}")


def check_ledger(pg: psycopg.Connection[Any]) -> None:
    """The ledger check of `extbill db check` (store/ledger_check.py) on the copy; CopyError if broken."""
    conn: Any = PgConn(pg)  # the sqlite3 face the store's read functions are written for
    found = ledger_discrepancies(ledger_facts(conn))
    if found:
        raise CopyError(f"ledger check failed, nothing written: {found[0]} ({len(found)} discrepancies)")


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
