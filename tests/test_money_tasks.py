"""HQ's money tasks through the real command line on a real database (an SQLite file, and
PostgreSQL): the monthly minimum,
owed amounts, claw-back, removing an extension, bulk recharge. Every refusal exits 2 with one
line and changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fastagi.core.period import month_of, month_window_ms, previous_month
from fastagi.core.records import CallFacts
from fastagi.runtime.clock import now_ms
from fastagi.store import tx_calls, tx_money
from fastagi.store.factory import is_pg, open_store

NUMBER = "4008005555"
OTHER = "4008006666"
TZ = "Asia/Shanghai"


def extbill(*args: str, db: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EXTBILL_DB"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastagi", *args, "--db", db],
        cwd=Path(__file__).parent if is_pg(db) else Path(db).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"extbill {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def sql(db: str, query: str) -> list[tuple]:
    """Rows of one query, read directly from the database (either engine)."""
    if is_pg(db):
        with psycopg.connect(db) as pg:
            return [tuple(r) for r in pg.execute(query)]
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute(query)]
    finally:
        conn.close()


TABLES = ("accounts", "transfers", "numbers", "extensions", "calls", "period_closes", "outbox", "plans")


def dump(db: str) -> list[tuple]:
    return [(t, *r) for t in TABLES for r in sql(db, f"SELECT * FROM {t} ORDER BY 1, 2")]


def refused(db: str, *args: str, match: str) -> str:
    """The command exits 2 with exactly one line on stderr naming the problem; nothing changes."""
    before = dump(db)
    proc = extbill(*args, db=db, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("extbill: error: ") and match in lines[0], lines
    assert dump(db) == before
    return lines[0]


def show(db: str, number: str = NUMBER) -> dict[str, Any]:
    return json.loads(extbill("number", "show", number, "--json", db=db).stdout)


def ext_of(doc: dict, key: str) -> dict:
    return next(e for e in doc["extensions"] if e["key"] == key)


def outbox(db: str) -> list[tuple[str, dict]]:
    return [(t, json.loads(p)) for t, p in sql(db, "SELECT type, payload FROM outbox ORDER BY id")]


def this_month() -> str:
    return month_of(now_ms(), TZ)


TEMPLATE_STEPS = (
    ["db", "init"],
    ["plan", "add", "std", "--per-minute", "0.6"],
    ["number", "add", NUMBER, "--name", "HQ", "--plan", "std", "--default-dest", "PJSIP/100"],
    ["number", "add", OTHER, "--name", "Other", "--plan", "std"],
    ["ext", "add", NUMBER, "1", "--name", "Beijing", "--dest", "PJSIP/201"],
    ["ext", "add", NUMBER, "2", "--name", "Shanghai", "--dest", "PJSIP/202"],
    ["number", "set", NUMBER, "--ext-billing", "on", "--monthly-minimum", "100"],
    ["recharge", NUMBER, "200", "--ref", "init-main"],
    ["transfer", NUMBER, "1", "30", "--ref", "init-t1"],
)
_TEMPLATES: dict[str, str] = {}  # engine -> the database the steps above built, once


@pytest.fixture
def db(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A number with extension billing on, extensions 1 and 2, 200 on main, 30 on extension 1:
    a copy of a template database (an SQLite file, or a PostgreSQL database's TEMPLATE)."""
    if engine == "sqlite":
        if engine not in _TEMPLATES:
            _TEMPLATES[engine] = str(request.getfixturevalue("tmp_path_factory").mktemp("money") / "t.db")
            for args in TEMPLATE_STEPS:
                extbill(*args, db=_TEMPLATES[engine])
        target = str(tmp_path / "x.db")
        shutil.copyfile(_TEMPLATES[engine], target)
        return target
    server = request.getfixturevalue("pg_server")
    with psycopg.connect(server.url(), autocommit=True) as conn:
        if engine not in _TEMPLATES:
            conn.execute("CREATE DATABASE money_template TEMPLATE template0")
            _TEMPLATES[engine] = server.url("money_template")
            for args in TEMPLATE_STEPS:
                extbill(*args, db=_TEMPLATES[engine])
        name = f"money_{tmp_path.name.lower().replace('-', '_')[:40]}_{os.getpid()}"
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE money_template")
    return server.url(name)


