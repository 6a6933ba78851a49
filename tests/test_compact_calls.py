"""Schema version 6 (migrations/0006_compact_calls.sql): calls and transfers keep their times as
Unix ms and leave out what they derive from their own ids; what every command shows is the
same as it was, for a store upgraded from version 5 and for an archive version 5 wrote.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from test_history import NUMBER, OTHER, _call, _history, _open, _seed, _tx, extbill

from fastagi.core.clock import iso_from_ms, ms_from_iso
from fastagi.store import tx_calls, tx_quota
from fastagi.store.rows import transfer_view
from fastagi.store.sqlite import MIGRATIONS, SCHEMA_PATH

# What a user reads from a store: every listing, both statements, balances, the check.
READS = (
    ("calls", NUMBER, "--json"),
    ("calls", NUMBER),
    ("calls", NUMBER, "--csv"),
    ("calls", NUMBER, "--ext", "1", "--json", "--limit", "5"),
    ("calls", NUMBER, "--since", "2026-02-14", "--json"),
    ("calls", OTHER, "--json"),
    ("statement", NUMBER),
    ("statement", NUMBER, "--json"),
    ("statement", NUMBER, "1", "--json"),
    ("statement", NUMBER, "2", "--json", "--limit", "7"),
    ("balance", NUMBER, "--json"),
    ("number", "show", NUMBER, "--json"),
    ("db", "check"),
)


def _outputs(db: Path) -> dict[tuple[str, ...], tuple[str, str]]:
    out = {}
    for args in READS:
        proc = extbill(*args, db=db)
        out[args] = (proc.stdout, proc.stderr)
    return out


def _rows(conn: sqlite3.Connection, sql: str) -> list[dict[str, Any]]:
    cur = conn.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _no_dest_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "dest_id"} for r in rows]


def _v5_call(r: dict[str, Any], dests: dict[int, str]) -> dict[str, Any]:
    """A version-6 call row as version 5 stored it (times as ISO text, every id spelled out)."""
    iso = {
        k: None if r[f"{k}_ms"] is None else iso_from_ms(r[f"{k}_ms"])
        for k in ("start", "answer", "end", "settled")
    }
    keep = {k: v for k, v in r.items() if k not in ("dest_id", "answer_ms", "end_ms", "settled_ms")}
    return {
        **keep,
        "linkedid": r["linkedid"] or r["billing_id"],
        "dest": dests[r["dest_id"]],
        "pending_id": f"call:{r['billing_id']}",
        **{f"{k}_at": v for k, v in iso.items()},
    }


def _v5_transfer(t: dict[str, Any]) -> dict[str, Any]:
    v = transfer_view(t)
    del v["created_ms"]
    return v


def _as_version_5(src: Path, dst: Path) -> None:
    """The store at src as schema version 5 would hold it: the same rows in its columns."""
    old = sqlite3.connect(src)
    new = sqlite3.connect(dst, isolation_level=None)
    try:
        new.executescript(SCHEMA_PATH.read_text() + "".join(MIGRATIONS[v] + ";" for v in (2, 3, 4, 5)))
        new.execute("PRAGMA user_version = 5")
        dests = dict(old.execute("SELECT id, dest FROM dests").fetchall())
        tables = [
            t
            for (t,) in old.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            if t not in ("dests", "sqlite_sequence", "store_identity")  # tables of versions 6 and 7
        ]
        new.execute("BEGIN")
        new.execute("DELETE FROM accounts")  # the house accounts come with the others
        for table in tables:
            rows = _rows(old, f"SELECT * FROM {table}")
            if table == "calls":
                rows = [_v5_call(r, dests) for r in rows]
            elif table == "transfers":
                rows = [_v5_transfer(t) for t in rows]
            for r in rows:
                new.execute(
                    f"INSERT INTO {table} ({', '.join(r)}) VALUES ({', '.join('?' * len(r))})",
                    tuple(r.values()),
                )
        new.execute("COMMIT")
    finally:
        old.close()
        new.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Three months of calls on main and two extensions, one renewed mid-call and one open."""
    path = tmp_path / "extbill.db"
    conn = _open(path)
    try:
        _seed(conn)
        _history(conn)
        with mock.patch.object(tx_calls, "now_ms", lambda: ms_from_iso("2026-03-28T10:00:00.000Z")):
            d = _tx(conn, tx_calls.route, "1767225600.800", NUMBER, "1", 1, "139", "PJSIP/t", None, 600, True)
        assert d.action == "dial" and not d.final
        assert _tx(conn, tx_quota.renew, "1767225600.800", 1, 600).extended
        _call(conn, "1767225600.801", "2026-03-28T11:00:00.000Z", "", None)  # left open
        conn.execute(  # a call whose linkedid is another channel's
            "UPDATE calls SET linkedid = 'other.1' WHERE billing_id = '1767225600.3'"
        )
    finally:
        conn.close()
    return path


