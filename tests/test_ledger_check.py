"""The ledger check (`extbill db check`, and the benchmark's check after its run) catches
each failure it claims to: every one is made by hand in a real database file here.

transfers cannot be updated or deleted (triggers), so a tampered total is an account row
changed directly; a reservation settled twice needs its unique index dropped first.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fastagi.core.records import CallFacts
from fastagi.dev.bench.check import check_ledger
from fastagi.dev.bench.mix import CallMix
from fastagi.dev.bench.seed import DataSet, seed_file
from fastagi.store import tx_calls, tx_quota
from fastagi.store.sqlite import _configure, _in_read, _in_transaction

# the calls made below: (answered, talk ms, mid-call renewals); talk time 61 + 125 + 150 s
CALLS = ((True, 61_000, 0), (False, 0, 0), (True, 125_000, 0), (True, 150_000, 2))
EXPECT = {"granted": 4, "answered": 3, "unanswered": 1, "talk_s_total": 336}
RENEWAL_QUOTA_S = 60


def _call(
    conn: sqlite3.Connection,
    billing_id: str,
    number: str,
    key: str,
    answered: bool,
    talk_ms: int,
    renewals: int = 0,
) -> None:
    """A call granted, renewed mid-call `renewals` times (a reservation per chunk), settled."""
    _in_read(conn, tx_calls.lookup, (number,))
    route = (billing_id, number, key, 1, "13800138000", None, None, RENEWAL_QUOTA_S, renewals > 0)
    d = _in_transaction(conn, tx_calls.route, route)
    assert d.action == "dial", d
    for seq in range(1, renewals + 1):
        assert _in_transaction(conn, tx_quota.renew, (billing_id, seq, RENEWAL_QUOTA_S)).extended
    _in_transaction(
        conn,
        tx_calls.settle,
        (
            CallFacts(
                billing_id=billing_id,
                answered=answered,
                talk_ms=talk_ms,
                answer_at="2026-11-26T00:00:10.000Z" if answered else None,
                end_at="2026-11-26T00:05:00.000Z",
                disposition="ANSWER" if answered else "NOANSWER",
                cause="16",
                settled_by="hangup",
            ),
        ),
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded database with three calls settled as CALLS says: consistent."""
    path = tmp_path_factory.mktemp("ledger") / "t.db"
    ds = DataSet(numbers=2, extensions=4)
    seed_file(str(path), ds)
    key = CallMix(ds).funded[0]
    conn = sqlite3.connect(path, isolation_level=None)
    _configure(conn)
    for i, (answered, talk_ms, renewals) in enumerate(CALLS):
        _call(conn, f"1732650000.{i + 1}", ds.number(0), key, answered, talk_ms, renewals)
    conn.close()
    return path


