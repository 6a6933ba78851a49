"""The product's scenarios end to end: a real Asterisk 22 running the project's dialplan,
the REAL `extbill serve` (FastAGI + AMI + sweeper, subprocess) on a temporary SQLite
file seeded with the admin CLI, simulated callers and branch phones.

Each scenario asserts what the caller heard (prompt files), whether and where the call
was bridged, and afterwards the ledger (`extbill balance --json`), the call record
(`extbill calls --json`) and the books: every reservation resolved exactly once (one
post/void/expire transfer), `call.settled` logged exactly once per billing id, nothing
negative. The billing id of a call is its IVR channel's Uniqueid (the harness's
`call.ivr_id`).

Plans: 1/1 s blocks at 0.6 CNY a minute, so a call costs 0.01 CNY per talk second.
The AMI streams of the calls are recorded as tests/fixtures/ami/server-*.json for the
correlator's replay tests (when missing, or with EXTBILL_E2E_RECORD=1).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fastagi.core.ami import CallEnd, Correlator

from .asterisk import BRANCH_CONTEXT, Asterisk, Call
from .extbill_server import ExtbillServer, minor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ami"

CENT_PER_S = 10  # minor units (0.001 CNY) per talk second on the 0.6/min 1/1 plans
WELCOME = "extbill/welcome"


def branch(dest: str) -> str:
    return f"Local/{dest}@{BRANCH_CONTEXT}"


# ------------------------------------------------------------------------ seeding


@pytest.fixture(scope="module")
def plans(extbill_server: ExtbillServer) -> ExtbillServer:
    srv = extbill_server
    srv.cli("plan", "add", "p11", "--per-minute", "0.6", "--initial", "1", "--increment", "1")
    srv.cli(
        "plan",
        "add",
        "p11-max6",
        "--per-minute",
        "0.6",
        "--initial",
        "1",
        "--increment",
        "1",
        "--max-call",
        "6",
    )
    return srv


@pytest.fixture
def srv(plans: ExtbillServer, extbill: ExtbillServer) -> ExtbillServer:
    return extbill


def seed(
    srv: ExtbillServer,
    number: str,
    *,
    main: str = "50",
    min_balance: str = "0",
    ext_billing: bool = True,
    lang: str = "zh",
    default_dest: str = branch("talk-0-2"),
    plan: str = "p11",
    exts: dict[str, tuple[str, str]] | None = None,
) -> None:
    """A number with its main account, and extensions key -> (dest, money)."""
    srv.cli(
        "number",
        "add",
        number,
        "--name",
        f"e2e {number}",
        "--plan",
        plan,
        "--min-balance",
        min_balance,
        "--lang",
        lang,
        "--default-dest",
        default_dest,
        "--digit-timeout",
        "1",
    )
    if minor(main):
        srv.cli("recharge", number, main)
    if ext_billing:
        srv.cli("number", "set", number, "--ext-billing", "on")
    for key, (dest, money) in (exts or {}).items():
        srv.cli("ext", "add", number, key, "--name", f"branch {key}", "--dest", dest)
        if minor(money):
            srv.cli("recharge", number, key, money)


def money(srv: ExtbillServer, number: str) -> dict[str, dict[str, int]]:
    """{'main': {...}, '1': {...}}: balance/reserved/available in minor units."""
    doc = srv.balance(number)
    out = {"main": {k: minor(doc["main"][k]) for k in ("balance", "reserved", "available")}}
    for e in doc["extensions"]:
        out[e["key"]] = {k: minor(e[k]) for k in ("balance", "reserved", "available")}
    return out


# ------------------------------------------------------------------------ calls


async def originate_calls(
    ast: Asterisk,
    srv: ExtbillServer,
    numbers_sims: list[tuple[str, dict[str, Any]]],
    during: Any = None,
    timeout: float = 90,
    agi: tuple[str, ...] = (),
) -> tuple[list[Call], list[dict[str, Any]]]:
    """Place the calls on `ast` at once (FastAGI to srv, or to the `agi` servers in turn),
    run `during(ami, calls)`, and wait until every channel of them has hung up."""
    async with ast.ami() as ami:
        await ami.set_agi(*(agi or (srv.agi_address,)))
        start = len(ami.events)
        calls = [await ami.originate(number, **{"hold": 60, **sim}) for number, sim in numbers_sims]
        if during is not None:
            await during(ami, calls)
        await asyncio.gather(*(c.wait_done(timeout=timeout) for c in calls))
        ours = [e for e in ami.events[start:] if any(c.matches(e) for c in calls)]
    for c in calls:
        assert not c.failed, c.failed
    return calls, ours


def place(ast: Asterisk, srv: ExtbillServer, number: str, during: Any = None, **sim: Any) -> Call:
    calls, _ = asyncio.run(originate_calls(ast, srv, [(number, sim)], during))
    return calls[0]


def place_many(
    ast: Asterisk, srv: ExtbillServer, *numbers_sims: tuple[str, dict[str, Any]], during: Any = None
) -> tuple[list[Call], list[dict[str, Any]]]:
    return asyncio.run(originate_calls(ast, srv, list(numbers_sims), during))


async def wait_bridged(ami: Any, call: Call, timeout: float = 20) -> dict[str, Any]:
    return await ami.wait_event(
        lambda e: e.get("Event") == "BridgeEnter" and e.get("Uniqueid") == call.ivr_id, timeout
    )


def settled(srv: ExtbillServer, *calls: Call, timeout: float = 10) -> None:
    """Wait until the server settled these calls (the hangup handler's request or AMI)."""
    for c in calls:
        srv.wait_log_sync("call.settled", billing_id=c.ivr_id, timeout=timeout)
    time.sleep(0.3)  # a slower second path may still be comparing: let it log


def paths(srv: ExtbillServer, call: Call, timeout: float = 5) -> dict[str, str]:
    """How each settlement path met the call: {winner: 'settled'} plus the slower path's
    word: 'confirmed' (it agreed), 'disagreed', or for AMI 'incomplete' (it did not see
    how the Dial ended, e.g. after a restart). Waits up to `timeout` for that word."""
    bid = call.ivr_id
    winner = srv.wait_log_sync("call.settled", billing_id=bid, timeout=timeout)
    out = {winner["settled_by"]: "settled"}
    words = {
        "settle.confirmed": "confirmed",
        "settle.disagreement": "disagreed",
        "settle.ami_incomplete": "incomplete",
    }
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [x for event in words for x in srv.find(event, billing_id=bid)]
        if seen:
            for x in seen:
                out[x.get("other_path", "ami")] = words[x["event"]]
            break
        time.sleep(0.05)
    return out


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def log_times(ast: Asterisk, call: Call, what: str) -> list[datetime]:
    """When Asterisk's log says `what` (a regex) happened on the call's IVR channel; naive
    local times of the log's own clock: compare them only with each other."""
    chans = {e["Channel"] for e in call.ivr_events() if "Channel" in e}
    out = []
    for m in re.finditer(r"^\[([0-9-]+ [0-9:.]+)\] (.*)$", ast.log_text(), re.M):
        when, text = m.groups()
        if any(f"<{c}> " in text or f"Channel {c} " in text for c in chans) and re.search(what, text):
            out.append(datetime.strptime(when, "%Y-%m-%d %H:%M:%S.%f"))
    return out


# ------------------------------------------------------------------------ the books


def check_books(
    srv: ExtbillServer, numbers: list[str], granted: list[Call], peers: tuple[ExtbillServer, ...] = ()
) -> None:
    """Every call settled exactly once, nothing negative, nothing left reserved: read from
    what a user sees (`calls`, `statement`, `balance`, `db check`), so on either engine.
    peers: other serves on the same database (their logs count too)."""
    servers = (srv, *peers)
    for call in granted:
        bid = call.ivr_id
        recs = [r for number in numbers for r in srv.calls(number) if r["id"] == bid]
        assert len(recs) == 1, (bid, recs)
        rec = recs[0]
        assert rec["state"] in ("rated", "unanswered"), rec
        # One reservation per chunk (the first, then one per renewal), summing to the call's
        # reserved total; each resolved exactly once; the posts sum to its cost.
        account = [rec["ext"]] if rec["charged"] == "ext" else []
        statement = srv.cli_json("statement", rec["number"], *account)
        chunks = [r for r in statement if r["kind"] == "pending" and r["ref"] == bid]
        assert len(chunks) == rec["renewals"] + 1, chunks
        assert sum(minor(c["amount"]) for c in chunks) == minor(rec["reserved"])
        kind = {"rated": "post", "unanswered": "void"}[rec["state"]]
        posted = 0
        for chunk in chunks:
            resolutions = [r for r in statement if r["pending_id"] == chunk["id"]]
            assert len(resolutions) == 1, (chunk, resolutions)
            assert resolutions[0]["kind"] in (kind, "void"), resolutions[0]
            posted += minor(resolutions[0]["amount"])
        assert posted == minor(rec["cost"]) <= minor(rec["reserved"])
        settled = [x for s in servers for x in s.find("call.settled", billing_id=bid)]
        assert len(settled) == 1, settled
        for s in servers:
            assert s.find("call.unsettled_closed", billing_id=bid) == []
            assert s.find("settle.disagreement", billing_id=bid) == [], s.find("settle.disagreement")
    # The whole database (db check exits 1 on any discrepancy): every reservation resolved
    # exactly once, none open, no call in progress; no account below zero.
    check = srv.cli("db", "check")
    assert re.search(r"(\d+) reservations, \1 resolved once each, 0 open;.*\(0 in progress\)", check), check
    for number in numbers:
        for name, acc in money(srv, number).items():
            assert acc["balance"] >= 0 and acc["available"] >= 0 and acc["reserved"] == 0, (number, name, acc)
    errors = [
        line
        for s in servers
        for line in s.logs
        if line.get("level") in ("error", "critical") or line.get("event") == "_raw"
    ]
    assert errors == [], errors


def assert_rated(
    rec: dict[str, Any], call: Call, *, ext: str | None, charged: str, talk_s: float, tolerance: float = 1.0
) -> None:
    """The record of a talked call: rated from answer to hangup on the 1/1 plan."""
    assert rec["id"] == call.ivr_id
    assert rec["state"] == "rated" and rec["disposition"] == "ANSWER", rec
    assert rec["ext"] == ext and rec["charged"] == charged, rec
    assert abs(rec["talk_s"] - talk_s) <= tolerance, (rec["talk_s"], talk_s)
    assert rec["billed_s"] == rec["talk_s"]
    assert minor(rec["cost"]) == rec["talk_s"] * CENT_PER_S
    assert minor(rec["cost"]) <= minor(rec["reserved"])
    assert rec["settled_by"] in ("hangup", "ami"), rec
    # The billed seconds are the bridged time, rounded to the nearest second.
    shared = talk_window(call)
    assert shared is not None and abs(rec["talk_s"] - (shared[1] - shared[0])) <= 0.6, (rec["talk_s"], shared)


def talk_window(call: Call) -> tuple[float, float] | None:
    """(from, to) AMI Timestamps while the IVR channel and a callee were in one bridge.
    Not the IVR channel's own bridge time: after an L() cut the caller's leg stays until
    a warning prompt still playing has ended."""
    ivr_bridges: dict[str, float] = {}
    for e in call.of("BridgeEnter"):
        if e.get("Uniqueid") == call.ivr_id:
            ivr_bridges.setdefault(e["BridgeUniqueid"], float(e["Timestamp"]))
    windows = []
    for bridge, ivr_in in ivr_bridges.items():
        ivr_out = min(
            [
                float(e["Timestamp"])
                for e in call.of("BridgeLeave")
                if e.get("Uniqueid") == call.ivr_id and e.get("BridgeUniqueid") == bridge
            ]
            or [1e12]
        )
        for e in call.of("BridgeEnter"):
            if e.get("BridgeUniqueid") == bridge and e.get("Uniqueid") != call.ivr_id:
                other_in = float(e["Timestamp"])
                other_out = min(
                    [
                        float(x["Timestamp"])
                        for x in call.of("BridgeLeave")
                        if x.get("Uniqueid") == e.get("Uniqueid") and x.get("BridgeUniqueid") == bridge
                    ]
                    or [1e12]
                )
                windows.append((max(ivr_in, other_in), min(ivr_out, other_out)))
    return (min(w[0] for w in windows), max(w[1] for w in windows)) if windows else None


# ------------------------------------------------------------------------ recording


def _has_id(e: dict[str, Any]) -> bool:
    for key in ("ChanVariable", "DestChanVariable"):
        vals = e.get(key)
        for v in vals if isinstance(vals, list) else [vals]:
            if isinstance(v, str) and v.startswith("EXTBILL_ID=") and v != "EXTBILL_ID=":
                return True
    return False


def record(
    name: str, events: list[dict[str, Any]], srv: ExtbillServer, number: str, granted: list[Call]
) -> None:
    """tests/fixtures/ami/server-<name>.json: the stream (VarSet/Newexten events without
    EXTBILL_ID left out) and what the correlator must make of it, checked here against
    the server's records first."""
    kept = [e for e in events if not (e.get("Event") in ("VarSet", "Newexten") and not _has_id(e))]
    c = Correlator()
    ends = {f.billing_id: f for e in kept for f in c.feed(e) if isinstance(f, CallEnd)}
    assert c.counters.malformed == 0, c.take_malformed()
    expect: dict[str, dict[str, Any]] = {}
    for call in granted:
        rec = srv.call(number, call.ivr_id)
        end = ends[call.ivr_id]
        assert end.dial_status == rec["disposition"], (end, rec)
        assert abs(end.talk_ms / 1000 - rec["talk_s"]) <= 1.0, (end, rec)
        expect[call.ivr_id] = {"dial_status": end.dial_status, "talk_ms": end.talk_ms}
        if end.answered_us is None:
            expect[call.ivr_id]["answered_us"] = None
    path = FIXTURES / f"server-{name}.json"
    if path.exists() and os.environ.get("EXTBILL_E2E_RECORD") != "1":
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(json.dumps(e, ensure_ascii=False, sort_keys=True) for e in kept)
    path.write_text(
        '{"expect": ' + json.dumps(expect, sort_keys=True) + ',\n"events": [\n' + lines + "\n]}\n"
    )


# ------------------------------------------------------------------------ scenarios


def test_key_for_funded_extension_is_bridged_and_charged_to_it(
    asterisk: Asterisk, srv: ExtbillServer
) -> None:
    """A caller who presses a funded extension's key is bridged to it, and only that extension is
    charged the rated talk time."""
    n = "4000000101"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-3"), "5"), "2": (branch("talk-0-3"), "5")})
    before = money(srv, n)
    calls, events = place_many(asterisk, srv, (n, {"dtmf": "1"}))
    call = calls[0]
    settled(srv, call)

    assert call.prompts() == [WELCOME]
    assert asterisk.played(call) == [(WELCOME, "zh")]
    assert call.dial_strings() == [branch("talk-0-3")]
    assert call.dial_statuses() == ["ANSWER"] and call.bridged()

    rec = srv.call(n, call.ivr_id)
    assert_rated(rec, call, ext="1", charged="ext", talk_s=3)
    after = money(srv, n)
    assert after["1"]["balance"] == before["1"]["balance"] - minor(rec["cost"])
    assert after["main"] == before["main"] and after["2"] == before["2"]
    assert paths(srv, call) == {"hangup": "settled", "ami": "confirmed"}  # two paths, one settlement
    check_books(srv, [n], [call])
    record("ext-answered", events, srv, n, [call])


def test_no_key_goes_to_default_destination_and_charges_main(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """A caller who presses no key hears the welcome in the number's language and is bridged to the
    default destination, and the talk time is charged to the main account, not the extension."""
    n = "4000000102"
    seed(srv, n, main="50", lang="en", default_dest=branch("talk-0-2"), exts={"1": (branch("talk-0-9"), "5")})
    before = money(srv, n)
    call = place(asterisk, srv, n, dtmf="")
    settled(srv, call)

    assert call.prompts() == [WELCOME]
    assert asterisk.played(call) == [(WELCOME, "en")]  # the number's language
    assert call.dial_strings() == [branch("talk-0-2")] and call.bridged()
    rec = srv.call(n, call.ivr_id)
    assert_rated(rec, call, ext=None, charged="main", talk_s=2)
    assert rec["dest"] == branch("talk-0-2")
    after = money(srv, n)
    assert after["main"]["balance"] == before["main"]["balance"] - minor(rec["cost"])
    assert after["1"] == before["1"]
    assert [x["reason"] for x in srv.find("call.decision", number=n)] == ["no-key"]
    assert paths(srv, call) == {"hangup": "settled", "ami": "confirmed"}  # two paths, one settlement
    check_books(srv, [n], [call])


def test_extension_without_money_hears_arrears_even_when_main_has_plenty(
    asterisk: Asterisk, srv: ExtbillServer
) -> None:
    """A caller who presses the key of an extension with no money hears the extension-in-arrears
    prompt and is not connected even though the main account has plenty, and HQ sees that extension
    in arrears with no balance changed."""
    n = "4000000103"
    seed(srv, n, main="500", exts={"1": (branch("talk-0-2"), "5"), "2": (branch("talk-0-2"), "0")})
    before = money(srv, n)
    call = place(asterisk, srv, n, dtmf="2")

    assert call.prompts() == [WELCOME, "extbill/ext-in-arrears"]
    assert asterisk.played(call) == [(WELCOME, "zh"), ("extbill/ext-in-arrears", "zh")]
    assert not call.dialed() and not call.bridged()
    assert money(srv, n) == before
    assert srv.calls(n) == []
    assert [x["reason"] for x in srv.find("call.decision", number=n)] == ["extension-in-arrears"]
    assert srv.balance(n)["extensions"][1]["status"] == "arrears"
    check_books(srv, [n], [])


def test_suspended_number_refuses_every_caller_until_recharged(
    asterisk: Asterisk, srv: ExtbillServer
) -> None:
    """While a number's main balance is below its minimum every caller hears the number-suspended
    prompt and nothing is charged, and once HQ recharges it the number is active again and a call
    goes through and is charged to the extension."""
    n = "4000000104"
    seed(srv, n, main="10", min_balance="20", exts={"1": (branch("talk-0-2"), "5")})
    assert srv.balance(n)["status"] == "suspended"
    before = money(srv, n)
    # Two callers at once: one presses the funded extension's key, one presses nothing.
    calls, _ = place_many(asterisk, srv, (n, {"dtmf": "1"}), (n, {"dtmf": ""}))
    for call in calls:
        assert call.prompts() == ["extbill/number-suspended"]
        assert asterisk.played(call) == [("extbill/number-suspended", "zh")]
        assert not call.dialed()
    assert money(srv, n) == before and srv.calls(n) == []

    srv.cli("recharge", n, "15")  # main 25 >= minimum 20: resumed
    assert srv.balance(n)["status"] == "active"
    call = place(asterisk, srv, n, dtmf="1")
    settled(srv, call)
    assert call.prompts() == [WELCOME] and call.dial_strings() == [branch("talk-0-2")]
    assert call.bridged()
    rec = srv.call(n, call.ivr_id)
    assert_rated(rec, call, ext="1", charged="ext", talk_s=2)
    after = money(srv, n)
    assert after["main"]["balance"] == before["main"]["balance"] + 15_000
    assert after["1"]["balance"] == before["1"]["balance"] - minor(rec["cost"])
    assert paths(srv, call) == {"hangup": "settled", "ami": "confirmed"}  # two paths, one settlement
    check_books(srv, [n], [call])


def test_extension_billing_off_charges_main(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """With extension billing off, pressing an extension's key still connects to it but the talk
    time is charged to the main account and the extension's balance is untouched."""
    n = "4000000105"
    seed(srv, n, main="50", ext_billing=False, exts={"1": (branch("talk-0-2"), "5")})
    before = money(srv, n)
    call = place(asterisk, srv, n, dtmf="1")
    settled(srv, call)

    assert call.prompts() == [WELCOME]
    assert call.dial_strings() == [branch("talk-0-2")] and call.bridged()  # the key still routes
    rec = srv.call(n, call.ivr_id)
    assert_rated(rec, call, ext="1", charged="main", talk_s=2)
    after = money(srv, n)
    assert after["main"]["balance"] == before["main"]["balance"] - minor(rec["cost"])
    assert after["1"] == before["1"]
    assert paths(srv, call) == {"hangup": "settled", "ami": "confirmed"}  # two paths, one settlement
    check_books(srv, [n], [call])


def test_invalid_key_three_times_falls_back_to_default(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """A caller who presses an invalid key three times hears the invalid-extension prompt after the
    first two and is then bridged to the default destination, charged to the main account."""
    n = "4000000106"
    seed(srv, n, main="50", default_dest=branch("talk-0-2"), exts={"1": (branch("talk-0-9"), "5")})
    before = money(srv, n)
    # 9, then 9 and 9 again once each invalid-extension prompt (5.4 s, keys ignored) is over.
    pause = "w" * 14
    call = place(asterisk, srv, n, dtmf=f"9{pause}9{pause}9")
    settled(srv, call)

    inv = "extbill/invalid-extension"
    assert call.prompts() == [WELCOME, inv, WELCOME, inv, WELCOME]
    assert call.dial_strings() == [branch("talk-0-2")] and call.bridged()
    reasons = [x["reason"] for x in srv.find("call.decision", number=n)]
    assert reasons == ["invalid-key", "invalid-key", "invalid-key-fallback"]
    rec = srv.call(n, call.ivr_id)
    assert_rated(rec, call, ext=None, charged="main", talk_s=2)
    after = money(srv, n)
    assert after["main"]["balance"] == before["main"]["balance"] - minor(rec["cost"])
    assert after["1"] == before["1"]
    assert paths(srv, call) == {"hangup": "settled", "ami": "confirmed"}  # two paths, one settlement
    check_books(srv, [n], [call])
    record("invalid-key-fallback", call.events, srv, n, [call])


def test_talk_time_excludes_ivr_and_ringing(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """A caller's extension is charged only for the time actually talking, not for the time spent in
    the IVR menu or while the branch was ringing."""
    n = "4000000107"
    seed(srv, n, main="50", exts={"1": (branch("talk-3-4"), "5")})
    before = money(srv, n)
    started = time.time()
    call = place(asterisk, srv, n, dtmf="1", dtmf_delay=5)  # ~5 s of IVR, 3 s ringing, 4 s talk
    ended = time.time()
    settled(srv, call)

    assert call.prompts() == [WELCOME] and call.dial_statuses() == ["ANSWER"] and call.bridged()
    rec = srv.call(n, call.ivr_id)
    assert_rated(rec, call, ext="1", charged="ext", talk_s=4)
    assert ended - started >= 11.5, ended - started  # the whole call: IVR + ring + talk
    ring_s = epoch(rec["answer"]) - epoch(rec["start"])  # grant (route) -> callee's answer
    assert 2.5 <= ring_s <= 6.0, ring_s  # 3 s of ringing; slack for a loaded machine
    assert epoch(rec["start"]) - started >= 4.5  # the IVR came before the grant
    assert money(srv, n)["1"]["balance"] == before["1"]["balance"] - minor(rec["cost"])
    assert paths(srv, call) == {"hangup": "settled", "ami": "confirmed"}  # two paths, one settlement
    check_books(srv, [n], [call])
    record("talk-time", call.events, srv, n, [call])


def test_short_grant_is_cut_with_warning_and_never_overdrawn(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """A caller to an extension holding only 20 s worth of money hears the balance warning 10 s into
    the talk and is cut off with the limit-reached prompt at 20 s, and the extension is never
    charged more than it held."""
    n = "4000000108"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-60"), "0.2")})  # pays for 20 s
    call = place(asterisk, srv, n, dtmf="1")
    settled(srv, call)

    decision = srv.find("call.decision", number=n)[0]
    assert decision["granted_s"] == 20 and decision["limit_ms"] == 20_000 and decision["final"] is True
    # The caller's channel hears the welcome and, after the cut, limit-reached; the warning is
    # whispered into the bridge from a channel of its own (ChanSpy), so the grant stays movable.
    played = [name for name, _ in asterisk.played(call)]
    assert played == [WELCOME, "extbill/limit-reached"], played
    assert call.prompts() == [WELCOME, "extbill/limit-reached"]
    assert call.bridged() and call.dial_statuses() == ["ANSWER"]
    enter, leave = talk_window(call) or (0.0, 0.0)
    assert 19.8 <= leave - enter <= 20.5, leave - enter  # cut at the grant, not the branch's 60 s
    # The warning (final grant of 20 s: half of it before the end) is whispered 10 s in.
    (warned,) = srv.find("call.warned", billing_id=call.ivr_id)
    assert warned["ok"] is True
    assert 9.0 <= epoch(warned["timestamp"]) - enter <= 11.5, (warned["timestamp"], enter)
    assert ("extbill/balance-warning", "zh") in [
        (name, lang) for name, lang in asterisk.played(None) if name == "extbill/balance-warning"
    ]
    dial = [d for a, d in call.applications() if a == "Dial"]
    assert len(dial) == 1 and "L(20000)" in dial[0], dial  # no L(x:y): its end could not move
    rec = srv.call(n, call.ivr_id)
    assert rec["granted_s"] == 20 and minor(rec["reserved"]) == 200
    assert_rated(rec, call, ext="1", charged="ext", talk_s=20)
    assert rec["talk_s"] <= 20 and minor(rec["cost"]) <= 200
    acc = money(srv, n)["1"]
    assert acc["balance"] == 200 - minor(rec["cost"]) >= 0
    assert paths(srv, call) == {"hangup": "settled", "ami": "confirmed"}  # two paths, one settlement
    check_books(srv, [n], [call])
    record("short-grant", call.events, srv, n, [call])


def test_parallel_calls_never_spend_more_than_the_extension_held(
    asterisk: Asterisk, srv: ExtbillServer
) -> None:
    """Two simultaneous calls to the same extension split what it holds between them, 6 s and 4 s,
    are each cut at their grant, and together never spend more than the extension held or touch the
    main account."""
    # The plan grants at most 6 s a call; the extension holds 10 s worth: the first call
    # reserves 6 s, the second the 4 s left. Both branches would talk 30 s.
    n = "4000000109"
    seed(srv, n, main="50", plan="p11-max6", exts={"1": (branch("talk-0-30"), "0.1")})
    calls, events = place_many(asterisk, srv, (n, {"dtmf": "1"}), (n, {"dtmf": "1"}))
    settled(srv, *calls)

    for call in calls:
        assert call.bridged() and call.prompts() == [WELCOME, "extbill/limit-reached"]
    recs = [srv.call(n, c.ivr_id) for c in calls]
    assert sorted(r["granted_s"] for r in recs) == [4, 6]
    assert sum(minor(r["reserved"]) for r in recs) == 100
    for rec, call in zip(recs, calls):
        assert_rated(rec, call, ext="1", charged="ext", talk_s=rec["granted_s"])
    spent = sum(minor(r["cost"]) for r in recs)
    acc = money(srv, n)["1"]
    assert spent <= 100 and acc["balance"] == 100 - spent >= 0
    assert money(srv, n)["main"]["balance"] == 50_000
    for call in calls:
        assert paths(srv, call) == {"hangup": "settled", "ami": "confirmed"}
    check_books(srv, [n], calls)
    record("parallel", events, srv, n, calls)


def test_busy_and_no_answer_cost_nothing(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """Calls to a busy branch and to one that does not answer are never connected and cost nothing,
    the money held while they rang is released, and the extension's statement shows the hold and its
    void."""
    n = "4000000110"
    seed(srv, n, main="50", exts={"1": (branch("busy"), "5"), "2": (branch("noanswer"), "5")})
    before = money(srv, n)
    calls, events = place_many(asterisk, srv, (n, {"dtmf": "1"}), (n, {"dtmf": "2"}))
    settled(srv, *calls)

    busy, noanswer = calls
    assert busy.dial_strings() == [branch("busy")] and busy.dial_statuses() == ["BUSY"]
    assert noanswer.dial_strings() == [branch("noanswer")] and noanswer.dial_statuses() == ["NOANSWER"]
    for call, status in ((busy, "BUSY"), (noanswer, "NOANSWER")):
        assert not call.bridged() and call.prompts() == [WELCOME]
        rec = srv.call(n, call.ivr_id)
        assert rec["state"] == "unanswered" and rec["disposition"] == status, rec
        assert rec["talk_s"] == 0 and minor(rec["cost"]) == 0 and rec["answer"] is None
        assert minor(rec["reserved"]) > 0  # money was held while it rang ...
    assert money(srv, n) == before  # ... and released
    statement = srv.cli_json("statement", n, "1")
    assert [r["kind"] for r in statement if r["code"] == "call"] == ["void", "pending"]
    for call in calls:
        assert paths(srv, call) == {"hangup": "settled", "ami": "confirmed"}
    check_books(srv, [n], calls)
    record("busy-noanswer", events, srv, n, calls)


# ------------------------------------------------------------------------ faults


def test_ami_connection_dropped_during_a_call(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """If extbill's AMI connection drops mid-call it reconnects without disturbing the live call,
    and the extension is still charged the full talk time exactly once."""
    n = "4000000111"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-6"), "5")})
    mark = len(srv.logs)
    kicked: list[str] = []

    async def during(ami: Any, calls: list[Call]) -> None:
        await wait_bridged(ami, calls[0])
        await asyncio.sleep(1)
        kicked.extend(await asyncio.to_thread(asterisk.kick_ami, "extbill"))
        await srv.wait_log("ami.disconnected", since=mark)
        await srv.wait_log("ami.connected", since=mark, timeout=10)

    call = place(asterisk, srv, n, during=during, dtmf="1")
    settled(srv, call)

    assert kicked, "no AMI session of the extbill user to kick"
    assert [s["username"] for s in asterisk.ami_sessions()].count("extbill") == 1  # reconnected
    reconciled = srv.find("settle.reconciled", since=mark)
    assert reconciled and reconciled[-1]["closed"] == 0  # the live call was left alone
    assert call.bridged() and call.prompts() == [WELCOME]
    rec = srv.call(n, call.ivr_id)
    assert_rated(rec, call, ext="1", charged="ext", talk_s=6)
    # The dialplan's report settled it; AMI, which lost a second of events, agreed.
    assert paths(srv, call) == {"hangup": "settled", "ami": "confirmed"}
    check_books(srv, [n], [call])


def test_serve_restarted_during_a_call(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """If `extbill serve` is restarted mid-call the conversation goes on, and the new process
    charges the extension the full talk time exactly once from the hangup report."""
    n = "4000000112"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-8"), "5")})
    run_before = srv.runs

    async def during(ami: Any, calls: list[Call]) -> None:
        await wait_bridged(ami, calls[0])
        await asyncio.sleep(1)
        await asyncio.to_thread(srv.restart)  # SIGTERM, wait, start on the same DB and port
        assert srv.running

    call = place(asterisk, srv, n, during=during, dtmf="1")
    settled(srv, call)

    assert srv.runs == run_before + 1
    assert srv.find("serve.stopped", _run=run_before)
    assert call.bridged() and call.prompts() == [WELCOME]
    assert call.dial_statuses() == ["ANSWER"]
    settlement = srv.find("call.settled", billing_id=call.ivr_id)[0]
    assert settlement["_run"] == srv.runs  # settled by the new process
    rec = srv.call(n, call.ivr_id)
    assert_rated(rec, call, ext="1", charged="ext", talk_s=8)
    # The new process's AMI never saw this call's Dial end: it leaves it to the hangup handler.
    assert paths(srv, call) == {"hangup": "settled", "ami": "incomplete"}
    check_books(srv, [n], [call])


def test_fastagi_server_down_when_a_call_arrives(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """If the extbill server is down when a call arrives, the caller hears the service-unavailable
    prompt in Chinese and is not connected, and no money moves and no call is recorded."""
    n = "4000000113"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-2"), "5")})
    before = money(srv, n)
    assert srv.stop() == 0  # a clean exit on SIGTERM
    try:
        call = place(asterisk, srv, n, dtmf="1")
    finally:
        srv.start()
    # Fail closed: the dialplan's default language, the service-unavailable prompt, no Dial.
    assert call.prompts() == ["extbill/service-unavailable"]
    assert asterisk.played(call) == [("extbill/service-unavailable", "zh")]
    assert not call.dialed() and not call.bridged()
    assert call.var("AGISTATUS") == "FAILURE"
    assert money(srv, n) == before and srv.calls(n) == []
    check_books(srv, [n], [])
