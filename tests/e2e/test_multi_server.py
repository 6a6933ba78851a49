"""Several Asterisk servers on one ledger, end to end: two real Asterisk 22 instances
(systemname pbx-a and pbx-b, so their calls' ids say which Asterisk they live on), two REAL
`extbill serve` processes, each reading its own Asterisk's AMI (--asterisk-system-name),
both on one PostgreSQL database (the session's pg_server, tests/pg_server.py).

Each Asterisk's dialplan lists both serves, its own first (EXTBILL_AGI="own&other": the
extbill-agi subroutine tries them in turn). The serves run with short chunks (--quota-s 4
--renew-before-s 2), so calls are renewed mid-call by their own Asterisk's supervisor.
Everything is asserted from what a user sees: the prompts a caller heard, `extbill calls`,
`statement`, `balance` and `db check` (check_books), and every serve's JSON log.

Plans: 1/1 s blocks at 0.6 CNY a minute, so a call costs 0.01 CNY per talk second.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .asterisk import Asterisk, Call
from .extbill_server import ExtbillServer, minor
from .test_quota import QUOTA
from .test_scenarios import (
    CENT_PER_S,
    WELCOME,
    branch,
    check_books,
    epoch,
    money,
    originate_calls,
    seed,
    settled,
    wait_bridged,
)

SYSTEMS = ("pbx-a", "pbx-b")
CHUNK = 4 * CENT_PER_S  # one grant of --quota-s 4 on the 1/1 plan, minor units
ARREARS = "extbill/ext-in-arrears"


@pytest.fixture(scope="module")
def pbxs(asterisk_root: Path) -> Iterator[tuple[Asterisk, Asterisk]]:
    started: list[Asterisk] = []
    try:
        for name in SYSTEMS:
            started.append(Asterisk(asterisk_root, system_name=name).start())
        yield started[0], started[1]
    finally:
        for ast in started:
            ast.stop()


@pytest.fixture(scope="module")
def serves(
    pbxs: tuple[Asterisk, Asterisk], pg_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ExtbillServer, ExtbillServer]]:
    """Serve A for pbx-a, serve B for pbx-b: one new PostgreSQL database, set up once."""
    url = pg_server.new_database()
    a, b = (
        ExtbillServer(
            ast,
            tmp_path_factory.mktemp(f"extbill-{ast.system_name}"),
            db=url,
            extra_args=(*QUOTA, "--asterisk-system-name", ast.system_name),
        )
        for ast in pbxs
    )
    a.cli("db", "init")
    a.cli("plan", "add", "p11", "--per-minute", "0.6", "--initial", "1", "--increment", "1")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def pair(
    serves: tuple[ExtbillServer, ExtbillServer],
    pbxs: tuple[Asterisk, Asterisk],
    request: pytest.FixtureRequest,
) -> Iterator[tuple[ExtbillServer, ExtbillServer]]:
    """Both serves running, per test (a test may have stopped or killed one); on failure both
    serves' log lines of the test and both Asterisks' log tails are printed."""
    for srv in serves:
        if not srv.running:
            srv.start()
    marks = [len(srv.logs) for srv in serves]
    yield serves
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for srv, mark in zip(serves, marks):
            print(
                f"\n--- serve {srv.asterisk.system_name} ({srv.log_file}) ---\n{srv.log_tail(200, since=mark)}"
            )
        for ast in pbxs:
            print(f"\n--- Asterisk {ast.system_name} ({ast.log_path}) ---\n{ast.log_tail(80)}")
    for ast in pbxs:
        if not ast.cli("core show channels count").lstrip().startswith("0 active channel"):
            ast.cli("channel request hangup all")


def failover(first: ExtbillServer, then: ExtbillServer) -> tuple[str, str]:
    """An EXTBILL_AGI list: `first`'s address, then `then`'s."""
    return (first.agi_address, then.agi_address)


def settled_by(servers: tuple[ExtbillServer, ...], call: Call) -> list[str]:
    """Which serves logged the call's settlement (its Asterisk's name), one entry each time."""
    return [s.asterisk.system_name for s in servers for _ in s.find("call.settled", billing_id=call.ivr_id)]


def test_concurrent_calls_from_two_asterisks_never_overdraw(
    pbxs: tuple[Asterisk, Asterisk], pair: tuple[ExtbillServer, ExtbillServer]
) -> None:
    """Eight callers, four on each Asterisk, press the key of one extension holding exactly
    four chunks at the same moment: four are connected (each holding one chunk, renewed by
    nobody as the money is gone, so each is cut at its paid end), the other four hear the
    extension-in-arrears prompt and are not connected; the extension ends at zero, never
    below, and each connected call is settled exactly once, by its own Asterisk's serve."""
    (pa, pb), (a, b) = pbxs, pair
    n, funded = "4000000301", 4
    seed(a, n, main="50", exts={"1": (branch("talk-0-8"), f"{funded * CHUNK / 1000:.3f}")})
    sim = {"dtmf": "1", "hold": 30}

    async def both() -> list[list[Call]]:
        placed = await asyncio.gather(
            originate_calls(pa, a, [(n, sim)] * 4, agi=failover(a, b)),
            originate_calls(pb, b, [(n, sim)] * 4, agi=failover(b, a)),
        )
        return [calls for calls, _ in placed]

    calls_a, calls_b = asyncio.run(both())
    granted = {srv: [c for c in calls if c.dialed()] for srv, calls in ((a, calls_a), (b, calls_b))}
    connected = granted[a] + granted[b]
    assert len(connected) == funded, [c.prompts() for c in calls_a + calls_b]
    # each serve decided its own Asterisk's four calls, against the one shared balance
    decisions = [[d["action"] for d in srv.find("call.decision", number=n)] for srv in pair]
    assert [len(d) for d in decisions] == [4, 4] and sum(d.count("dial") for d in decisions) == funded
    for srv, calls in granted.items():
        settled(srv, *calls)  # each by its own Asterisk's serve: the hangup handler's first address
    for call in calls_a + calls_b:
        if call in connected:
            assert call.bridged() and call.prompts() == [WELCOME, "extbill/limit-reached"], call.prompts()
            assert settled_by(pair, call) == [call.ivr_id.rsplit("-", 1)[0]]
        else:
            assert not call.bridged() and call.prompts() == [WELCOME, ARREARS], call.prompts()
    recs = [a.call(n, c.ivr_id) for c in connected]
    for rec in recs:
        assert rec["state"] == "rated" and rec["granted_s"] == 4 and rec["renewals"] == 0, rec
        assert rec["talk_s"] <= rec["granted_s"] and minor(rec["cost"]) == rec["talk_s"] * CENT_PER_S
    spent = sum(minor(r["cost"]) for r in recs)
    ext = money(b, n)["1"]
    assert ext == {"balance": funded * CHUNK - spent, "reserved": 0, "available": funded * CHUNK - spent}
    assert ext["balance"] >= 0 and money(a, n)["main"]["balance"] == 50_000
    check_books(a, [n], connected, peers=(b,))