def in_store(db: str, fn: Any, *args: Any) -> Any:
    async def go() -> Any:
        store = await open_store(db, create=False)
        try:
            return await store.run(fn, *args)
        finally:
            await store.close()

    return asyncio.run(go())


def call(db: str, billing_id: str, digits: str, talk_s: int, *, end: bool = True) -> int:
    """A real call through call setup and settlement; returns what it cost (or reserved, if open)."""

    async def go() -> int:
        store = await open_store(db, create=False)
        try:
            d = await store.run(tx_calls.route, billing_id, NUMBER, digits, 1, "13800000000", None, None)
            assert d.action == "dial", d
            if not end:
                return d.reserve
            facts = CallFacts(
                billing_id,
                True,
                talk_s * 1000,
                "2026-01-01T00:00:00.000Z",
                "2026-01-01T00:01:00.000Z",
                "ANSWER",
                None,
                "hangup",
            )
            return (await store.run(tx_calls.settle, facts)).cost
        finally:
            await store.close()

    return asyncio.run(go())


# ---- the monthly minimum -------------------------------------------------------------------


def test_a_month_not_yet_over_is_refused(db: str) -> None:
    refused(db, "period", "close", this_month(), match=f"month {this_month()} is not over yet in {TZ}")
    refused(db, "period", "close", this_month(), "--number", NUMBER, match="is not over yet")


def test_a_closed_month_charges_the_minimum_once_and_the_statement_shows_its_month(db: str) -> None:
    month = previous_month(this_month())
    out = extbill("period", "close", month, "--number", NUMBER, db=db).stdout
    assert f"{NUMBER} {month}: spent 0.000 of a minimum of 100.000: charged 100.000, main paid 100.000" in out
    assert show(db)["main"]["balance"] == "70.000"  # 200 - 30 moved - 100 minimum
    after = dump(db)
    again = extbill("period", "close", month, "--number", NUMBER, db=db).stdout
    assert "already closed" in again and "nothing changed" in again
    assert dump(db) == after
    extbill("period", "close", month, db=db)  # every number: this one is closed already
    assert show(db)["main"]["balance"] == "70.000"
    rows = json.loads(extbill("statement", NUMBER, "--json", db=db).stdout)
    charges = [r for r in rows if r["code"] == "monthly-minimum"]
    assert [(c["ref"], c["effect"]) for c in charges] == [(month, "-100.000")]
    assert month in extbill("statement", NUMBER, db=db).stdout
    # the other number has no minimum: closed, nothing charged
    assert show(db, OTHER)["main"]["balance"] == "0.000"
    assert (
        "period.charged",
        {
            "number": NUMBER,
            "month": month,
            "time_zone": TZ,
            "minimum": "100.000",
            "spent": "0.000",
            "charge": "100.000",
            "paid": "100.000",
            "owed": "0.000",
        },
    ) in outbox(db)


def close_this_month(db: str) -> list[dict[str, Any]]:
    """Close the current month as if its end had come (the clock is the only thing injected)."""
    month = this_month()
    return in_store(db, tx_money.close_period, month, month_window_ms(month, TZ)[1] + 1000, NUMBER)


def test_spend_of_main_and_extensions_counts_towards_the_minimum(db: str) -> None:
    """Billed calls of the month, main and every extension together, count towards the minimum."""
    extbill("number", "set", NUMBER, "--monthly-minimum", "2", db=db)
    spent = call(db, "c1", "1", 90) + call(db, "c2", "", 60)  # extension 1 pays 1.200, main 0.600
    assert spent == 1_800
    before = show(db)["main"]["balance"]
    assert [(c["spent"], c["charge"], c["paid"]) for c in close_this_month(db)] == [(1_800, 200, 200)]
    assert show(db)["main"]["balance"] == f"{float(before) - 0.2:.3f}"