def test_a_version_5_store_upgrades_with_every_output_unchanged(db: Path, tmp_path: Path) -> None:
    """An operator upgrading a store with calls sees every listing, statement and balance
    exactly as before, and the check stays clean."""
    v5 = tmp_path / "v5.db"
    _as_version_5(db, v5)
    conn = sqlite3.connect(v5)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    assert conn.execute("SELECT count(*) FROM calls WHERE start_at IS NOT NULL").fetchone()[0] == 39
    conn.close()
    expected = _outputs(db)
    assert "ledger consistent" in expected[("db", "check")][0]
    assert _outputs(v5) == expected  # the first command upgrades the store
    conn = sqlite3.connect(v5)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == max(MIGRATIONS)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        cols = {r[1] for r in conn.execute("PRAGMA table_info(calls)")}
        assert {"start_at", "answer_at", "end_at", "settled_at", "pending_id", "dest"}.isdisjoint(cols)
        # nothing is derivable twice: the reservations' refs and the linked ids are gone
        assert conn.execute("SELECT count(*) FROM calls WHERE linkedid IS NOT NULL").fetchone()[0] == 1
        assert (
            conn.execute("SELECT count(*) FROM transfers WHERE code = 'call' AND ref IS NOT NULL").fetchone()[
                0
            ]
            == 1  # the renewal's chunk
        )
        # the upgraded rows are the rows this version writes
        a, b = sqlite3.connect(db), conn
        calls = "SELECT c.*, d.dest FROM calls c JOIN dests d ON d.id = c.dest_id ORDER BY billing_id"
        for sql in (calls, "SELECT * FROM transfers ORDER BY seq"):
            assert _no_dest_id(_rows(b, sql)) == _no_dest_id(_rows(a, sql))
        a.close()
    finally:
        conn.close()


def test_immutability_and_a_call_being_set_up_work_on_an_upgraded_store(db: Path, tmp_path: Path) -> None:
    v5 = tmp_path / "v5.db"
    _as_version_5(db, v5)
    conn = _open(v5)  # upgrades
    try:
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            conn.execute("UPDATE transfers SET amount = 0 WHERE seq = 1")
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            conn.execute("DELETE FROM transfers WHERE seq = 1")
        _call(conn, "1767225600.950", "2026-03-30T10:00:00.000Z", "2", 20_000)
    finally:
        conn.close()
    calls = json.loads(extbill("calls", NUMBER, "--json", "--limit", "1", db=v5).stdout)
    assert calls[0]["id"] == "1767225600.950" and calls[0]["start"] == "2026-03-30T10:00:00.000Z"
    assert calls[0]["dest"] == "PJSIP/8002" and calls[0]["state"] == "rated"
    assert "ledger consistent" in extbill("db", "check", db=v5).stdout


