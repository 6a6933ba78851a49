"""The real `extbill calls` command, run as HQ runs it, on a database filled through the store.

Four settled calls of one number, made and ended through the same code the server uses
(route, the hangup handler's facts, AMI facts through the Correlator, reconcile):

    A  main   2026-01-10  answered 95.4 s, settled by the hangup handler
    B  ext 1  2026-02-15  no answer, settled by AMI
    C  ext 2  2026-03-01  gone while AMI was down, closed by reconcile: unrated
    D  ext 1  2026-03-05  answered 61 s (23:59:59.999 start, answered past midnight), by AMI
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from fastagi.admin.cli_calls import FIELDS
from fastagi.core.ami import Correlator
from fastagi.core.rating import Tariff
from fastagi.core.records import CallFacts
from fastagi.service.settlement import Settlement, iso_from_ms, ms_from_iso
from fastagi.store import tx_admin, tx_calls
from fastagi.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parent.parent
NUMBER = "4008001234"
TARIFF = Tariff(per_minute=600, initial_s=60, increment_s=30, connect_fee=50)
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")
MONEY_RE = re.compile(r"^-?\d+\.\d{3}$")
BID = {k: f"1767225600.{n}" for n, k in enumerate("ABCD", start=1)}
START = {
    "A": "2026-01-10T08:00:00.000Z",
    "B": "2026-02-15T10:30:00.000Z",
    "C": "2026-03-01T09:00:00.000Z",
    "D": "2026-03-05T23:59:59.999Z",
}
CALLER = {"A": "13800138000", "B": "13912345678", "C": "02161234567", "D": "075588886666"}


def _ts(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}000"


def _ev(name: str, at_ms: int, uid: str, bid: str, **fields: str) -> dict[str, str]:
    e = {
        "Event": name,
        "Timestamp": _ts(at_ms),
        "Uniqueid": uid,
        "Channel": f"PJSIP/x-{uid}",
        "ChanVariable": f"EXTBILL_ID={bid}",
        **fields,
    }
    if name.startswith("Bridge"):
        e["BridgeUniqueid"] = f"bridge-{bid}"
    return e


async def _route(store: SqliteStore, key: str, digits: str) -> None:
    with mock.patch.object(tx_calls, "now_ms", lambda: ms_from_iso(START[key])):
        d = await store.run(
            tx_calls.route, BID[key], NUMBER, digits, 1, CALLER[key], f"PJSIP/trunk-{key}", BID[key]
        )
    assert d.action == "dial", d


async def _fill(path: Path) -> None:
    store = await SqliteStore.open(str(path))
    try:
        await store.run(tx_admin.add_plan, "std", TARIFF)
        await store.run(tx_admin.add_number, NUMBER, "HQ", "std", 0, "zh", "PJSIP/hq", 5)
        await store.run(tx_admin.add_number, "4008005678", "Other", "std", 0, "zh", "PJSIP/o", 5)
        await store.run(tx_admin.set_number, NUMBER, ext_billing=True)
        await store.run(tx_admin.add_extension, NUMBER, "1", "Beijing", "PJSIP/8001", None)
        await store.run(tx_admin.add_extension, NUMBER, "2", "Shanghai", "PJSIP/8002", None)
        await store.run(tx_admin.add_extension, NUMBER, "3", "Idle", "PJSIP/8003", None)
        await store.run(tx_admin.recharge, NUMBER, None, 500_000, None)
        await store.run(tx_admin.recharge, NUMBER, "1", 100_000, None)
        await store.run(tx_admin.recharge, NUMBER, "2", 50_000, None)
        settlement = Settlement(store)

        # A: main account (no key), answered, the hangup handler reports first and only
        await _route(store, "A", "")
        a_answer = ms_from_iso(START["A"]) + 12_000
        await settlement.settle(
            CallFacts(
                billing_id=BID["A"],
                answered=True,
                talk_ms=95_400,
                answer_at=iso_from_ms(a_answer),
                end_at=iso_from_ms(a_answer + 95_400),
                disposition="ANSWER",
                cause="16",
                settled_by="hangup",
            )
        )

        # B: ext 1, nobody answers; AMI reports it
        await _route(store, "B", "1")
        b = ms_from_iso(START["B"]) + 30_000
        corr = Correlator()
        for e in [
            _ev("DialEnd", b, BID["B"], BID["B"], DialStatus="NOANSWER"),
            _ev("Hangup", b + 1_000, BID["B"], BID["B"], Cause="19"),
        ]:
            for fact in corr.feed(e):
                await settlement.on_ami_fact(fact)

        # C: ext 2, its channel vanished while AMI was down: reconcile marks it unrated
        await _route(store, "C", "2")
        [open_c] = await store.read(tx_calls.open_calls)
        assert await settlement.reconcile(set(), open_c["start_ms"] + 60_000) == 1

        # D: ext 1, answered just past midnight, 61 s of talk; AMI reports it
        await _route(store, "D", "1")
        d = ms_from_iso(START["D"]) + 9_501
        callee = BID["D"] + "9"
        for e in [
            _ev("DialEnd", d, BID["D"], BID["D"], DialStatus="ANSWER"),
            _ev("BridgeEnter", d, BID["D"], BID["D"]),
            _ev("BridgeEnter", d + 1, callee, BID["D"]),
            _ev("BridgeLeave", d + 61_000, BID["D"], BID["D"]),
            _ev("Hangup", d + 61_002, callee, BID["D"], Cause="16"),
            _ev("Hangup", d + 61_005, BID["D"], BID["D"], Cause="16"),
        ]:
            for fact in corr.feed(e):
                await settlement.on_ami_fact(fact)
        assert corr.take_malformed() == []
        assert await store.read(tx_calls.open_calls) == []
    finally:
        await store.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calls") / "extbill.db"
    asyncio.run(_fill(path))
    return path


def extbill(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXTBILL_")}
    return subprocess.run(
        [sys.executable, "-m", "fastagi", "calls", *args, "--db", str(db)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def calls_json(db: Path, *args: str) -> list[dict[str, Any]]:
    p = extbill(db, NUMBER, "--json", *args)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def full(db: Path) -> list[dict[str, Any]]:
    """`extbill calls NUMBER --json`, run once for the tests that compare against it."""
    return calls_json(db)


def ids(records: list[dict[str, Any]]) -> list[str]:
    inv = {v: k for k, v in BID.items()}
    return [inv[r["id"]] for r in records]


EXPECTED = {
    "D": {
        "id": BID["D"],
        "number": NUMBER,
        "ext": "1",
        "caller": CALLER["D"],
        "start": START["D"],
        "answer": "2026-03-06T00:00:09.500Z",
        "end": "2026-03-06T00:01:10.500Z",
        "talk_s": 61,
        "billed_s": 90,
        "cost": "0.950",
        "disposition": "ANSWER",
        "cause": "16",
        "settled_by": "ami",
        "state": "rated",
    },
    "C": {
        "id": BID["C"],
        "number": NUMBER,
        "ext": "2",
        "caller": CALLER["C"],
        "start": START["C"],
        "answer": None,
        "talk_s": None,
        "billed_s": None,
        "cost": "0.000",
        "disposition": "UNKNOWN",
        "cause": None,
        "settled_by": "reconcile",
        "state": "unrated",
    },
    "B": {
        "id": BID["B"],
        "number": NUMBER,
        "ext": "1",
        "caller": CALLER["B"],
        "start": START["B"],
        "answer": None,
        "end": "2026-02-15T10:30:31.000Z",
        "talk_s": 0,
        "billed_s": 0,
        "cost": "0.000",
        "disposition": "NOANSWER",
        "cause": "19",
        "settled_by": "ami",
        "state": "unanswered",
    },
    "A": {
        "id": BID["A"],
        "number": NUMBER,
        "ext": None,
        "caller": CALLER["A"],
        "start": START["A"],
        "answer": "2026-01-10T08:00:12.000Z",
        "end": "2026-01-10T08:01:47.400Z",
        "talk_s": 95,
        "billed_s": 120,
        "cost": "1.250",
        "disposition": "ANSWER",
        "cause": "16",
        "settled_by": "hangup",
        "state": "rated",
    },
}


def test_json_lists_every_call_with_exact_fields_newest_first(full: list[dict[str, Any]]) -> None:
    """HQ sees all four calls of the number, newest first, each with its times, talk and billed seconds, cost, outcome, settling path and state."""
    records = full
    assert ids(records) == ["D", "C", "B", "A"]
    for rec in records:
        key = ids([rec])[0]
        assert set(FIELDS) <= set(rec), f"missing {set(FIELDS) - set(rec)}"
        for field, value in EXPECTED[key].items():
            assert rec[field] == value, (key, field, rec[field], value)
        for field in ("start", "answer", "end"):
            if rec[field] is not None:
                assert ISO_RE.match(rec[field]), (field, rec[field])
                assert datetime.fromisoformat(rec[field]).utcoffset() == timedelta(0)
    # C's end is when reconcile closed it (now): still an ISO 8601 UTC time
    c = records[1]
    assert c["end"] is not None and ISO_RE.match(c["end"])


def test_json_money_is_decimal_text_with_three_places(full: list[dict[str, Any]]) -> None:
    """HQ never sees money as a bare integer of minor units: cost and any other amount are decimal strings like 1.250."""
    for rec in full:
        assert isinstance(rec["cost"], str) and MONEY_RE.match(rec["cost"])
        for field in ("reserved", "reserve", "amount", "balance"):
            if field in rec and rec[field] is not None:
                assert isinstance(rec[field], str) and MONEY_RE.match(rec[field]), (field, rec[field])


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ext", "1"], ["D", "B"]),
        (["--ext", "2"], ["C"]),
        (["--ext", "3"], []),  # an extension with no calls yet
        (["--since", "2026-03-01"], ["D", "C"]),  # on or after: the 1st itself counts
        (["--since", "2026-03-02"], ["D"]),
        (["--since", "2026-03-06"], []),  # D started on the 5th, answered on the 6th
        (["--ext", "1", "--since", "2026-02-16"], ["D"]),
    ],
)
def test_filters(db: Path, full: list[dict[str, Any]], args: list[str], expected: list[str]) -> None:
    """HQ can narrow the list to one extension's calls and/or calls started on or after a date."""
    records = calls_json(db, *args)
    assert ids(records) == expected
    by_id = {r["id"]: r for r in full}
    for rec in records:
        assert rec == by_id[rec["id"]]


