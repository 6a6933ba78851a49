"""History at scale: kept counters and their check, keyset pages, archiving.

A real SQLite file filled through the store's own call path (route, settle), and the real
`extbill` command where a user would look (balance, statement, calls, db check, db archive).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from fastagi.core.clock import ms_from_iso
from fastagi.core.rating import Tariff
from fastagi.core.records import CallFacts
from fastagi.store import counters, tx_admin, tx_calls, tx_web_reads
from fastagi.store.base import StoreError
from fastagi.store.pages import calls_cursor
from fastagi.store.sqlite import _configure, _migrate

NUMBER = "4008001234"
OTHER = "4008005678"
TARIFF = Tariff(per_minute=600, initial_s=60, increment_s=30, connect_fee=50)
DEAR = Tariff(per_minute=1200, initial_s=60, increment_s=60)


def extbill(*args: str, db: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EXTBILL_DB"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastagi", *args, "--db", str(db)],
        cwd=db.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"extbill {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    _configure(conn)
    _migrate(conn)
    return conn


def _tx(conn: sqlite3.Connection, fn, *args):  # noqa: ANN001, ANN202
    conn.execute("BEGIN IMMEDIATE")
    try:
        out = fn(conn, *args)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return out


def _seed(conn: sqlite3.Connection) -> None:
    _tx(conn, tx_admin.add_plan, "std", TARIFF)
    _tx(conn, tx_admin.add_plan, "dear", DEAR)
    _tx(conn, tx_admin.add_number, NUMBER, "HQ", "std", 0, "zh", "PJSIP/hq", 5)
    _tx(conn, tx_admin.add_number, OTHER, "Other", "std", 0, "zh", "PJSIP/o", 5)
    _tx(conn, lambda c: tx_admin.set_number(c, NUMBER, ext_billing=True))
    _tx(conn, tx_admin.add_extension, NUMBER, "1", "Beijing", "PJSIP/8001", None)
    _tx(conn, tx_admin.add_extension, NUMBER, "2", "Shanghai", "PJSIP/8002", "dear")
    _tx(conn, tx_admin.recharge, NUMBER, None, 5_000_000, None)
    _tx(conn, tx_admin.recharge, NUMBER, "1", 1_000_000, None)
    _tx(conn, tx_admin.recharge, NUMBER, "2", 1_000_000, None)
    _tx(conn, tx_admin.recharge, OTHER, None, 1_000_000, None)


def _call(
    conn: sqlite3.Connection, bid: str, start: str, key: str, talk_ms: int, number: str = NUMBER
) -> None:
    """One call made and settled through the server's own store path, started at `start`."""
    with mock.patch.object(tx_calls, "now_ms", lambda: ms_from_iso(start)):
        d = _tx(
            conn, tx_calls.route, bid, number, key, 1, "13800138000", f"PJSIP/trunk-{bid}", bid, 600, False
        )
    assert d.action == "dial", d
    if talk_ms is None:
        return
    answered = talk_ms > 0
    facts = CallFacts(
        bid,
        answered,
        talk_ms,
        start if answered else None,
        start,
        "ANSWER" if answered else "NOANSWER",
        "16",
        "ami",
    )
    _tx(conn, tx_calls.settle, facts)


def _history(conn: sqlite3.Connection) -> None:
    """Calls over three months on main and both extensions (two settled unanswered)."""
    n = 0
    for month in ("2026-01", "2026-02", "2026-03"):
        for day in (3, 14, 27):
            for key, talk in (("", 95_400), ("1", 61_000), ("2", 0), ("1", 200_000)):
                n += 1
                _call(conn, f"1767225600.{n}", f"{month}-{day:02d}T10:00:{n % 60:02d}.000Z", key, talk)
    _call(conn, "1767225600.900", "2026-02-10T09:00:00.000Z", "", 30_000, number=OTHER)