def test_a_month_with_spend_above_the_minimum_charges_nothing(db: str) -> None:
    extbill("number", "set", NUMBER, "--monthly-minimum", "1.5", db=db)
    call(db, "c1", "1", 180)  # 1.800 on extension 1
    before = show(db)["main"]["balance"]
    closes = close_this_month(db)
    assert [(c["spent"], c["charge"], c["closed_now"]) for c in closes] == [(1_800, 0, True)]
    assert show(db)["main"]["balance"] == before
    assert "monthly-minimum" not in extbill("statement", NUMBER, db=db).stdout
    assert "period.charged" not in [t for t, _ in outbox(db)]
    assert close_this_month(db)[0]["closed_now"] is False


def test_serve_closes_each_numbers_last_month_once(db: str) -> None:
    """close_due (serve's periodic task) closes the month just over, once; a later pass does nothing."""
    _, end = month_window_ms(this_month(), TZ)
    first = in_store(db, tx_money.close_due, end + 60_000)
    assert sorted((c["number"], c["month"], c["charge"]) for c in first) == [
        (NUMBER, this_month(), 100_000),
        (OTHER, this_month(), 0),
    ]
    assert in_store(db, tx_money.close_due, end + 120_000) == []
    assert show(db)["main"]["balance"] == "70.000"


def test_owed_minimum_suspends_the_number_and_the_next_recharge_pays_it_first(db: str) -> None:
    extbill("number", "set", NUMBER, "--monthly-minimum", "300", db=db)
    month = previous_month(this_month())
    out = extbill("period", "close", month, "--number", NUMBER, db=db).stdout
    assert "charged 300.000, main paid 170.000, 130.000 owed: number suspended until paid" in out
    doc = show(db)
    assert (doc["status"], doc["owed"], doc["main"]["balance"]) == ("suspended", "130.000", "0.000")
    text = extbill("balance", NUMBER, db=db).stdout
    assert f"suspended: owes 130.000 of the monthly minimum of {month}" in text
    assert "owed 130.000" in extbill("number", "show", NUMBER, db=db).stdout
    # calls are refused while it owes, even on an extension that has money
    decision = in_store(db, tx_calls.route, "c-owed", NUMBER, "1", 1, "13800000000", None, None)
    assert (decision.action, decision.reason) != ("dial", None) and decision.action != "dial"
    out = extbill("recharge", NUMBER, "100", "--ref", "pay-1", db=db).stdout
    assert "100.000 of it paid what the number owed" in out
    assert (show(db)["owed"], show(db)["status"], show(db)["main"]["balance"]) == (
        "30.000",
        "suspended",
        "0.000",
    )
    extbill("recharge", NUMBER, "50", "--ref", "pay-2", db=db)
    doc = show(db)
    assert (doc["owed"], doc["status"], doc["main"]["balance"]) == ("0.000", "active", "20.000")
    assert call(db, "c-after", "1", 60) == 600  # calls go through again
    types = [t for t, _ in outbox(db)]
    assert types.index("number.suspended") < types.index("number.resumed")
    assert "period.charged" in types
    refs = [r["ref"] for r in json.loads(extbill("statement", NUMBER, "--json", db=db).stdout)]
    assert refs.count(f"{month} owed") == 2 and month in refs


# ---- claw-back and removal -----------------------------------------------------------------


def test_reclaim_takes_only_available_money_never_a_calls_reservation(db: str) -> None:
    held = call(db, "live", "1", 0, end=False)  # a call in progress on extension 1
    assert held == 30_000  # 30.000 at 0.6/min: it holds all of it
    refused(db, "reclaim", NUMBER, "1", match="has nothing available to reclaim (30.000 is held by calls")
    extbill("recharge", NUMBER, "1", "5", db=db)
    refused(db, "reclaim", NUMBER, "1", "5.001", match="has only 5.000 available")
    out = extbill("reclaim", NUMBER, "1", "--ref", "rc-1", db=db).stdout
    assert "reclaimed 5.000 from extension 1" in out
    e = ext_of(show(db), "1")
    assert (e["balance"], e["reserved"], e["available"]) == ("30.000", "30.000", "0.000")
    assert show(db)["main"]["balance"] == "175.000"
    before = dump(db)
    assert "already done" in extbill("reclaim", NUMBER, "1", "--ref", "rc-1", db=db).stdout
    assert dump(db) == before


