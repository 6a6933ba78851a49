"""Doctor's database check: the SQLite file opened read-only, never created or migrated
(a postgresql:// URL: pg_database.py)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from urllib.parse import quote

from fastagi.admin.doctor.findings import FAIL, OK, WARN, Finding
from fastagi.admin.doctor.pg_database import check_pg_database
from fastagi.store.factory import is_pg
from fastagi.store.sqlite import SCHEMA_VERSION

EXTBILL_TABLES = ("accounts", "transfers", "plans", "numbers", "extensions", "calls")


@dataclass
class DbFacts:
    langs: set[str] = field(default_factory=set)
    number: str | None = None


def check_database(path: str) -> tuple[Finding, DbFacts]:
    """Opens the database read-only; never creates or migrates it."""
    facts = DbFacts()
    if is_pg(path):
        return check_pg_database(path, facts), facts
    init = f"extbill db init --db {path}"
    missing = _not_a_file(path, init)
    if missing is not None:
        return missing, facts
    try:
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error as exc:
        return Finding(
            FAIL,
            "database",
            f"database: cannot open {path}: {exc}",
            f"check the file's permissions: the user running doctor must read {path} and its directory",
        ), facts
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        wrong = _schema_problem(path, version, tables, init)
        if wrong is not None:
            return wrong, facts
        rows = conn.execute("SELECT number, lang FROM numbers ORDER BY id").fetchall()
    except sqlite3.Error as exc:
        return Finding(
            FAIL,
            "database",
            f"database: {path} cannot be read: {exc}",
            "pass extbill's database with --db (or EXTBILL_DB / db in --config)",
        ), facts
    finally:
        conn.close()
    facts.langs = {lang for _, lang in rows}
    facts.number = rows[0][0] if rows else None
    if not rows:
        return Finding(
            WARN,
            "database",
            f"database: {path} is an extbill database (schema version {version}) with no 400 numbers yet",
            "extbill number add 400XXXXXXX --name NAME --plan PLAN (see extbill number add --help)",
        ), facts
    return Finding(
        OK,
        "database",
        f"database: {path} is an extbill database (schema version {version}, "
        f"{len(rows)} number{'s' if len(rows) != 1 else ''}, languages "
        f"{', '.join(sorted(facts.langs))})",
    ), facts


def _not_a_file(path: str, init: str) -> Finding | None:
    if not os.path.exists(path):
        return Finding(
            FAIL,
            "database",
            f"database: no file at {path}",
            f"{init}   (or start extbill serve, which creates it; or pass --db / "
            "EXTBILL_DB / db in --config)",
        )
    if os.path.isdir(path):
        return Finding(
            FAIL,
            "database",
            f"database: {path} is a directory",
            "pass the database file with --db (or EXTBILL_DB / db in --config)",
        )
    return None


def _schema_problem(path: str, version: int, tables: set[str], init: str) -> Finding | None:
    """An empty, foreign, older or newer database: what is wrong with it, or None."""
    if version == 0 and not tables:
        return Finding(FAIL, "database", f"database: {path} is empty (no extbill schema)", init)
    if version == 0 or not set(EXTBILL_TABLES) <= tables:
        return Finding(
            FAIL,
            "database",
            f"database: {path} is an SQLite database, but not an extbill one",
            "pass extbill's database with --db (or EXTBILL_DB / db in --config)",
        )
    if version < SCHEMA_VERSION:
        return Finding(
            FAIL,
            "database",
            f"database: {path} has schema version {version}, this extbill needs {SCHEMA_VERSION}",
            f"{init}   (migrates it)",
        )
    if version > SCHEMA_VERSION:
        return Finding(
            FAIL,
            "database",
            f"database: {path} has schema version {version}, newer than this extbill ({SCHEMA_VERSION})",
            "upgrade extbill to the version that wrote this database",
        )
    return None