def _as_format_1(src: Path, dst: Path) -> None:
    """An archive file as version 5 wrote it (format 1: its calls and transfers in version 5's columns)."""
    old = sqlite3.connect(src)
    new = sqlite3.connect(dst, isolation_level=None)
    try:
        dests = dict(old.execute("SELECT id, dest FROM dests").fetchall())
        calls = [_v5_call(r, dests) for r in _rows(old, "SELECT * FROM calls")]
        transfers = [_v5_transfer(t) for t in _rows(old, "SELECT * FROM transfers")]
        new.executescript(
            "CREATE TABLE archive_meta (format INTEGER NOT NULL); INSERT INTO archive_meta VALUES (1);"
            f"CREATE TABLE calls ({', '.join(calls[0])}, PRIMARY KEY (billing_id));"
            f"CREATE TABLE transfers ({', '.join(transfers[0])}, PRIMARY KEY (seq), UNIQUE (id));"
            "CREATE TABLE tariffs (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"
            "CREATE TABLE summaries (id TEXT PRIMARY KEY);"
        )
        for table, rows in (("calls", calls), ("transfers", transfers)):
            for r in rows:
                new.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(r))})", tuple(r.values()))
        for table in ("tariffs", "summaries"):
            for r in old.execute(f"SELECT * FROM {table}"):
                new.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(r))})", tuple(r))
    finally:
        old.close()
        new.close()


def test_an_archive_written_by_version_5_still_reads_back(db: Path, tmp_path: Path) -> None:
    """`calls --archive` and `statement --archive` read a format-1 file exactly as they read
    the same archive written today; a new archive run refuses to add to it."""
    archive = tmp_path / "q1.extbill-archive"
    extbill("db", "archive", "--before", "2026-03-01", str(archive), db=db)
    old = tmp_path / "q1-v5.extbill-archive"
    _as_format_1(archive, old)
    for args in (
        ("calls", NUMBER, "--json"),
        ("calls", NUMBER, "--ext", "1", "--since", "2026-02-01", "--json"),
        ("calls", OTHER),
        ("statement", NUMBER, "--json"),
        ("statement", NUMBER, "1", "--json", "--limit", "9"),
    ):
        today = extbill(*args, "--archive", str(archive), db=db).stdout
        assert extbill(*args, "--archive", str(old), db=db).stdout == today
        assert len(today) > 100
    refused = extbill("db", "archive", "--before", "2026-03-15", str(old), db=db, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"extbill: error: {old} is an archive of format 1 (an older extbill): archive to a new file"
    )


def _pg_at_version_5(url: str, v5: Path) -> None:
    """A PostgreSQL store at schema version 5 holding the rows of the version-5 SQLite file."""
    import psycopg  # noqa: PLC0415

    from fastagi.store.copy import TABLES  # noqa: PLC0415
    from fastagi.store.pg import pg_migrations  # noqa: PLC0415

    src = sqlite3.connect(v5)
    try:
        with psycopg.connect(url) as pg:
            scripts = pg_migrations()
            pg.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            for v in range(1, 6):
                pg.execute(scripts[v].read_text())
                pg.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (v, scripts[v].stem[5:])
                )
            pg.execute("DELETE FROM accounts")
            have = {t for (t,) in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table, _ in TABLES:
                if table not in have:
                    continue
                cur = src.execute(f"SELECT * FROM {table} ORDER BY rowid")
                cols = ", ".join(d[0] for d in cur.description)
                with pg.cursor().copy(f"COPY {table} ({cols}) FROM STDIN") as out:
                    for row in cur.fetchall():
                        out.write_row(row)
    finally:
        src.close()


def test_a_version_5_postgresql_store_upgrades_with_every_output_unchanged(
    db: Path, tmp_path: Path, pg_server: Any
) -> None:
    """The PostgreSQL twin of the upgrade (pg_migrations/0006_compact_calls.sql): the same rows
    read the same on both engines before and after."""
    v5 = tmp_path / "v5.db"
    _as_version_5(db, v5)
    url = pg_server.new_database()
    _pg_at_version_5(url, v5)
    expected = _outputs(db)
    for args in READS:
        proc = subprocess.run(
            [sys.executable, "-m", "fastagi", *args, "--db", url],
            env={k: v for k, v in os.environ.items() if k != "EXTBILL_DB"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (proc.stdout, proc.stderr) == expected[args], (args, proc.returncode)