def test_reclaim_an_amount_and_refusals(db: str) -> None:
    assert "reclaimed 12.500" in extbill("reclaim", NUMBER, "1", "12.5", db=db).stdout
    assert ext_of(show(db), "1")["balance"] == "17.500" and show(db)["main"]["balance"] == "182.500"
    refused(db, "reclaim", NUMBER, "1", "17.501", match="has only 17.500 available")
    refused(db, "reclaim", NUMBER, "9", match="has no extension 9")
    refused(db, "reclaim", NUMBER, "1", "-3", match="argument")
    refused(db, "reclaim", NUMBER, "2", match="has nothing available to reclaim")


def test_ext_remove_returns_the_money_keeps_history_and_waits_for_calls(db: str) -> None:
    call(db, "c1", "1", 60)  # 0.600 spent on extension 1
    call(db, "live", "1", 0, end=False)
    refused(db, "ext", "remove", NUMBER, "1", match="has a call in progress")

    async def end_live() -> None:
        store = await open_store(db, create=False)
        try:
            facts = CallFacts("live", False, 0, None, "2026-01-01T00:00:00.000Z", "NOANSWER", None, "hangup")
            await store.run(tx_calls.settle, facts)
        finally:
            await store.close()

    asyncio.run(end_live())
    out = extbill("ext", "remove", NUMBER, "1", db=db).stdout
    assert "29.400 returned to the main account" in out
    doc = show(db)
    assert [e["key"] for e in doc["extensions"]] == ["2"] and doc["main"]["balance"] == "199.400"
    history = json.loads(extbill("statement", NUMBER, "1", "--json", db=db).stdout)
    assert [r["effect"] for r in history if r["kind"] in ("posted", "post")] == [
        "-29.400",
        "-0.600",
        "30.000",
    ]
    assert any(c["ext"] == "1" for c in json.loads(extbill("calls", NUMBER, "--json", db=db).stdout))
    refused(db, "ext", "remove", NUMBER, "1", match="was removed on")
    refused(db, "recharge", NUMBER, "1", "5", match="was removed on")
    # the key can be given to a new extension, which starts empty; the old history stays readable
    extbill("ext", "add", NUMBER, "1", "--name", "New", "--dest", "PJSIP/301", db=db)
    assert ext_of(show(db), "1")["balance"] == "0.000"
    ((aside,),) = sql(db, "SELECT key FROM extensions WHERE removed_at IS NOT NULL")
    assert aside == "1~1"
    assert json.loads(extbill("statement", NUMBER, aside, "--json", db=db).stdout) == history


# ---- bulk recharge -------------------------------------------------------------------------


def test_bulk_recharge_applies_every_row_once(db: str, tmp_path: Path) -> None:
    f = tmp_path / "quota.csv"
    f.write_text(
        f"number,key,amount,ref\n{NUMBER},1,10,q-1\n{NUMBER},2,2.5,q-2\n{NUMBER},,100,q-3\n{OTHER},,7,q-4\n"
    )
    out = extbill("recharge", "--csv", str(f), db=db).stdout
    assert "4 recharges applied (119.500), 0 already done" in out
    doc = show(db)
    assert (ext_of(doc, "1")["balance"], ext_of(doc, "2")["balance"], doc["main"]["balance"]) == (
        "40.000",
        "2.500",
        "270.000",
    )
    assert show(db, OTHER)["main"]["balance"] == "7.000"
    before = dump(db)
    again = extbill("recharge", "--csv", str(f), db=db).stdout
    assert "0 recharges applied (0.000), 4 already done" in again
    assert dump(db) == before


