"""Calls that share an account's money (docs/rules.md rule 9), end to end on the real Asterisk:
each call holds one chunk of talk time, renewed mid-call through AMI (TIMEOUT(absolute) on
the callee), warned by a whisper before a final grant's cut, cut at the paid end.

The server runs with short chunks (--quota-s 4 --renew-before-s 2) so a call of a few
seconds crosses several renewals. Plans: 1/1 s blocks at 0.6 CNY a minute (0.01 CNY a second).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from .asterisk import Asterisk, Call
from .extbill_server import ExtbillServer, minor
from .test_scenarios import (
    CENT_PER_S,
    WELCOME,
    assert_rated,
    branch,
    check_books,
    money,
    place,
    place_many,
    seed,
    settled,
    talk_window,
    wait_bridged,
)

QUOTA = ("--quota-s", "4", "--renew-before-s", "2")
WARNING = "extbill/balance-warning"


@pytest.fixture(scope="module")
def extbill_server(asterisk_server: Asterisk, tmp_path_factory: pytest.TempPathFactory):
    srv = ExtbillServer(asterisk_server, tmp_path_factory.mktemp("extbill-quota"), extra_args=QUOTA)
    srv.cli("db", "init")
    srv.cli("plan", "add", "p11", "--per-minute", "0.6", "--initial", "1", "--increment", "1")
    srv.cli(
        "plan",
        "add",
        "p11-max10",
        "--per-minute",
        "0.6",
        "--initial",
        "1",
        "--increment",
        "1",
        "--max-call",
        "10",
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def srv(extbill: ExtbillServer) -> ExtbillServer:
    return extbill


def renewals(srv: ExtbillServer, call: Call) -> list[dict[str, Any]]:
    return srv.find("call.renewed", billing_id=call.ivr_id)


def whispered(asterisk: Asterisk, call: Call) -> int:
    """How many balance warnings the supervisor whispered into this call (ChanSpy on the
    caller's channel, the prompt played on the whisper channel)."""
    ivr = {e["Channel"] for e in call.ivr_events() if "Channel" in e}
    log = asterisk.log_text()
    spied = sum(f"Spying on channel {c}" in log or f"ChanSpy({c}" in log for c in ivr)
    plays = [name for name, _ in asterisk.played(None) if name == WARNING]
    return min(spied, len(plays)) if spied else len(plays)


def test_four_callers_share_an_extensions_money(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """Four callers pressing the key of an extension holding 10.000 are all bridged, each holds
    only a chunk at a time, and each is charged its own talk time."""
    n = "4000000201"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-6"), "10")})
    calls, _ = place_many(asterisk, srv, *[(n, {"dtmf": "1", "hold": 20}) for _ in range(4)])
    settled(srv, *calls)

    decisions = srv.find("call.decision", number=n)
    assert [d["action"] for d in decisions] == ["dial"] * 4, decisions
    assert all(d["granted_s"] == 4 and d["final"] is False for d in decisions), decisions
    spent = 0
    for call in calls:
        assert call.bridged() and call.prompts() == [WELCOME]
        rec = srv.call(n, call.ivr_id)
        assert_rated(rec, call, ext="1", charged="ext", talk_s=6)
        assert rec["renewals"] >= 1 and rec["granted_s"] >= rec["talk_s"]
        spent += minor(rec["cost"])
    assert money(srv, n)["1"] == {"balance": 10_000 - spent, "reserved": 0, "available": 10_000 - spent}
    check_books(srv, [n], calls)


def test_four_callers_share_the_main_account(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """Four callers who press no key are all connected to the default destination and charged
    to the main account, which holds far less than four maximum calls."""
    n = "4000000202"
    seed(srv, n, main="10", ext_billing=False, default_dest=branch("talk-0-6"))
    calls, _ = place_many(asterisk, srv, *[(n, {"hold": 20}) for _ in range(4)])
    settled(srv, *calls)

    spent = 0
    for call in calls:
        assert call.bridged() and call.prompts() == [WELCOME]
        rec = srv.call(n, call.ivr_id)
        assert_rated(rec, call, ext=None, charged="main", talk_s=6)
        spent += minor(rec["cost"])
    assert money(srv, n)["main"]["balance"] == 10_000 - spent
    check_books(srv, [n], calls)


def test_a_call_across_several_renewals_is_billed_its_real_talk(
    asterisk: Asterisk, srv: ExtbillServer
) -> None:
    """A 15 s conversation on 4 s chunks is renewed at least three times without the caller
    noticing, and is charged exactly its talk time."""
    n = "4000000203"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-15"), "5")})
    call = place(asterisk, srv, n, dtmf="1", hold=30)
    settled(srv, call)

    rec = srv.call(n, call.ivr_id)
    assert call.bridged() and call.prompts() == [WELCOME]
    assert_rated(rec, call, ext="1", charged="ext", talk_s=15)
    assert rec["renewals"] >= 3 and len(renewals(srv, call)) == rec["renewals"]
    assert minor(rec["cost"]) == rec["talk_s"] * CENT_PER_S
    check_books(srv, [n], [call])


def test_balance_running_out_mid_call_is_warned_and_cut_at_the_paid_end(
    asterisk: Asterisk, srv: ExtbillServer
) -> None:
    """An extension holding 15 s of money: the call is renewed until the money runs out, the
    caller hears the balance warning, then is cut at 15 s with the limit-reached prompt, and
    the extension ends at exactly zero."""
    n = "4000000204"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-60"), "0.15")})
    call = place(asterisk, srv, n, dtmf="1", hold=60)
    settled(srv, call)

    rec = srv.call(n, call.ivr_id)
    enter, leave = talk_window(call) or (0.0, 0.0)
    assert 14.0 <= leave - enter <= 16.0, leave - enter
    assert call.prompts() == [WELCOME, "extbill/limit-reached"]
    assert srv.find("call.warned", billing_id=call.ivr_id), "no warning whispered"
    assert whispered(asterisk, call) >= 1
    assert rec["granted_s"] == 15 and abs(rec["talk_s"] - 15) <= 1
    acc = money(srv, n)["1"]
    assert acc["balance"] == 150 - minor(rec["cost"]) >= 0
    check_books(srv, [n], [call])


def test_two_calls_draining_one_balance_are_both_cut_within_it(
    asterisk: Asterisk, srv: ExtbillServer
) -> None:
    """Two long calls on one extension holding 20 s of money share it and are both cut; together
    they never spend more than it held, and neither touches the main account."""
    n = "4000000205"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-60"), "0.2")})
    calls, _ = place_many(asterisk, srv, (n, {"dtmf": "1", "hold": 60}), (n, {"dtmf": "1", "hold": 60}))
    settled(srv, *calls)

    recs = [srv.call(n, c.ivr_id) for c in calls]
    for call, rec in zip(calls, recs):
        assert call.bridged() and call.prompts() == [WELCOME, "extbill/limit-reached"], call.prompts()
        assert rec["talk_s"] <= rec["granted_s"]
    spent = sum(minor(r["cost"]) for r in recs)
    assert 180 <= spent <= 200, spent  # all of it, give or take the last second of each call
    assert money(srv, n)["1"]["balance"] == 200 - spent >= 0
    assert money(srv, n)["main"]["balance"] == 50_000
    check_books(srv, [n], calls)


def test_ami_lost_mid_call_then_supervision_resumes(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """extbill's AMI session is dropped mid-call: it reconnects, takes the live call back and
    renews it again, and the call is billed its full talk time exactly once."""
    n = "4000000206"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-12"), "5")})
    mark = len(srv.logs)

    async def during(ami: Any, calls: list[Call]) -> None:
        await wait_bridged(ami, calls[0])
        await asyncio.sleep(1)
        await asyncio.to_thread(asterisk.kick_ami, "extbill")
        await srv.wait_log("ami.disconnected", since=mark)
        await srv.wait_log("ami.connected", since=mark, timeout=10)

    call = place(asterisk, srv, n, during=during, dtmf="1", hold=30)
    settled(srv, call)

    later = srv.logs[mark:]
    reconnected = next(i for i, x in enumerate(later) if x.get("event") == "ami.connected")
    renewed_after = [
        x
        for x in later[reconnected:]
        if x.get("event") == "call.renewed" and x.get("billing_id") == call.ivr_id
    ]
    assert renewed_after, "the call was not renewed after the reconnect"
    rec = srv.call(n, call.ivr_id)
    assert call.prompts() == [WELCOME]
    assert_rated(rec, call, ext="1", charged="ext", talk_s=12)
    check_books(srv, [n], [call])


def test_serve_restarted_mid_call_resumes_renewals(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """`extbill serve` restarted mid-call: the new process finds the live call in the store,
    renews it, and the conversation runs its full 12 s, billed once."""
    n = "4000000207"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-12"), "5")})
    run_before = srv.runs

    async def during(ami: Any, calls: list[Call]) -> None:
        await wait_bridged(ami, calls[0])
        await asyncio.sleep(1)
        await asyncio.to_thread(srv.restart)

    call = place(asterisk, srv, n, during=during, dtmf="1", hold=30)
    settled(srv, call)

    assert srv.runs == run_before + 1
    assert [r for r in renewals(srv, call) if r["_run"] == srv.runs], "the new process never renewed"
    rec = srv.call(n, call.ivr_id)
    assert call.prompts() == [WELCOME]
    assert_rated(rec, call, ext="1", charged="ext", talk_s=12)
    check_books(srv, [n], [call])


def test_recharge_during_a_final_grant_extends_the_call(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """A branch topped up while its caller is on a final grant: the call is renewed again and
    runs its full 20 s instead of being cut at the 8 s the extension held."""
    n = "4000000208"
    seed(srv, n, main="50", exts={"1": (branch("talk-0-20"), "0.08")})
    mark = len(srv.logs)

    async def during(ami: Any, calls: list[Call]) -> None:
        await wait_bridged(ami, calls[0])
        deadline = time.monotonic() + 10
        while not srv.find("call.final_grant", since=mark) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.to_thread(srv.cli, "recharge", n, "1", "1")

    call = place(asterisk, srv, n, during=during, dtmf="1", hold=40)
    settled(srv, call)

    assert srv.find("call.final_grant", since=mark), "the grant never became final"
    rec = srv.call(n, call.ivr_id)
    assert call.prompts() == [WELCOME]
    assert_rated(rec, call, ext="1", charged="ext", talk_s=20)
    assert money(srv, n)["1"]["balance"] == 1_080 - minor(rec["cost"])
    check_books(srv, [n], [call])


def test_the_plans_maximum_call_caps_the_sum_of_all_chunks(asterisk: Asterisk, srv: ExtbillServer) -> None:
    """A plan with a 10 s maximum call: however much money there is, the renewed chunks stop at
    10 s, the caller is warned and cut there, and charged 10 s."""
    n = "4000000209"
    seed(srv, n, main="50", plan="p11-max10", exts={"1": (branch("talk-0-40"), "50")})
    call = place(asterisk, srv, n, dtmf="1", hold=40)
    settled(srv, call)

    rec = srv.call(n, call.ivr_id)
    assert call.prompts() == [WELCOME, "extbill/limit-reached"]
    assert rec["granted_s"] == 10 and rec["renewals"] >= 2 and abs(rec["talk_s"] - 10) <= 1
    assert srv.find("call.warned", billing_id=call.ivr_id)
    assert minor(rec["cost"]) == rec["talk_s"] * CENT_PER_S
    check_books(srv, [n], [call])