def test_other_number_has_its_own_empty_list(db: Path) -> None:
    """HQ sees no calls of another number under this one, and an empty list for a number without calls."""
    p = extbill(db, "4008005678", "--json")
    assert p.returncode == 0 and json.loads(p.stdout) == []


def test_csv_has_a_header_and_the_same_records(db: Path, full: list[dict[str, Any]]) -> None:
    """HQ can open the call records in a spreadsheet: a header row, then the same records as --json."""
    p = extbill(db, NUMBER, "--csv")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == ",".join(FIELDS)
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    records = full
    assert len(rows) == len(records) == 4
    for row, rec in zip(rows, records):
        assert list(row) == list(FIELDS)
        assert row == {f: "" if rec[f] is None else str(rec[f]) for f in FIELDS}


def test_table_output_lists_the_calls(db: Path) -> None:
    """HQ running the command without a format flag gets a readable table with one line per call."""
    p = extbill(db, NUMBER)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 5 and "state" in lines[0]
    assert "main" in lines[4] and "1.250" in lines[4] and "rated" in lines[4]
    assert "unrated" in lines[2]


@pytest.mark.parametrize(
    "args, says",
    [
        (["4009999999"], "4009999999"),
        (["4008001234", "--ext", "9"], "9"),
        (["4008001234", "--since", "2026-13-01"], "2026-13-01"),
        (["4008001234", "--json", "--csv"], "--csv"),
    ],
)
def test_refusals_exit_2_with_one_line(db: Path, args: list[str], says: str) -> None:
    """HQ mistyping a number, an extension or a date gets exit status 2 and one line on stderr naming the problem, and no output."""
    p = extbill(db, *args)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("extbill") and says in lines[0]
    assert "Traceback" not in p.stderr