def test_a_bad_bulk_file_applies_nothing_and_reports_every_bad_row(db: str, tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(
        "\n".join(
            [
                f"{NUMBER},1,10,b-1",  # good
                "4009999999,,10,b-2",  # unknown number
                f"{NUMBER},7,10,b-3",  # unknown extension
                f"{NUMBER},1,ten,b-4",  # not an amount
                f"{NUMBER},1,10,b-1",  # ref used twice in the file
                f"{NUMBER},1,10",  # three fields
                f"{NUMBER},,5,",  # no ref
                f"{NUMBER},2,1,init-main",  # a ref already used for a different recharge
            ]
        )
        + "\n"
    )
    before = dump(db)
    proc = extbill("recharge", "--csv", str(f), db=db, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert [ln.split(" line ")[1].split(":")[0] for ln in lines] == ["2", "3", "4", "5", "6", "7", "8"]
    assert all(ln.startswith(f"extbill: error: {f} line ") for ln in lines)
    assert "unknown number 4009999999" in lines[0] and "has no extension 7" in lines[1]
    assert "'ten'" in lines[2] and "also on line 1" in lines[3] and "expected 4 fields" in lines[4]
    assert "ref is required" in lines[5] and "already used" in lines[6]
    assert dump(db) == before


def test_cli_refusals_exit_2_with_one_line_and_change_nothing(db: str, tmp_path: Path) -> None:
    refused(db, "period", "close", "2026-13", match="is not a month like 2026-11")
    refused(
        db, "period", "close", previous_month(this_month()), "--number", "4000000000", match="unknown number"
    )
    refused(db, "number", "set", NUMBER, "--time-zone", "Mars/Olympus", match="is not an IANA name")
    refused(db, "number", "set", NUMBER, "--monthly-minimum", "-1", match="negative")
    refused(db, "recharge", match="give NUMBER [KEY] AMOUNT, or --csv FILE")
    refused(db, "recharge", NUMBER, "5", "--csv", str(tmp_path / "q.csv"), match="--csv FILE takes no NUMBER")
    refused(db, "recharge", "--csv", str(tmp_path / "missing.csv"), match="cannot read")
    (tmp_path / "empty.csv").write_text("number,key,amount,ref\n")
    refused(db, "recharge", "--csv", str(tmp_path / "empty.csv"), match="has no rows")
    refused(db, "ext", "remove", NUMBER, "9", match="has no extension 9")
    refused(db, "events", "retry", "999", match="no event 999")
    refused(db, "events", "retry", "x1", match="is not an event number")


def test_balance_low_is_written_once_per_crossing_for_an_extension_and_for_main(db: str) -> None:
    """Default thresholds: ten first blocks at the base tariff, 6.000 at 0.6/min."""
    low = lambda: [p for t, p in outbox(db) if t == "balance.low"]  # noqa: E731
    call(db, "c1", "1", 60 * 39)  # extension 1: 30.000 - 23.400 = 6.600, above 6.000
    assert low() == []
    call(db, "c2", "1", 60)  # 6.000: not below
    call(db, "c3", "1", 60)  # 5.400: crossed
    call(db, "c4", "1", 60)  # 4.800: still below, no second event
    assert low() == [
        {"number": NUMBER, "account": "ext", "ext": "1", "available": "5.400", "threshold": "6.000"}
    ]
    extbill("reclaim", NUMBER, "1", db=db)  # main: 170 + 4.8
    extbill("number", "set", NUMBER, "--low-balance", "174", db=db)
    call(db, "c5", "", 60)  # main 174.800 - 0.600 = 174.200: above 174
    call(db, "c6", "", 60 * 2)  # 173.000: crossed
    assert low()[1:] == [
        {"number": NUMBER, "account": "main", "ext": None, "available": "173.000", "threshold": "174.000"}
    ]
    extbill("recharge", NUMBER, "10", db=db)  # back above: the next crossing notifies again
    call(db, "c7", "", 60 * 20)
    assert len(low()) == 3