def test_serve_killed_mid_call_its_call_is_settled_once_by_the_other(
    pbxs: tuple[Asterisk, Asterisk], pair: tuple[ExtbillServer, ExtbillServer]
) -> None:
    """Serve A is SIGKILLed while its caller talks: the call goes on until the end A had
    granted (nobody else can renew it: only A read pbx-a's AMI), and when it ends the
    dialplan's hangup report, refused by dead A, reaches B, which settles it exactly once."""
    (pa, _), (a, b) = pbxs, pair
    n = "4000000302"
    seed(a, n, main="50", exts={"1": (branch("talk-0-6"), "5")})
    killed: list[int | None] = []

    async def during(ami: Any, calls: list[Call]) -> None:
        await wait_bridged(ami, calls[0])
        await asyncio.sleep(1)
        killed.append(await asyncio.to_thread(a.kill))

    (call,), _ = asyncio.run(
        originate_calls(pa, a, [(n, {"dtmf": "1", "hold": 30})], during, agi=failover(a, b))
    )
    assert killed == [-9] and not a.running
    # Observed path: the hangup handler's failover (settled_by "hangup", in B's log); the
    # sweeper's takeover past the grant would log call.unsettled_closed instead.
    settled(b, call)
    assert settled_by(pair, call) == ["pbx-b"]
    rec = a.call(n, call.ivr_id)
    assert call.bridged() and call.dial_statuses() == ["ANSWER"]
    assert rec["state"] == "rated" and rec["settled_by"] == "hangup", rec
    assert 0 < rec["talk_s"] <= rec["granted_s"] and minor(rec["cost"]) == rec["talk_s"] * CENT_PER_S
    assert money(b, n)["1"]["balance"] == 5_000 - minor(rec["cost"])
    check_books(b, [n], [call], peers=(a,))


