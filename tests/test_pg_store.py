"""What only the PostgreSQL store has to show: schema twins, migrations under a lock, the
URL through the CLI, and concurrency from several processes (READ COMMITTED, row locks).

The shared behaviour (ledger, settlement, quota) runs on both engines in the other suites.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fastagi.core.rating import Tariff
from fastagi.core.records import CallFacts
from fastagi.store import tx_admin, tx_calls, tx_ledger
from fastagi.store.base import NotADatabase
from fastagi.store.factory import open_store, redact
from fastagi.store.pg import PG_MIGRATIONS_DIR, PgStore
from fastagi.store.pg_conn import to_pg
from fastagi.store.sqlite import MIGRATIONS_DIR, SCHEMA_VERSION

NUMBER = "4008001234"
REPO = Path(__file__).resolve().parent.parent


def test_every_sqlite_schema_version_has_a_postgresql_twin() -> None:
    """A migration added for SQLite only would leave PostgreSQL databases behind: each
    store/migrations/NNNN_name.sql needs store/pg_migrations/NNNN_name.sql, and version 1
    (schema.sql) needs 0001_schema.sql."""
    sqlite = {p.name for p in MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")}
    pg = {p.name for p in PG_MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")}
    assert sqlite | {"0001_schema.sql"} == pg, "store/pg_migrations must mirror store/migrations"
    assert max(int(n[:4]) for n in pg) == SCHEMA_VERSION


def test_sql_translation() -> None:
    assert to_pg("SELECT a FROM t WHERE b=? AND c LIKE '400%' AND d='?' /*pg FOR UPDATE*/") == (
        "SELECT a FROM t WHERE b=%s AND c LIKE '400%%' AND d='?' FOR UPDATE"
    )
    assert redact("postgresql://u:secret@db.example/x") == "postgresql://u:***@db.example/x"


def _cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXTBILL_DB": db}
    return subprocess.run(
        [sys.executable, "-m", "fastagi.admin.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_cli_names_postgresql_by_url(pg_server: Any) -> None:
    """`extbill db init --db postgresql://...` creates the schema, and every command takes the URL
    (EXTBILL_DB here); a command before db init is refused with the way out."""
    db = pg_server.new_database()
    refused = _cli(db, "plan", "list")
    assert refused.returncode == 2 and "extbill db init" in refused.stderr
    first = subprocess.run(
        [sys.executable, "-m", "fastagi.admin.cli", "db", "init", "--db", db], capture_output=True, text=True
    )
    assert first.returncode == 0 and "created" in first.stdout, first.stderr
    assert "up to date" in _cli(db, "db", "init").stdout
    assert _cli(db, "plan", "add", "std", "--per-minute", "0.6").returncode == 0
    assert _cli(db, "number", "add", NUMBER, "--name", "HQ", "--plan", "std").returncode == 0
    assert _cli(db, "recharge", NUMBER, "12.5", "--ref", "pay-1").returncode == 0
    assert _cli(db, "recharge", NUMBER, "12.5", "--ref", "pay-1").returncode == 0  # idempotent
    doc = json.loads(_cli(db, "balance", NUMBER, "--json").stdout)
    assert doc["main"]["balance"] in (12_500, "12.500")


def test_a_database_that_is_not_extbill_is_refused_and_unreachable_is_one_line(pg_server: Any) -> None:
    db = pg_server.new_database()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE somebody_elses (x int)")

    async def scenario() -> None:
        with pytest.raises(NotADatabase, match="not an extbill database"):
            await open_store(db)
        with pytest.raises(NotADatabase, match="cannot connect"):
            await open_store("postgresql://nobody:pw@/x?host=/nonexistent&port=1")

    asyncio.run(scenario())


def test_concurrent_first_opens_migrate_once(pg_server: Any) -> None:
    """Several processes starting on one new database: the advisory lock lets one create the
    schema; the others find it made."""
    db = pg_server.new_database()

    async def scenario() -> None:
        stores = await asyncio.gather(*(PgStore.open(db) for _ in range(4)))
        assert sorted(s.created for s in stores) == [False, False, False, True]
        for s in stores:
            await s.close()
        with psycopg.connect(db) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))

    asyncio.run(scenario())


# ---- a hot extension: concurrent reservations from two processes --------------------------------

_ROUTER = """
import asyncio, json, sys
from fastagi.store import tx_calls
from fastagi.store.factory import open_store

async def main(db, tag, calls):
    store = await open_store(db, create=False)
    try:
        out = await asyncio.gather(*(
            store.run(tx_calls.route, f"{tag}-{i}", sys.argv[4], "1", 1, "13800000000", "PJSIP/x", f"{tag}-{i}")
            for i in range(calls)), return_exceptions=True)
    finally:
        await store.close()
    print(json.dumps([o.action if not isinstance(o, BaseException) else repr(o) for o in out]))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def _hot_extension(db: str, ext_money: int) -> Any:
    store = await open_store(db)
    await store.run(tx_admin.add_plan, "std", Tariff(per_minute=600, max_call_s=60))  # 0.600 a call
    await store.run(tx_admin.add_number, NUMBER, "HQ", "std", 0, "zh", "PJSIP/100", 5)
    await store.run(tx_admin.add_extension, NUMBER, "1", "branch", "PJSIP/201", None)
    await store.run(tx_admin.set_number, NUMBER, ext_billing=True)
    await store.run(tx_admin.recharge, NUMBER, None, 1_000_000, None)
    await store.run(tx_admin.recharge, NUMBER, "1", ext_money, None)
    return store


