"""The `extbill` admin command, run for real (a subprocess) on a real SQLite file: its contract (docs/rules.md rules 18, 20)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fastagi.store import tx_calls
from fastagi.store.sqlite import SqliteStore

NUMBER = "4008001234"
MONEY_RE = re.compile(r"^-?[0-9]+\.[0-9]{3}$")


def extbill(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would, with no EXTBILL_DB in the environment."""
    env = {k: v for k, v in os.environ.items() if k != "EXTBILL_DB"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastagi", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"extbill {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def dump(db: Path) -> list[str]:
    """Every row of every table (and the schema), to compare a database before and after."""
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def balance_json(db: Path, number: str = NUMBER) -> dict:
    return json.loads(extbill("balance", number, "--json", "--db", str(db), cwd=db.parent).stdout)


def ext_of(doc: dict, key: str) -> dict:
    return next(e for e in doc["extensions"] if e["key"] == key)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A number with three extensions, extension billing on, money on main and on extension 1."""
    d = tmp_path_factory.mktemp("template")
    db = str(d / "t.db")
    for args in (
        ["db", "init", "--db", db],
        ["plan", "add", "std", "--per-minute", "0.6", "--db", db],
        ["plan", "add", "cheap", "--per-minute", "0.3", "--initial", "6", "--increment", "6", "--db", db],
        [
            "number",
            "add",
            NUMBER,
            "--name",
            "HQ",
            "--plan",
            "std",
            "--min-balance",
            "50",
            "--default-dest",
            "PJSIP/100",
            "--db",
            db,
        ],
        ["ext", "add", NUMBER, "1", "--name", "Beijing", "--dest", "PJSIP/201", "--db", db],
        [
            "ext",
            "add",
            NUMBER,
            "2",
            "--name",
            "Shanghai",
            "--dest",
            "PJSIP/202",
            "--plan",
            "cheap",
            "--db",
            db,
        ],
        ["ext", "add", NUMBER, "801", "--name", "Shenzhen", "--dest", "Local/801@branches", "--db", db],
        ["number", "set", NUMBER, "--ext-billing", "on", "--db", db],
        ["recharge", NUMBER, "200", "--ref", "init-main", "--db", db],
        ["transfer", NUMBER, "1", "30", "--ref", "init-t1", "--db", db],
        ["recharge", NUMBER, "2", "0.02", "--db", db],
    ):
        extbill(*args, cwd=d)
    assert not (d / "t.db-wal").exists() or (d / "t.db-wal").stat().st_size == 0
    return d / "t.db"


@pytest.fixture
def db(template: Path, tmp_path: Path) -> Path:
    """A private copy of the template database."""
    target = tmp_path / "x.db"
    shutil.copyfile(template, target)
    return target


# ---- the happy paths ---------------------------------------------------------------------------


def test_db_init_creates_a_database_and_is_safe_to_repeat(tmp_path: Path) -> None:
    """`db init` creates the file; running it again says it is up to date and changes nothing."""
    db = tmp_path / "new.db"
    first = extbill("db", "init", "--db", str(db), cwd=tmp_path)
    assert db.exists() and "created" in first.stdout
    before = dump(db)
    again = extbill("db", "init", "--db", str(db), cwd=tmp_path)
    assert "up to date" in again.stdout and "created" not in again.stdout
    assert dump(db) == before


def test_db_defaults_to_extbill_db_then_env(tmp_path: Path) -> None:
    """Without --db the database is $EXTBILL_DB, else ./extbill.db in the current directory."""
    extbill("db", "init", cwd=tmp_path)
    assert (tmp_path / "extbill.db").exists()
    env_db = tmp_path / "from-env.db"
    env = {**os.environ, "EXTBILL_DB": str(env_db)}
    proc = subprocess.run(
        [sys.executable, "-m", "fastagi", "db", "init"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and env_db.exists()


def test_console_script_is_installed(tmp_path: Path) -> None:
    """The `extbill` console script next to the interpreter runs the same command."""
    script = Path(sys.executable).with_name("extbill")
    assert script.exists(), f"no {script}: `pip install -e .` installs it (pyproject.toml [project.scripts])"
    proc = subprocess.run(
        [str(script), "db", "init", "--db", str(tmp_path / "c.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and (tmp_path / "c.db").exists()


def test_balance_json_has_exactly_the_documented_shape(db: Path) -> None:
    """`balance --json` prints exactly the documented document, money as strings with 3 places."""
    doc = balance_json(db)
    assert set(doc) == {"number", "status", "ivr", "ext_billing", "min_balance", "main", "extensions"}
    assert set(doc["main"]) == {"balance", "reserved", "available"}
    for e in doc["extensions"]:
        assert set(e) == {"key", "name", "balance", "reserved", "available", "status"}
    assert doc["number"] == NUMBER and doc["status"] == "active"
    assert doc["ivr"] is True and doc["ext_billing"] is True
    assert doc["min_balance"] == "50.000"
    assert doc["main"] == {"balance": "170.000", "reserved": "0.000", "available": "170.000"}
    assert doc["extensions"] == [
        {
            "key": "1",
            "name": "Beijing",
            "balance": "30.000",
            "reserved": "0.000",
            "available": "30.000",
            "status": "ok",
        },
        {
            "key": "2",
            "name": "Shanghai",
            "balance": "0.020",
            "reserved": "0.000",
            "available": "0.020",
            "status": "arrears",
        },
        {
            "key": "801",
            "name": "Shenzhen",
            "balance": "0.000",
            "reserved": "0.000",
            "available": "0.000",
            "status": "arrears",
        },
    ]
    money = [doc["min_balance"], *doc["main"].values()] + [
        e[k] for e in doc["extensions"] for k in ("balance", "reserved", "available")
    ]
    assert all(isinstance(m, str) and MONEY_RE.match(m) for m in money)


def test_balance_shows_money_held_by_a_call_in_progress(db: Path) -> None:
    """While a call holds money, `balance --json` shows it as reserved and not available."""

    async def start_call() -> int:
        store = await SqliteStore.open(str(db), create=False)
        try:
            d = await store.run(tx_calls.route, "call-1", NUMBER, "1", 1, "13800000000", None, None)
            assert d.action == "dial" and d.charged == "ext"
            return d.reserve
        finally:
            await store.close()

    # 30.000 at 0.6/min pays 50 minutes (3000 s, under the 7200 s cap): the whole 30.000 is held
    assert asyncio.run(start_call()) == 30_000
    e = ext_of(balance_json(db), "1")
    assert (e["balance"], e["reserved"], e["available"], e["status"]) == (
        "30.000",
        "30.000",
        "0.000",
        "arrears",
    )
    assert balance_json(db)["main"] == {"balance": "170.000", "reserved": "0.000", "available": "170.000"}


def test_recharge_to_main_and_to_an_extension_and_transfer(db: Path) -> None:
    """Recharges add to main or to one extension; a transfer moves money from main to an extension;
    --db is accepted before and after the positional arguments."""
    cwd = db.parent
    out = extbill("recharge", "--db", str(db), NUMBER, "12.5", cwd=cwd).stdout
    assert "12.500" in out
    extbill("recharge", NUMBER, "801", "0.001", "--db", str(db), cwd=cwd)
    extbill("transfer", NUMBER, "2", "0.01", "--db", str(db), cwd=cwd)
    doc = balance_json(db)
    assert doc["main"]["balance"] == "182.490"  # 170 + 12.5 - 0.01
    assert ext_of(doc, "801")["balance"] == "0.001"
    assert ext_of(doc, "2")["balance"] == "0.030"
    assert ext_of(doc, "2")["status"] == "ok"  # 0.030 pays one 6 s block at 0.3/min
    assert ext_of(doc, "1")["balance"] == "30.000"


def test_statement_lists_the_accounts_transfers_newest_first(db: Path) -> None:
    """`statement` lists an account's transfers newest first with their signed effect."""
    cwd = db.parent
    extbill("recharge", NUMBER, "5", "--ref", "s-1", "--db", str(db), cwd=cwd)
    extbill("transfer", NUMBER, "1", "2", "--ref", "s-2", "--db", str(db), cwd=cwd)
    extbill("recharge", NUMBER, "1", "3", "--ref", "s-3", "--db", str(db), cwd=cwd)
    main = json.loads(extbill("statement", NUMBER, "--json", "--db", str(db), cwd=cwd).stdout)
    assert [(r["ref"], r["code"], r["effect"]) for r in main] == [
        ("s-2", "move", "-2.000"),
        ("s-1", "recharge", "5.000"),
        ("init-t1", "move", "-30.000"),
        ("init-main", "recharge", "200.000"),
    ]
    text = extbill("statement", NUMBER, "1", "--db", str(db), cwd=cwd).stdout
    assert text.index("s-3") < text.index("s-2") < text.index("init-t1")
    assert "3.000" in text and "30.000" in text


def test_ref_makes_a_repeat_a_no_op_that_says_so(db: Path) -> None:
    """Repeating a recharge or transfer with the same --ref changes nothing and says so."""
    cwd = db.parent
    before = dump(db)
    for args in (
        ["recharge", NUMBER, "200", "--ref", "init-main"],
        ["transfer", NUMBER, "1", "30", "--ref", "init-t1"],
    ):
        proc = extbill(*args, "--db", str(db), cwd=cwd)
        assert "already" in proc.stdout and "nothing changed" in proc.stdout
    assert dump(db) == before
    # a new ref is a new recharge
    extbill("recharge", NUMBER, "200", "--ref", "init-main-2", "--db", str(db), cwd=cwd)
    assert balance_json(db)["main"]["balance"] == "370.000"


def test_number_show_and_set(db: Path) -> None:
    """`number set` changes the settings `number show` reports."""
    cwd = db.parent
    doc = json.loads(extbill("number", "show", NUMBER, "--json", "--db", str(db), cwd=cwd).stdout)
    assert (doc["name"], doc["lang"], doc["plan"], doc["default_dest"]) == ("HQ", "zh", "std", "PJSIP/100")
    extbill(
        "number",
        "set",
        NUMBER,
        "--lang",
        "en",
        "--default-dest",
        "PJSIP/999",
        "--digit-timeout",
        "9",
        "--plan",
        "cheap",
        "--min-balance",
        "10.5",
        "--db",
        str(db),
        cwd=cwd,
    )
    doc = json.loads(extbill("number", "show", NUMBER, "--json", "--db", str(db), cwd=cwd).stdout)
    assert (doc["lang"], doc["plan"], doc["default_dest"], doc["digit_timeout_s"], doc["min_balance"]) == (
        "en",
        "cheap",
        "PJSIP/999",
        9,
        "10.500",
    )
    text = extbill("number", "show", NUMBER, "--db", str(db), cwd=cwd).stdout
    assert NUMBER in text and "Shenzhen" in text and "10.500" in text


def test_ext_set_changes_name_destination_and_plan(db: Path) -> None:
    """`ext set` renames, re-routes and re-plans an extension; its plan decides its arrears status."""
    cwd = db.parent
    extbill(
        "ext", "set", NUMBER, "801", "--name", "Guangzhou", "--dest", "PJSIP/801", "--db", str(db), cwd=cwd
    )
    # ext 1 holds 30.000: ok on std (0.600 first block); on a plan whose first block is 36.000, arrears
    extbill("plan", "add", "dear", "--per-minute", "36", "--db", str(db), cwd=cwd)
    extbill("ext", "set", NUMBER, "1", "--plan", "dear", "--db", str(db), cwd=cwd)
    doc = json.loads(extbill("number", "show", NUMBER, "--json", "--db", str(db), cwd=cwd).stdout)
    e = ext_of(doc, "801")
    assert (e["name"], e["dest"]) == ("Guangzhou", "PJSIP/801")
    assert (ext_of(doc, "1")["plan"], ext_of(doc, "1")["status"]) == ("dear", "arrears")


def test_plan_options_decide_the_first_block(db: Path) -> None:
    """An extension is in arrears exactly when it cannot pay its plan's first block (price, block, connect fee)."""
    cwd = db.parent
    extbill(
        "plan",
        "add",
        "p",
        "--per-minute",
        "0.6",
        "--initial",
        "30",
        "--increment",
        "6",
        "--connect-fee",
        "0.1",
        "--grace",
        "3",
        "--max-call",
        "600",
        "--db",
        str(db),
        cwd=cwd,
    )
    extbill("ext", "set", NUMBER, "801", "--plan", "p", "--db", str(db), cwd=cwd)
    # first block: 0.100 connect fee + 30 s at 0.6/min (0.300) = 0.400
    extbill("recharge", NUMBER, "801", "0.399", "--db", str(db), cwd=cwd)
    assert ext_of(balance_json(db), "801")["status"] == "arrears"
    extbill("recharge", NUMBER, "801", "0.001", "--db", str(db), cwd=cwd)
    assert ext_of(balance_json(db), "801")["status"] == "ok"
    # `plan rate NAME ''` changes the plan's own price: now the first block is 0.100 + 0.600
    extbill("plan", "rate", "p", "", "--per-minute", "1.2", "--db", str(db), cwd=cwd)
    assert ext_of(balance_json(db), "801")["status"] == "arrears"


def test_plan_rate_prefix_prices_the_callers_with_that_prefix(db: Path) -> None:
    """A prefix rate added with `plan rate` is the price a call from that prefix is granted at."""
    cwd = db.parent
    extbill("plan", "rate", "std", "0086", "--per-minute", "1.5", "--db", str(db), cwd=cwd)
    extbill("plan", "rate", "std", "008610", "--per-minute", "2", "--db", str(db), cwd=cwd)
    extbill("recharge", NUMBER, "1000", "--db", str(db), cwd=cwd)  # each grant holds up to 2 hours

    async def price(caller: str, billing_id: str) -> int:
        store = await SqliteStore.open(str(db), create=False)
        try:
            d = await store.run(tx_calls.route, billing_id, NUMBER, "", 1, caller, None, None)
            assert d.action == "dial" and d.tariff is not None
            return d.tariff.per_minute
        finally:
            await store.close()

    assert asyncio.run(price("13800000000", "a")) == 600  # the plan's own 0.600
    assert asyncio.run(price("0086755000", "b")) == 1_500
    assert asyncio.run(price("008610000", "c")) == 2_000  # the longest prefix wins


def test_suspension_follows_the_main_balance_and_its_minimum(db: Path) -> None:
    """A number whose main balance is below its minimum is suspended; a recharge above it resumes it."""
    cwd = db.parent
    other = "4008000002"
    added = extbill(
        "number",
        "add",
        other,
        "--name",
        "Branch",
        "--plan",
        "std",
        "--min-balance",
        "1",
        "--db",
        str(db),
        cwd=cwd,
    )
    assert "suspended" in added.stdout
    assert balance_json(db, other)["status"] == "suspended"
    extbill("recharge", other, "0.999", "--db", str(db), cwd=cwd)
    assert balance_json(db, other)["status"] == "suspended"
    extbill("recharge", other, "0.002", "--db", str(db), cwd=cwd)
    assert balance_json(db, other)["status"] == "active"
    # moving money to an extension takes main (170.000) below its minimum (50.000): suspended
    extbill("transfer", NUMBER, "1", "120.001", "--db", str(db), cwd=cwd)
    assert balance_json(db)["status"] == "suspended"
    # lowering the minimum under the balance resumes it
    extbill("number", "set", NUMBER, "--min-balance", "49.999", "--db", str(db), cwd=cwd)
    assert balance_json(db)["status"] == "active"
    conn = sqlite3.connect(db)
    events = conn.execute(
        "SELECT n.number, e.suspended FROM suspension_events e "
        "JOIN numbers n ON n.id = e.number_id ORDER BY e.id"
    ).fetchall()
    conn.close()
    # every change is recorded: the template's number started suspended and was resumed by its recharge
    assert events == [(NUMBER, 1), (NUMBER, 0), (other, 1), (other, 0), (NUMBER, 1), (NUMBER, 0)]


def test_ext_billing_needs_ivr(db: Path) -> None:
    """Extension billing cannot be switched on while IVR is off, and IVR cannot be switched off under it."""
    cwd = db.parent
    before = dump(db)
    proc = extbill("number", "set", NUMBER, "--ivr", "off", "--db", str(db), cwd=cwd, check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert re.search(r"extension billing", line, re.I) and re.search(r"IVR", line)
    assert dump(db) == before
    # both off together is explicit, so it is allowed
    extbill("number", "set", NUMBER, "--ivr", "off", "--ext-billing", "off", "--db", str(db), cwd=cwd)
    doc = balance_json(db)
    assert (doc["ivr"], doc["ext_billing"]) == (False, False)
    before = dump(db)
    proc = extbill("number", "set", NUMBER, "--ext-billing", "on", "--db", str(db), cwd=cwd, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "IVR" in proc.stderr
    assert dump(db) == before
    extbill("number", "set", NUMBER, "--ivr", "on", "--ext-billing", "on", "--db", str(db), cwd=cwd)
    doc = balance_json(db)
    assert (doc["ivr"], doc["ext_billing"]) == (True, True)


# ---- bad input: exit 2, one line on stderr naming the problem, nothing changed --------------

REFUSALS = [
    # amounts
    (["recharge", NUMBER, "abc"], r"amount 'abc'"),
    (["recharge", NUMBER, "-5"], r"negative"),
    (["recharge", NUMBER, "1", "-5"], r"negative"),
    (["recharge", NUMBER, "0"], r"zero"),
    (["recharge", NUMBER, "1.2345"], r"decimal places"),
    (["recharge", NUMBER, "1e3"], r"1e3"),
    (["recharge", NUMBER, "10000000.001"], r"maximum"),
    (["recharge", NUMBER, "99999999999"], r"maximum"),
    (["recharge", NUMBER, " 5"], r"amount"),
    (["recharge", NUMBER, "5,00"], r"amount"),
    (["transfer", NUMBER, "1", "0"], r"zero"),
    (["transfer", NUMBER, "1", "1e3"], r"1e3"),
    (["plan", "add", "p2", "--per-minute", "1e3"], r"per-minute.*1e3|1e3.*per-minute"),
    (["plan", "add", "p2", "--per-minute", "-0.5"], r"negative"),
    (["plan", "add", "p2", "--per-minute", "0.6", "--connect-fee", "0.1234"], r"connect-fee|decimal"),
    (["number", "add", "4008000001", "--name", "x", "--min-balance", "1.2345"], r"decimal places"),
    (["number", "set", NUMBER, "--min-balance", "abc"], r"min-balance"),
    # a transfer larger than what main has available (170.000)
    (["transfer", NUMBER, "1", "170.001"], r"170\.000 available"),
    # unknown numbers, keys, plans
    (["balance", "4009999999"], r"unknown number 4009999999"),
    (["recharge", "4009999999", "5"], r"unknown number"),
    (["transfer", "4009999999", "1", "5"], r"unknown number"),
    (["number", "show", "4009999999"], r"unknown number"),
    (["ext", "add", "4009999999", "3", "--name", "x", "--dest", "PJSIP/3"], r"unknown number"),
    (["recharge", NUMBER, "9", "5"], r"no extension 9"),
    (["transfer", NUMBER, "9", "5"], r"no extension 9"),
    (["statement", NUMBER, "9"], r"no extension 9"),
    (["ext", "set", NUMBER, "9", "--name", "x"], r"no extension 9"),
    (["number", "add", "4008000001", "--name", "x", "--plan", "nope"], r"unknown plan 'nope'"),
    (["number", "set", NUMBER, "--plan", "nope"], r"unknown plan"),
    (["ext", "add", NUMBER, "3", "--name", "x", "--dest", "PJSIP/3", "--plan", "nope"], r"unknown plan"),
    (["plan", "rate", "nope", "0086", "--per-minute", "1"], r"unknown plan"),
    # duplicates and keys that shadow each other
    (["number", "add", NUMBER, "--name", "again"], r"already exists"),
    (["plan", "add", "std", "--per-minute", "1"], r"already exists"),
    (["ext", "add", NUMBER, "1", "--name", "x", "--dest", "PJSIP/9"], r"extension 1 already exists"),
    (["ext", "add", NUMBER, "12", "--name", "x", "--dest", "PJSIP/9"], r"prefix"),
    (["ext", "add", NUMBER, "80", "--name", "x", "--dest", "PJSIP/9"], r"prefix"),
    (["ext", "add", NUMBER, "1234567", "--name", "x", "--dest", "PJSIP/9"], r"1 to 6 digits"),
    (["ext", "add", NUMBER, "a", "--name", "x", "--dest", "PJSIP/9"], r"digits"),
    (["ext", "add", NUMBER, "3", "--name", "x", "--dest", "PJSIP/9,L(1)"], r"destination"),
    # numbers that are not 400 + 7 digits
    (["number", "add", "40080012", "--name", "x"], r"not a 400 number"),
    (["number", "add", "5008001234", "--name", "x"], r"not a 400 number"),
    (["number", "add", "400800123a", "--name", "x"], r"not a 400 number"),
    (["number", "add", "４００８００１２３５", "--name", "x"], r"not a 400 number"),
    (["number", "add", "400８００１２３５", "--name", "x"], r"not a 400 number"),  # full-width digits
    (["number", "add", "4008000001\n", "--name", "x"], r"not a 400 number"),
    # keys, destinations and prefixes are ASCII digits / Dial strings, nothing more
    (["ext", "add", NUMBER, "٣", "--name", "x", "--dest", "PJSIP/9"], r"digits"),
    (["ext", "add", NUMBER, "3\n", "--name", "x", "--dest", "PJSIP/9"], r"digits"),
    (["ext", "add", NUMBER, "3", "--name", "x", "--dest", "PJSIP/9\nHANGUP"], r"destination"),
    (["plan", "rate", "std", "²", "--per-minute", "1"], r"prefix"),
    (["plan", "add", "p2", "--per-minute", "1", "--initial", "١٢"], r"--initial"),
    (["plan", "add", "p2", "--per-minute", "1", "--initial", "0"], r"initial"),
    (["plan", "add", "p2", "--per-minute", "1", "--max-call", "30"], r"maximum call"),
    # a --ref reused for a different amount or account: a conflict, shown in money, not minor units
    (["recharge", NUMBER, "5", "--ref", "init-main"], r"init-main.*already used.*200\.000"),
    (["recharge", NUMBER, "1", "200", "--ref", "init-main"], r"init-main.*already used"),
    (["transfer", NUMBER, "2", "30", "--ref", "init-t1"], r"init-t1.*already used.*30\.000"),
    # ivr / extension billing
    (["number", "set", NUMBER, "--ivr", "off", "--ext-billing", "on"], r"IVR"),
    (["number", "set", NUMBER, "--ivr", "maybe"], r"on or off"),
    # usage
    (["recharge", NUMBER], r"AMOUNT|required"),
    (["number", "add", "4008000001"], r"--name"),
]


def _refuse(template: Path, workdir: Path, argv: list[str], problem: str) -> str | None:
    """Run one refusal on its own copy of the template; return what is wrong, or None."""
    workdir.mkdir()
    db = workdir / "x.db"
    shutil.copyfile(template, db)
    before = dump(db)
    proc = extbill(*argv, "--db", str(db), cwd=workdir, check=False)
    lines = proc.stderr.strip("\n").splitlines()
    if proc.returncode != 2:
        return f"exit {proc.returncode}, stdout {proc.stdout!r}, stderr {proc.stderr!r}"
    if len(lines) != 1:
        return f"{len(lines)} lines on stderr: {proc.stderr!r}"
    if not re.search(problem, lines[0]):
        return f"stderr {lines[0]!r} does not name the problem ({problem!r})"
    if proc.stdout:
        return f"printed on stdout: {proc.stdout!r}"
    if dump(db) != before:
        return "the database changed"
    return None


def test_refused_commands_exit_2_with_one_line_and_change_nothing(template: Path, tmp_path: Path) -> None:
    """Every refusal (docs/rules.md rule 18) exits 2, prints one stderr line naming the problem, and changes nothing."""
    # Subprocesses dominate the time: run the cases side by side, each on its own copy.
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda ic: _refuse(template, tmp_path / str(ic[0]), *ic[1]), enumerate(REFUSALS))
        )
    failures = [f"extbill {' '.join(argv)}: {why}" for (argv, _), why in zip(REFUSALS, results) if why]
    assert not failures, "\n".join(failures)


def test_a_text_file_is_not_a_database(tmp_path: Path) -> None:
    """--db pointing at a text file is refused (exit 2, one line) and the file is left untouched."""
    text = tmp_path / "notes.txt"
    text.write_text("this is not a database\n" * 20)
    original = text.read_bytes()
    for argv in (["balance", NUMBER], ["db", "init"]):
        proc = extbill(*argv, "--db", str(text), cwd=tmp_path, check=False)
        assert proc.returncode == 2
        lines = proc.stderr.strip("\n").splitlines()
        assert len(lines) == 1 and "not" in lines[0] and "database" in lines[0], proc.stderr
        assert text.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_missing_database_is_not_created_by_other_commands(tmp_path: Path) -> None:
    """Any command but `db init` on a path with no database is refused and creates no file, and
    `db init` into a directory that does not exist is refused in one line."""
    missing = tmp_path / "missing.db"
    for argv in (["balance", NUMBER], ["plan", "add", "p", "--per-minute", "1"]):
        proc = extbill(*argv, "--db", str(missing), cwd=tmp_path, check=False)
        assert proc.returncode == 2
        lines = proc.stderr.strip("\n").splitlines()
        assert len(lines) == 1 and "no database" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []
    proc = extbill("db", "init", "--db", str(tmp_path / "no-such-dir" / "x.db"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip("\n").splitlines()) == 1, proc.stderr
    assert "no-such-dir" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_sandbox_refuses_a_database_it_would_not_use(tmp_path: Path) -> None:
    """The sandbox seeds a throw-away database of its own: --db gets a clear refusal, not silence."""
    proc = extbill("sandbox", "--db", str(tmp_path / "mine.db"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "sandbox makes its own new database" in proc.stderr
    assert not (tmp_path / "mine.db").exists()