def _store_with_history(path: Path) -> Path:
    conn = _open(path)
    try:
        _seed(conn)
        _history(conn)
    finally:
        conn.close()
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return _store_with_history(tmp_path / "extbill.db")


def _balances(db: Path) -> dict:
    return {n: json.loads(extbill("number", "show", n, "--json", db=db).stdout) for n in (NUMBER, OTHER)}


# ---- kept counters and their check --------------------------------------------------------


def test_spent_is_the_kept_sum_of_posted_calls_and_the_check_is_clean(db: Path) -> None:
    conn = _open(db)
    try:
        posted = dict(
            conn.execute(
                "SELECT debit_account_id, sum(amount) FROM transfers WHERE kind='post' GROUP BY debit_account_id"
            ).fetchall()
        )
        main_id = conn.execute("SELECT account_id FROM numbers WHERE number=?", (NUMBER,)).fetchone()[0]
        assert counters.check_counters(conn) == []
    finally:
        conn.close()
    doc = json.loads(extbill("number", "show", NUMBER, "--json", db=db).stdout)
    assert doc["main"]["spent"] == f"{posted[main_id] / 1000:.3f}" and posted[main_id] > 0
    out = extbill("db", "check", db=db)
    assert out.returncode == 0 and "consistent" in out.stdout


def test_db_check_fails_on_a_kept_call_count_that_disagrees_with_the_calls(db: Path) -> None:
    conn = _open(db)
    try:
        conn.execute("UPDATE call_counts SET calls = calls - 1 WHERE state = 'unanswered'")
    finally:
        conn.close()
    out = extbill("db", "check", db=db, check=False)
    assert (
        out.returncode == 1
        and "settled calls unanswered by ami: 8 kept but 9 in the call records" in out.stdout
    )


@pytest.mark.parametrize("column", ["spent", "debits_posted", "credits_pending"])
def test_db_check_fails_on_a_counter_that_disagrees_with_its_transfers(db: Path, column: str) -> None:
    conn = _open(db)
    try:
        ext = conn.execute(
            "SELECT e.account_id FROM extensions e JOIN numbers n ON n.id = e.number_id WHERE n.number=? AND e.key='1'",
            (NUMBER,),
        ).fetchone()[0]
        # by hand, as a bug or an edit outside extbill would (spent down: no CHECK stops it)
        conn.execute(f"UPDATE accounts SET {column} = {column} + 7 WHERE id = ?", (ext,))
        found = counters.check_counters(conn)
    finally:
        conn.close()
    assert len(found) == 1 and found[0].startswith(f"account {ext}: {column} is "), found
    out = extbill("db", "check", db=db, check=False)
    assert out.returncode == 1
    # listed once, whether the ledger check or the kept-counter check found it
    # named as the operator knows it, and counted in words that agree with the count
    assert out.stdout.count(f"discrepancy: account {ext} ({NUMBER} ext 1): {column} is ") == 1, out.stdout
    count, word = re.search(r"db check: (\d+) (\w+) in", out.stdout).groups()  # type: ignore[union-attr]
    assert word == ("discrepancy" if count == "1" else "discrepancies"), out.stdout


# ---- keyset pages -------------------------------------------------------------------------


def test_calls_pages_return_every_call_exactly_once_while_calls_arrive(db: Path) -> None:
    conn = _open(db)
    try:
        before = [r["id"] for r in _tx(conn, tx_calls.call_records, NUMBER, None, None)]
        seen: list[str] = []
        cursor = None
        arriving = 0
        while True:
            page = _tx(conn, tx_calls.call_records, NUMBER, None, None, 5, cursor)
            seen += [r["id"] for r in page]
            # calls keep arriving (and settling) between pages, newer than anything paged
            arriving += 1
            _call(conn, f"1800000000.{arriving}", f"2026-04-01T00:00:{arriving:02d}.000Z", "1", 10_000)
            _call(conn, f"1800000001.{arriving}", f"2026-04-01T00:01:{arriving:02d}.000Z", "", None)
            if len(page) < 5:
                break
            cursor = calls_cursor(page[-1]["start"], page[-1]["id"])
        assert arriving > 5  # really paged while calls arrived
        assert seen == before and len(set(seen)) == len(seen) == 36
        # an extension's pages seek its own index and are exactly its calls
        ext_pages, cursor = [], None
        while page := _tx(conn, tx_calls.call_records, NUMBER, "2", None, 4, cursor):
            ext_pages += [r["id"] for r in page]
            cursor = calls_cursor(page[-1]["start"], page[-1]["id"])
        assert ext_pages == [
            r["id"] for r in _tx(conn, tx_calls.call_records, NUMBER, None, None) if r["ext"] == "2"
        ]
    finally:
        conn.close()