# ---- the times the records hold: the fast formatter is the datetime formula -------------------


def _iso_reference(ms: int) -> str:
    """iso_from_ms as it was first written (datetime), which every stored time so far followed."""
    return (
        datetime.fromtimestamp(ms // 1000, UTC)
        .replace(microsecond=(ms % 1000) * 1000)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


MS_FIRST, MS_END = -62_135_596_800_000, 253_402_300_800_000  # 0001-01-01 .. the end of 9999


def test_iso_from_ms_is_the_datetime_formula() -> None:
    """Every stored time reads exactly as before: the day, second and millisecond edges, leap days,
    times before 1970, one whole second ms by ms, and the first and last millisecond datetime can show."""
    from hypothesis import given, settings  # noqa: PLC0415
    from hypothesis import strategies as st  # noqa: PLC0415

    from fastagi.core.clock import iso_from_ms as fast  # noqa: PLC0415

    edges = [
        0,
        1,
        999,
        1000,
        59_999,
        60_000,
        86_399_999,
        86_400_000,
        -1,
        -999,
        -1000,
        -1001,
        -86_400_001,
        951_782_400_000,
        951_868_799_999,
        4_107_542_400_000,
        1_732_650_000_123,
        MS_FIRST,
        MS_FIRST + 1,
        MS_END - 1,
    ]
    second = 1_767_225_599_000
    for ms in edges + list(range(second - 1, second + 1001)) + list(range(MS_END - 61_000, MS_END, 997)):
        assert fast(ms) == _iso_reference(ms), ms

    @settings(max_examples=3000, deadline=None)
    @given(st.one_of(st.integers(MS_FIRST, MS_END - 1), st.integers(0, 4_102_444_800_000)))
    def same(ms: int) -> None:
        assert fast(ms) == _iso_reference(ms)
        if ms + 1 < MS_END:  # usually the same second again: the cached prefix
            assert fast(ms + 1) == _iso_reference(ms + 1)

    same()
    for bad in (MS_FIRST - 1, MS_END, 10**20, 1.5):  # out of datetime's range, or not an int: as before
        with pytest.raises(Exception) as want:
            _iso_reference(bad)  # type: ignore[arg-type]
        with pytest.raises(type(want.value)):
            fast(bad)  # type: ignore[arg-type]


def test_ms_from_iso_reads_back_what_iso_from_ms_wrote() -> None:
    """A stored time read back gives the same millisecond (the sweeper's and reconcile's arithmetic)."""
    for ms in (0, 1, 999, 1_732_650_000_123, 1_767_225_599_999, MS_END - 1):
        assert ms_from_iso(iso_from_ms(ms)) == ms