@pytest.fixture
def db(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "x.db"
    shutil.copyfile(template, target)
    return target


def _tamper(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()


def _db_check(db: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXTBILL_")}
    return subprocess.run(
        [sys.executable, "-m", "fastagi", "db", "check", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _ext_account(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT account_id FROM calls WHERE state='rated' LIMIT 1").fetchone()[0]
    finally:
        conn.close()


def test_a_consistent_run_passes_both_checks(db: Path) -> None:
    """Including a call whose cost was posted across three chunks (two mid-call renewals)."""
    r = check_ledger(str(db), EXPECT)
    assert r["ledger_consistent"] and r["settled_exactly_once"] and r["billed_as_simulated"], r
    assert r["ledger"]["reservations"] == r["ledger"]["resolutions"] == len(CALLS) + 2
    proc = _db_check(db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ledger consistent" in proc.stdout and "4 calls (0 in progress)" in proc.stdout


def test_talk_time_mismatch_fails_the_run(db: Path) -> None:
    """A rated call whose talk time is not what was simulated."""
    _tamper(db, "UPDATE calls SET talk_s = talk_s + 1 WHERE billing_id = '1732650000.1'")
    r = check_ledger(str(db), EXPECT)
    assert r["talk_time_matches"] is False and r["billed_as_simulated"] is False
    assert "talk time rated 337 s, simulated 336 s" in r["discrepancies"]


def test_wrong_call_count_fails_the_run(db: Path) -> None:
    """One call more granted than recorded; and a call row with no reservation at all."""
    r = check_ledger(str(db), {**EXPECT, "granted": 5})
    assert r["settled_exactly_once"] is False
    assert "4 calls recorded, 5 granted" in r["discrepancies"]
    _tamper(
        db,
        "INSERT INTO calls (billing_id, number_id, account_id, caller, dest_id, charged, start_ms, tariff_id, "
        "granted_s, reserved, state, cost) SELECT '1732650000.9', number_id, account_id, caller, "
        "dest_id, charged, start_ms, tariff_id, granted_s, 0, 'unanswered', 0 FROM calls LIMIT 1",
    )
    r = check_ledger(str(db), {**EXPECT, "granted": 5, "unanswered": 2})
    assert r["settled_exactly_once"] is False and r["ledger_consistent"] is False
    assert "call 1732650000.9 (unanswered) has no reservation" in r["discrepancies"]
    proc = _db_check(db)
    assert proc.returncode == 1
    assert "discrepancy: call 1732650000.9 (unanswered) has no reservation" in proc.stdout


def test_revenue_mismatch_fails_the_run(db: Path) -> None:
    """A call row whose cost is not what its transfers posted to revenue."""
    _tamper(db, "UPDATE calls SET cost = cost + 7 WHERE billing_id = '1732650000.3'")
    r = check_ledger(str(db), EXPECT)
    assert r["revenue_matches_costs"] is False and r["ledger_consistent"] is False
    assert any(line.startswith("call 1732650000.3 (rated) costs") for line in r["discrepancies"])
    proc = _db_check(db)
    assert proc.returncode == 1 and "call 1732650000.3 (rated) costs" in proc.stdout


def test_a_tampered_total_fails_even_when_the_sums_still_balance(db: Path) -> None:
    """An extension charged 5 more and revenue credited 5 more on the rows alone: every
    balance still sums to zero, no account is overdrawn - only the transfers tell."""
    acc = _ext_account(db)
    _tamper(
        db,
        f"UPDATE accounts SET debits_posted = debits_posted + 5 WHERE id = {acc}",
        "UPDATE accounts SET credits_posted = credits_posted + 5 WHERE id = 2",
    )
    r = check_ledger(str(db), {**EXPECT})
    assert r["ledger_consistent"] is False
    proc = _db_check(db)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(
        line.startswith(f"discrepancy: account {acc} (400")
        and " ext " in line
        and ": debits_posted is" in line
        for line in lines
    ), lines
    assert any(line.startswith("discrepancy: account 2 (revenue): credits_posted is") for line in lines), (
        lines
    )


def test_a_reservation_resolved_twice_fails_the_run(db: Path) -> None:
    """A second resolution of a settled call (its unique index dropped to let it in)."""
    _tamper(
        db,
        "DROP INDEX transfers_one_resolution",
        "INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount, pending_id, code, "
        "created_ms) SELECT id || ':again', 'void', debit_account_id, credit_account_id, 0, id, code, "
        "created_ms FROM transfers WHERE id = 'call:1732650000.2'",
    )
    r = check_ledger(str(db), EXPECT)
    assert r["settled_exactly_once"] is False
    assert "reservation call:1732650000.2 is resolved 2 times" in r["discrepancies"]
    proc = _db_check(db)
    assert proc.returncode == 1 and "is resolved 2 times" in proc.stdout


def test_db_check_refuses_a_missing_database(tmp_path: Path) -> None:
    proc = _db_check(tmp_path / "none.db")
    assert proc.returncode == 2 and proc.stderr.startswith("extbill: error: no database at")