def test_statement_pages_return_every_transfer_exactly_once_while_calls_arrive(db: Path) -> None:
    conn = _open(db)
    try:
        whole = [r["id"] for r in _tx(conn, tx_admin.statement, NUMBER, "1")]
        seen, cursor, n = [], None, 0
        while True:
            page = _tx(conn, tx_admin.statement, NUMBER, "1", 7, cursor)
            seen += [r["id"] for r in page]
            n += 1
            _call(conn, f"1900000000.{n}", f"2026-04-02T00:00:{n:02d}.000Z", "1", 20_000)
            if len(page) < 7:
                break
            cursor = str(page[-1]["seq"])
        assert n > 3 and seen == whole and len(set(seen)) == len(seen)
    finally:
        conn.close()


def test_the_cli_prints_the_next_pages_cursor_and_refuses_a_bad_one(db: Path) -> None:
    first = extbill("calls", NUMBER, "--limit", "10", "--json", db=db)
    rows = json.loads(first.stdout)
    assert len(rows) == 10 and first.stderr.startswith("more: --before ")
    cursor = first.stderr.split("--before ", 1)[1].strip()
    second = json.loads(extbill("calls", NUMBER, "--limit", "10", "--before", cursor, "--json", db=db).stdout)
    everything = json.loads(extbill("calls", NUMBER, "--json", db=db).stdout)
    assert [r["id"] for r in rows + second] == [r["id"] for r in everything[:20]]
    bad = extbill("calls", NUMBER, "--before", "yesterday", db=db, check=False)
    assert bad.returncode == 2 and "not a calls cursor" in bad.stderr
    st = extbill("statement", NUMBER, "1", "--limit", "3", db=db)
    assert len(st.stdout.splitlines()) == 4 and "more: --before " in st.stderr


# ---- archive ------------------------------------------------------------------------------


def test_archive_keeps_every_balance_and_the_check_clean_and_reads_back(db: Path, tmp_path: Path) -> None:
    balances = _balances(db)
    calls_before = json.loads(extbill("calls", NUMBER, "--json", db=db).stdout)
    statement_before = json.loads(extbill("statement", NUMBER, "1", "--json", db=db).stdout)
    archive = tmp_path / "2026-q1.extbill-archive"
    out = extbill("db", "archive", "--before", "2026-03-01", str(archive), db=db)
    assert "archived 25 settled calls" in out.stdout  # 24 of NUMBER (Jan, Feb) + 1 of OTHER
    assert _balances(db) == balances  # balance, reserved, available and spent, every account
    assert extbill("db", "check", db=db).returncode == 0
    live = json.loads(extbill("calls", NUMBER, "--json", db=db).stdout)
    assert [r["id"] for r in live] == [r["id"] for r in calls_before if r["start"] >= "2026-03-01"]
    both = json.loads(extbill("calls", NUMBER, "--json", "--archive", str(archive), db=db).stdout)
    assert both == calls_before
    # the live statement shows the archived part as one summary line per account pair...
    st = json.loads(extbill("statement", NUMBER, "1", "--json", db=db).stdout)
    summary = [r for r in st if r["code"] == "archive"]
    assert len(summary) == 1 and summary[0]["effect"] == _sum_effects(statement_before, st)
    # ... and with the archive, exactly the transfers it had before
    assert (
        json.loads(extbill("statement", NUMBER, "1", "--json", "--archive", str(archive), db=db).stdout)
        == statement_before
    )
    # the same again moves nothing more and changes nothing
    again = extbill("db", "archive", "--before", "2026-03-01", str(archive), db=db)
    assert "archived 0 settled calls" in again.stdout and _balances(db) == balances