@pytest.mark.parametrize("ext_money, dials", [(9_000, 15), (60_000, 50)])
def test_fifty_reservations_from_two_processes_never_overdraw_nor_deadlock(
    pg_server: Any, ext_money: int, dials: int
) -> None:
    """50 calls at once on one extension, 25 from each of two processes (each with its pool of
    connections): exactly as many are granted as the balance pays for, none fails (no deadlock,
    no lock timeout), and the books balance."""
    db = pg_server.new_database()

    async def scenario() -> None:
        store = await _hot_extension(db, ext_money)
        try:
            procs = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    _ROUTER,
                    db,
                    tag,
                    "25",
                    NUMBER,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=REPO,
                )  # fmt: skip
                for tag in ("a", "b")
            ]
            done = [await p.communicate() for p in procs]
            outs = [json.loads(out) for out, _ in done]
            actions = outs[0] + outs[1]
            assert all(a in ("dial", "prompt") for a in actions), actions  # no exception at all
            assert actions.count("dial") == dials
            ext_id = await store.read(
                lambda c: c.execute("SELECT account_id FROM extensions WHERE key='1'").fetchone()[0]
            )
            ext = await store.read(tx_ledger.load_account, ext_id)
            assert ext.reserved == 600 * dials <= ext_money and ext.available >= 0
            accounts = await store.read(tx_ledger.all_accounts)
            assert sum(a.credits_pending - a.debits_pending for a in accounts) == 0
            # and every one of them settles exactly once, again from two stores at once
            bids = await store.read(
                lambda c: [r[0] for r in c.execute("SELECT billing_id FROM calls WHERE state='reserved'")]
            )
            other = await open_store(db, create=False)
            try:
                results = await asyncio.gather(
                    *(s.run(tx_calls.settle, _facts(b, s is other)) for b in bids for s in (store, other))
                )
            finally:
                await other.close()
            assert sum(r.settled_now for r in results) == len(bids)
            ext = await store.read(tx_ledger.load_account, ext_id)
            assert (ext.reserved, ext.balance) == (0, ext_money - 600 * dials)
        finally:
            await store.close()

    asyncio.run(scenario())


def _facts(bid: str, second: bool) -> CallFacts:
    return CallFacts(
        bid, True, 61_000 if second else 59_000, "2026-01-01T00:00:01Z", "2026-01-01T00:01:01Z",
        "ANSWER", "16", "hangup" if second else "ami",
    )  # fmt: skip


def test_doctor_reads_a_postgresql_database_without_changing_it(pg_server: Any) -> None:
    """doctor --db postgresql://...: an empty database is named as such (and left empty), an
    initialised one is recognised by its schema version."""
    db = pg_server.new_database()
    doctor = [sys.executable, "-m", "fastagi.admin.cli", "doctor", "--db", db, "--timeout", "0.5"]
    first = subprocess.run(doctor, capture_output=True, text=True, timeout=60)
    assert "has no extbill schema" in first.stdout and "extbill db init" in first.stdout
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None
    assert _cli(db, "db", "init").returncode == 0
    second = subprocess.run(doctor, capture_output=True, text=True, timeout=60)
    assert f"on PostgreSQL (schema version {SCHEMA_VERSION}" not in second.stdout  # no number yet: a warning
    assert "with no 400 numbers yet" in second.stdout


# ---- extbill db copy -------------------------------------------------------------------------


def test_db_copy_moves_a_ledger_and_refuses_what_it_must(pg_server: Any, tmp_path: Path) -> None:
    """An SQLite ledger with settled and open calls arrives whole (same balances, statements and
    calls; new ids continue after the copied ones); a non-empty target and a source whose
    counters disagree with its transfers are refused, leaving the target unchanged."""
    source = str(tmp_path / "ledger.db")

    async def build() -> None:
        store = await _hot_extension(source, 9_000)
        try:
            for i in range(3):
                await store.run(tx_calls.route, f"c{i}", NUMBER, "1", 1, "13800000000", "PJSIP/x", f"c{i}")
            await store.run(tx_calls.settle, _facts("c0", False))
        finally:
            await store.close()

    asyncio.run(build())
    target = pg_server.new_database()
    done = _cli(target, "db", "copy", source, target)
    assert done.returncode == 0 and "ledger checked" in done.stdout, done.stderr
    checked = _cli(target, "db", "check")
    assert checked.returncode == 0 and "ledger consistent" in checked.stdout, checked.stdout
    for args in (
        ("balance", NUMBER, "--json"),
        ("statement", NUMBER, "1", "--json"),
        ("calls", NUMBER, "--json"),
    ):
        assert json.loads(_cli(source, *args).stdout) == json.loads(_cli(target, *args).stdout), args
    import sqlite3  # noqa: PLC0415

    # the same ledger keeps its id: the archives the SQLite store wrote stay readable beside it
    with sqlite3.connect(source) as conn, psycopg.connect(target) as pg:
        assert conn.execute("SELECT id FROM store_identity").fetchall() == [
            tuple(r) for r in pg.execute("SELECT id FROM store_identity").fetchall()
        ]
    assert _cli(target, "ext", "add", NUMBER, "2", "--name", "new", "--dest", "PJSIP/202").returncode == 0
    again = _cli(target, "db", "copy", source, target)
    assert again.returncode == 2 and "is not empty" in again.stderr

    with sqlite3.connect(source) as conn:  # counters no longer what the transfers add up to
        conn.execute("UPDATE accounts SET credits_posted = credits_posted + 1 WHERE id = 3")
    fresh = pg_server.new_database()
    broken = _cli(fresh, "db", "copy", source, fresh)
    assert broken.returncode == 2 and "ledger check failed, nothing written" in broken.stderr, broken.stderr
    with psycopg.connect(fresh) as conn:
        assert conn.execute("SELECT count(*) FROM transfers").fetchone()[0] == 0