def test_asterisk_keeps_connecting_calls_when_its_first_serve_is_down(
    pbxs: tuple[Asterisk, Asterisk], pair: tuple[ExtbillServer, ExtbillServer]
) -> None:
    """Serve A is down (stopped): pbx-a, which lists A first and B second, still connects its
    callers through B, and B bills each call once, from the hangup report.

    B reads pbx-b's AMI only, so nobody can renew pbx-a's calls mid-call: B grants each all its
    account can pay, final (docs/rules.md rule 9), as a single serve does with AMI down. Two
    callers on one extension would then be one too many: these two call two extensions."""
    (pa, _), (a, b) = pbxs, pair
    n = "4000000303"
    seed(a, n, main="50", exts={"1": (branch("talk-0-3"), "5"), "2": (branch("talk-0-3"), "5")})
    assert a.stop() == 0
    mark = len(b.logs)
    sims = [(n, {"dtmf": key, "hold": 30}) for key in ("1", "2")]
    calls, _ = asyncio.run(originate_calls(pa, a, sims, agi=failover(a, b)))
    settled(b, *calls)

    decisions = b.find("call.decision", since=mark, number=n)
    assert [(d["action"], d["final"]) for d in decisions] == [("dial", True)] * 2, decisions
    for call, key in zip(calls, ("1", "2")):
        assert call.bridged() and call.prompts() == [WELCOME], call.prompts()
        assert settled_by(pair, call) == ["pbx-b"]
        rec = a.call(n, call.ivr_id)
        assert rec["ext"] == key and rec["state"] == "rated" and rec["settled_by"] == "hangup", rec
        assert abs(rec["talk_s"] - 3) <= 1 and minor(rec["cost"]) == rec["talk_s"] * CENT_PER_S
        assert money(b, n)[key]["balance"] == 5_000 - minor(rec["cost"])
    check_books(b, [n], calls, peers=(a,))


def test_serve_killed_mid_call_without_failover_the_other_sweeps_it_once_past_its_grant(
    pbxs: tuple[Asterisk, Asterisk], pair: tuple[ExtbillServer, ExtbillServer]
) -> None:
    """pbx-a lists only serve A, and A is SIGKILLed while its caller talks: the hangup report
    reaches nobody, so B's sweeper takes the call over, but only once past its grant (ring time
    + granted talk + grace after the grant: it cannot still be live), and closes it exactly
    once by the unsettled policy ('mark': the hold released, the call marked unrated for
    review), leaving no money held."""
    (pa, _), (a, b) = pbxs, pair
    n = "4000000304"
    seed(a, n, main="50", exts={"1": (branch("talk-0-6"), "5")})
    mark = len(b.logs)

    async def during(ami: Any, calls: list[Call]) -> None:
        await wait_bridged(ami, calls[0])
        await asyncio.sleep(1)
        await asyncio.to_thread(a.kill)

    (call,), _ = asyncio.run(originate_calls(pa, a, [(n, {"dtmf": "1", "hold": 30})], during))
    assert call.bridged() and call.var("AGISTATUS") == "FAILURE"  # the report found no server
    # Observed path: B's sweeper (settled_by "sweeper"), some 20 s after the grant.
    closed = b.wait_log_sync("call.unsettled_closed", since=mark, timeout=90, billing_id=call.ivr_id)
    rec = a.call(n, call.ivr_id)
    assert closed["settled_by"] == "sweeper" and closed["policy"] == "mark"
    assert rec["state"] == "unrated" and rec["settled_by"] == "sweeper" and minor(rec["cost"]) == 0, rec
    assert epoch(closed["timestamp"]) > epoch(rec["start"]) + rec["granted_s"]
    for srv in pair:
        assert srv.find("call.settled", billing_id=call.ivr_id) == []
    assert [x for s in pair for x in s.find("call.unsettled_closed", billing_id=call.ivr_id)] == [closed]
    assert money(b, n)["1"] == {"balance": 5_000, "reserved": 0, "available": 5_000}
    check = b.cli("db", "check")
    assert re.search(r"(\d+) reservations, \1 resolved once each, 0 open;.*\(0 in progress\)", check), check