def test_a_removed_extensions_page_keeps_what_it_spent_after_archiving(db: Path, tmp_path: Path) -> None:
    """The console's page of a removed extension shows its kept `spent`, as `balance` shows a
    live one's: archiving its calls does not lower it."""
    extbill("ext", "remove", NUMBER, "1", db=db)
    conn = _open(db)
    try:
        before = tx_web_reads.extension_info(conn, NUMBER, "1")
    finally:
        conn.close()
    assert before["status"] == "removed" and before["spent"] > 0
    extbill("db", "archive", "--before", "2026-03-01", str(tmp_path / "a.extbill"), db=db)
    conn = _open(db)
    try:
        after = tx_web_reads.extension_info(conn, NUMBER, "1")
    finally:
        conn.close()
    assert after["spent"] == before["spent"]


def _sum_effects(before: list[dict], after: list[dict]) -> str:
    gone = {r["id"] for r in before} - {r["id"] for r in after}
    millis = sum(round(float(r["effect"]) * 1000) for r in before if r["id"] in gone)
    return f"{millis / 1000:.3f}"


def test_archive_refuses_while_a_call_before_the_day_is_not_settled(db: Path, tmp_path: Path) -> None:
    conn = _open(db)
    try:
        _call(conn, "1767225600.777", "2026-01-20T10:00:00.000Z", "1", None)  # still reserved
    finally:
        conn.close()
    balances = _balances(db)
    archive = tmp_path / "a.db"
    out = extbill("db", "archive", "--before", "2026-03-01", str(archive), db=db, check=False)
    assert out.returncode == 2 and "1767225600.777" in out.stderr and "not settled" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not archive.exists() and _balances(db) == balances
    assert len(json.loads(extbill("calls", NUMBER, "--json", db=db).stdout)) == 37


def test_transfers_stay_immutable_outside_an_archive(db: Path) -> None:
    conn = _open(db)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            conn.execute("DELETE FROM transfers WHERE code = 'call'")
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            conn.execute("DELETE FROM transfers WHERE code = 'recharge'")
    finally:
        conn.close()


def test_archive_refuses_an_open_monthly_minimum_month(db: Path, tmp_path: Path) -> None:
    extbill("number", "set", OTHER, "--monthly-minimum", "100", db=db)
    out = extbill("db", "archive", "--before", "2026-03-01", str(tmp_path / "a.db"), db=db, check=False)
    assert out.returncode == 2 and "2026-02" in out.stderr and "not closed" in out.stderr


def test_an_archive_takes_and_shows_only_the_calls_of_the_store_that_wrote_it(
    db: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "calls.extbill"
    extbill("db", "archive", "--before", "2026-03-01", str(archive), db=db)
    mine = json.loads(extbill("calls", NUMBER, "--json", "--archive", str(archive), db=db).stdout)
    other = _store_with_history(tmp_path / "other-site.db")  # the same numbers, keys and ids
    balances, held = _balances(other), archive.read_bytes()
    # the other store's rows name its numbers and accounts by the same ids: mixed in, they
    # would be shown as this store's history
    out = extbill("db", "archive", "--before", "2026-03-01", str(archive), db=other, check=False)
    assert out.returncode == 2 and "another extbill store" in out.stderr
    assert archive.read_bytes() == held and _balances(other) == balances
    assert len(json.loads(extbill("calls", NUMBER, "--json", db=other).stdout)) == 36  # nothing moved
    for read in (("calls", NUMBER), ("statement", NUMBER, "1")):
        out = extbill(*read, "--json", "--archive", str(archive), db=other, check=False)
        assert out.returncode == 2 and "another extbill store" in out.stderr and not out.stdout
    assert json.loads(extbill("calls", NUMBER, "--json", "--archive", str(archive), db=db).stdout) == mine


def test_archive_refuses_a_wrong_file_even_with_nothing_to_archive(db: Path, tmp_path: Path) -> None:
    """A mistyped FILE is told on the first run, not on the first run that has calls to move."""
    text = tmp_path / "notes.txt"
    text.write_text("not an archive\n")
    for file, said in (
        (db, "not an extbill archive"),  # the live database itself
        (text, "not an extbill archive"),
        (tmp_path / "missing" / "a.extbill", "directory does not exist"),
        (tmp_path, "is a directory"),
    ):
        out = extbill("db", "archive", "--before", "2025-01-01", str(file), db=db, check=False)
        assert out.returncode == 2 and said in out.stderr, (file, out.stderr)
    assert text.read_text() == "not an archive\n"
    assert not (tmp_path / "missing").exists()


def test_archive_says_so_when_the_day_is_in_the_future_and_takes_one_archive_option(
    db: Path, tmp_path: Path
) -> None:
    balances = _balances(db)
    out = extbill("db", "archive", "--before", "2099-01-01", str(tmp_path / "all.extbill"), db=db)
    assert "archived 37 settled calls" in out.stdout and "is after today" in out.stderr
    assert _balances(db) == balances and extbill("db", "check", db=db).returncode == 0
    out = extbill("calls", NUMBER, "--archive", "a", "--archive", "b", db=db, check=False)
    assert out.returncode == 2 and "--archive may be given once" in out.stderr


def test_tariff_snapshots_are_shared_and_a_stale_remembered_id_is_not_trusted(tmp_path: Path) -> None:
    conn = _open(tmp_path / "a.db")
    try:
        _seed(conn)
        _call(conn, "1.1", "2026-01-01T00:00:00.000Z", "1", 60_000)
        _call(conn, "1.2", "2026-01-01T00:00:01.000Z", "1", 60_000)
        _call(conn, "1.3", "2026-01-01T00:00:02.000Z", "2", 60_000)
        assert conn.execute("SELECT count(*) FROM tariffs").fetchone()[0] == 2
        assert conn.execute("SELECT count(DISTINCT tariff_id) FROM calls").fetchone()[0] == 2
    finally:
        conn.close()
    # another database in the same process: the ids remembered above mean nothing there
    other = _open(tmp_path / "b.db")
    try:
        _tx(other, tx_admin.add_plan, "dear", DEAR)  # plan ids swapped: the texts differ
        _tx(other, tx_admin.add_plan, "std", TARIFF)
        _tx(other, tx_admin.add_number, NUMBER, "HQ", "dear", 0, "zh", "PJSIP/hq", 5)
        _tx(other, tx_admin.recharge, NUMBER, None, 5_000_000, None)
        other.execute("INSERT INTO tariffs (body) VALUES ('{}')")  # id 1 is not the dear snapshot
        _call(other, "2.1", "2026-01-01T00:00:00.000Z", "", 60_000)
        row = other.execute(
            "SELECT c.cost, t.body FROM calls c JOIN tariffs t ON t.id = c.tariff_id"
        ).fetchone()
        assert row[0] == 1200 and '"per_minute": 1200' in row[1]
    finally:
        other.close()


def test_a_bad_page_limit_is_refused(db: Path) -> None:
    with pytest.raises(StoreError):
        conn = _open(db)
        try:
            tx_calls.call_records(conn, NUMBER, None, None, 0)
        finally:
            conn.close()
    out = extbill("statement", NUMBER, "--limit", "0", db=db, check=False)
    assert out.returncode == 2 and "--limit" in out.stderr


def test_bench_history_reports_every_figure_on_a_small_history(tmp_path: Path) -> None:
    """A bounded run (a few seconds): the figures exist, the seeded ledger checks clean."""
    out = tmp_path / "h.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fastagi", "bench", "--history", "3000", "--numbers", "4", "--extensions", "4",
         "--history-seconds", "0.4", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["history_calls"] == 3000 and doc["history_check"] == "clean"
    assert set(doc["history_reads"]) == {
        "balance",
        "number_show",
        "statement_main",
        "statement_ext",
        "calls_since",
    }
    for key in ("history_read_ratio", "history_setup_ratio"):
        assert doc[key] > 0
    assert 100 < doc["bytes_per_call"] < 5000
    assert "history_read_ratio" in proc.stdout


def test_upgrading_a_store_with_calls_shares_their_tariffs_and_keeps_their_spend(tmp_path: Path) -> None:
    """A version-4 file (calls with their JSON snapshot) upgraded by opening it: same calls,
    snapshots shared, spend and the settled-call counts backfilled, the check clean."""
    from fastagi.store.sqlite import MIGRATIONS, SCHEMA_PATH  # noqa: PLC0415

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA_PATH.read_text() + "".join(MIGRATIONS[v] + ";" for v in (2, 3, 4)))
    conn.execute("PRAGMA user_version = 4")
    body = '{"per_minute": 600, "initial_s": 60, "increment_s": 30, "connect_fee": 50, "grace_s": 0, "max_call_s": 7200}'
    conn.executescript(
        "INSERT INTO accounts (id, kind, credits_posted, debits_posted) VALUES (3, 'main', 10000, 1250);"
        "UPDATE accounts SET debits_posted = 10000 WHERE id = 1; UPDATE accounts SET credits_posted = 1250 WHERE id = 2;"
        "INSERT INTO numbers (number, name, account_id, created_at) VALUES ('4008001234', 'HQ', 3, '2025-01-01');"
        "INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount, code, ref, created_at) VALUES "
        "('ref:r1', 'posted', 1, 3, 10000, 'recharge', 'r1', '2025-01-01T00:00:00.000Z'),"
        "('call:1.1', 'pending', 3, 2, 7200, 'call', '1.1', '2025-01-02T00:00:00.000Z'),"
        "('call:1.2', 'pending', 3, 2, 7200, 'call', '1.2', '2025-01-02T00:01:00.000Z');"
        "INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount, pending_id, code, created_at) VALUES "
        "('call:1.1:post', 'post', 3, 2, 650, 'call:1.1', 'call', '2025-01-02T00:01:00.000Z'),"
        "('call:1.2:post', 'post', 3, 2, 600, 'call:1.2', 'call', '2025-01-02T00:02:00.000Z');"
    )
    for bid in ("1.1", "1.2"):
        conn.execute(
            "INSERT INTO calls (billing_id, number_id, account_id, caller, dest, charged, start_ms, tariff, granted_s, "
            "reserved, pending_id, state, start_at, settled_by) VALUES (?, 1, 3, '138', 'PJSIP/hq', 'main', 0, ?, 7200, "
            "7200, ?, 'rated', '2025-01-02T00:00:00.000Z', 'ami')",
            (bid, body, f"call:{bid}"),
        )
    conn.close()
    doc = json.loads(extbill("number", "show", "4008001234", "--json", db=path).stdout)
    assert doc["main"]["spent"] == "1.250" and doc["main"]["balance"] == "8.750"
    conn = _open(path)
    try:
        rows = conn.execute("SELECT t.body FROM calls c JOIN tariffs t ON t.id = c.tariff_id").fetchall()
        assert [tuple(r) for r in rows] == [(body,), (body,)]
        assert conn.execute("SELECT count(*) FROM tariffs").fetchone()[0] == 1
        counts = conn.execute("SELECT state, settled_by, calls FROM call_counts").fetchall()
        assert [tuple(r) for r in counts] == [("rated", "ami", 2)]
        assert counters.check_counters(conn) == []
    finally:
        conn.close()
