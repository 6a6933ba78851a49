"""Call control end to end: the real `extbill serve` service in-process, real TCP, a real SQLite file.

A FastAGI peer that speaks as Asterisk does (fastagi/bench/agi_peer.py) makes the dialplan's
three requests (lookup, route, hangup); the tests read what the dialplan would get (the
variables set) and what HQ would see (`extbill balance` data and call records).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from fastagi.core.agi import parse_command_args
from fastagi.core.money import parse_amount
from fastagi.core.rating import Tariff, cost, seconds_max
from fastagi.dev.bench.agi_peer import AgiResult, agi_call, header_block
from fastagi.runtime.config import Settings
from fastagi.service.serve import Service
from fastagi.store import tx_admin, tx_calls

CNY = parse_amount
HOST = "127.0.0.1"
CALLER = "13800138000"
FOREIGN = "0044207946000"
EVIL_CALLERID = "'\"; DROP TABLE calls; --"

STD = Tariff(per_minute=CNY("0.6"), initial_s=60, increment_s=6)  # 0.6 CNY/min
SHORT = Tariff(per_minute=CNY("1"), initial_s=60, increment_s=6, max_call_s=120)  # calls of 2 min at most

HQ = "4008001234"  # IVR + extension billing; ext 1 rich, 2 empty, 801 has 1 CNY
ROUTER = "4008002000"  # extension billing off (extensions only route), English
SUSPENDED = "4008003000"  # main 10 CNY below its minimum 50; ext 1 has money
NODEST = "4008004000"  # no default destination
BROKE = "4008005000"  # minimum 0, main 0.5 CNY: cannot pay a first block
SHARED = "4008006000"  # ext 1 with 5.5 CNY on 2-minute calls: pays for 3 calls
UNKNOWN = "4009999999"

EXT1_MONEY = CNY("30")
SHARED_MONEY = CNY("5.5")


def seed(conn: sqlite3.Connection) -> None:
    a = tx_admin
    a.add_plan(conn, "std", STD)
    a.set_plan_rate(conn, "std", "00", CNY("3"))
    a.add_plan(conn, "short", SHORT)

    a.add_number(conn, HQ, "HQ", "std", CNY("50"), "zh", "PJSIP/operator", 5)
    a.set_number(conn, HQ, ext_billing=True)
    a.add_extension(conn, HQ, "1", "Beijing", "PJSIP/8001", None)
    a.add_extension(conn, HQ, "2", "Shanghai", "PJSIP/8002", None)
    a.add_extension(conn, HQ, "801", "Shenzhen", "PJSIP/8801", None)
    a.recharge(conn, HQ, None, CNY("500"), "hq-main")
    a.recharge(conn, HQ, "1", EXT1_MONEY, "hq-1")
    a.recharge(conn, HQ, "801", CNY("1"), "hq-801")

    a.add_number(conn, ROUTER, "Router", "std", 0, "en", "PJSIP/reception", 8)
    a.add_extension(conn, ROUTER, "1", "Sales", "PJSIP/9001", None)
    a.recharge(conn, ROUTER, None, CNY("100"), "router-main")

    a.add_number(conn, SUSPENDED, "Late payer", "std", CNY("50"), "zh", "PJSIP/operator", 5)
    a.set_number(conn, SUSPENDED, ext_billing=True)
    a.add_extension(conn, SUSPENDED, "1", "Rich branch", "PJSIP/7001", None)
    a.recharge(conn, SUSPENDED, None, CNY("10"), "susp-main")
    a.recharge(conn, SUSPENDED, "1", CNY("30"), "susp-1")

    a.add_number(conn, NODEST, "No operator", "std", 0, "zh", None, 5)
    a.recharge(conn, NODEST, None, CNY("100"), "nodest-main")

    a.add_number(conn, BROKE, "Broke", "std", 0, "zh", "PJSIP/operator", 5)
    a.recharge(conn, BROKE, None, CNY("0.5"), "broke-main")

    a.add_number(conn, SHARED, "Portal", "short", 0, "zh", "PJSIP/operator", 5)
    a.set_number(conn, SHARED, ext_billing=True)
    a.add_extension(conn, SHARED, "1", "Merchant", "PJSIP/6001", None)
    a.recharge(conn, SHARED, None, CNY("100"), "shared-main")
    a.recharge(conn, SHARED, "1", SHARED_MONEY, "shared-1")


@contextlib.asynccontextmanager
async def service(db: str, **settings: Any) -> AsyncIterator[Service]:
    """serve in-process on `db` (the conftest fixture: an SQLite file, or PostgreSQL)."""
    svc = Service(
        Settings(
            db=db,
            agi_bind="127.0.0.1:0",
            demo=False,
            header_timeout_s=settings.pop("header_timeout_s", 2.0),
            **settings,
        )
    )
    await svc.start()
    try:
        assert svc.store is not None
        await svc.store.run(seed)
        yield svc
    finally:
        await svc.stop()


def port(svc: Service) -> int:
    assert svc.agi is not None
    return svc.agi.port


_seq = 0


def uid() -> str:
    """A fresh Asterisk-style uniqueid (epoch.sequence)."""
    global _seq
    _seq += 1
    return f"1732650000.{_seq}"


async def lookup(svc: Service, number: str, **kw: Any) -> AgiResult:
    return await agi_call(HOST, port(svc), "lookup", [number], uniqueid=kw.pop("uniqueid", uid()), **kw)


async def route(
    svc: Service, number: str, digits: str, try_no: int | str = 1, *, uniqueid: str, **kw: Any
) -> AgiResult:
    return await agi_call(HOST, port(svc), "route", [number, digits, str(try_no)], uniqueid=uniqueid, **kw)


async def hangup(svc: Service, args: list[str]) -> AgiResult:
    return await agi_call(HOST, port(svc), "hangup", args, uniqueid=uid())


def answered_hangup(billing_id: str, talk_s: float) -> list[str]:
    ended = time.time()
    return [billing_id, "ANSWER", "16", f"{ended - talk_s:.3f}", f"{ended:.3f}"]


async def balance(svc: Service, number: str) -> dict[str, Any]:
    assert svc.store is not None
    return await svc.store.read(tx_admin.balance, number)


async def ext_balance(svc: Service, number: str, key: str) -> dict[str, Any]:
    (e,) = [e for e in (await balance(svc, number))["extensions"] if e["key"] == key]
    return e


async def records(svc: Service, number: str) -> dict[str, dict[str, Any]]:
    assert svc.store is not None
    return {r["id"]: r for r in await svc.store.read(tx_calls.call_records, number, None, None)}


def _ledger(conn: sqlite3.Connection) -> tuple[Any, ...]:
    return (
        tuple(tuple(r) for r in conn.execute("SELECT * FROM accounts ORDER BY id")),
        conn.execute("SELECT count(*) FROM transfers").fetchone()[0],
        tuple(tuple(r) for r in conn.execute("SELECT * FROM calls ORDER BY billing_id")),
        tuple(tuple(r) for r in conn.execute("SELECT id, suspended FROM numbers ORDER BY id")),
    )


async def ledger(svc: Service) -> tuple[Any, ...]:
    """Every account counter, the transfer count, every call row and suspension flag."""
    assert svc.store is not None
    return await svc.store.read(_ledger)


def set_names(result: AgiResult) -> list[str]:
    """The variable names the server set, in order (SET VARIABLE, or EXEC MSet's pairs)."""
    names: list[str] = []
    for c in result.commands:
        args = parse_command_args(c)
        if c.startswith("SET VARIABLE "):
            names.append(args[2])
        elif c.startswith("EXEC MSet "):
            names += [pair.partition("=")[0] for pair in args[2].split(",")]
        else:
            raise AssertionError(f"only SET VARIABLE or EXEC MSet expected: {result.commands}")
    return names


def assert_answer(result: AgiResult, expected: dict[str, str]) -> None:
    """Exactly these variables, EXTBILL_RESULT last (a half-delivered answer leaves it empty)."""
    assert result.variables == expected
    names = set_names(result)
    assert names[-1] == "EXTBILL_RESULT" and names.count("EXTBILL_RESULT") == 1


def dial_vars(billing_id: str, dest: str, granted_s: int, warn_ms: int = 60_000) -> dict[str, str]:
    return {
        "EXTBILL_ID": billing_id,
        "EXTBILL_DEST": dest,
        "EXTBILL_LIMIT_MS": str(granted_s * 1000),
        "EXTBILL_WARN_MS": str(warn_ms),
        "EXTBILL_DIAL_TIMEOUT": "30",
        "EXTBILL_RESULT": "dial",
    }


def prompt_vars(prompt: str) -> dict[str, str]:
    return {"EXTBILL_PROMPT": prompt, "EXTBILL_RESULT": "prompt"}


# ---- lookup --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number, expected",
    [
        (
            HQ,
            {
                "EXTBILL_LANG": "zh",
                "EXTBILL_DIGIT_TIMEOUT": "5",
                "EXTBILL_MAXDIGITS": "3",
                "EXTBILL_RESULT": "collect",
            },
        ),
        (
            ROUTER,
            {
                "EXTBILL_LANG": "en",
                "EXTBILL_DIGIT_TIMEOUT": "8",
                "EXTBILL_MAXDIGITS": "1",
                "EXTBILL_RESULT": "collect",
            },
        ),
        (UNKNOWN, {"EXTBILL_LANG": "zh", "EXTBILL_PROMPT": "not-in-service", "EXTBILL_RESULT": "prompt"}),
        (SUSPENDED, {"EXTBILL_LANG": "zh", "EXTBILL_PROMPT": "number-suspended", "EXTBILL_RESULT": "prompt"}),
    ],
    ids=["collect-zh-3-digits", "collect-en-1-digit", "unknown", "suspended"],
)
def test_lookup(db: str, number: str, expected: dict[str, str]) -> None:
    """The first request tells the dialplan to collect the key (language, digit timeout, longest key) or which prompt to play."""

    async def main() -> None:
        async with service(db) as svc:
            before = await ledger(svc)
            assert_answer(await lookup(svc, number), expected)
            assert await ledger(svc) == before

    asyncio.run(main())


# ---- route: every rule ---------------------------------------------------------------------

ROUTES = [
    # (id, number, digits, try, caller, expected variables (None: a dial, checked below))
    ("unknown-number", UNKNOWN, "1", 1, CALLER, prompt_vars("not-in-service")),
    ("suspended-even-ext-with-money", SUSPENDED, "1", 1, CALLER, prompt_vars("number-suspended")),
    ("suspended-no-key", SUSPENDED, "", 1, CALLER, prompt_vars("number-suspended")),
    ("invalid-key-try-1", HQ, "9", 1, CALLER, {"EXTBILL_RESULT": "retry"}),
    ("invalid-key-try-2", HQ, "9", 2, CALLER, {"EXTBILL_RESULT": "retry"}),
    ("ext-in-arrears-main-rich", HQ, "2", 1, CALLER, prompt_vars("ext-in-arrears")),
    ("ext-in-arrears-foreign-rate", HQ, "801", 1, FOREIGN, prompt_vars("ext-in-arrears")),
    ("main-cannot-pay", BROKE, "", 1, CALLER, prompt_vars("number-suspended")),
    ("no-default-destination", NODEST, "", 1, CALLER, prompt_vars("service-unavailable")),
    ("no-default-destination-out-of-tries", NODEST, "5", 3, CALLER, prompt_vars("service-unavailable")),
]


@pytest.mark.parametrize(
    "number, digits, try_no, caller, expected", [r[1:] for r in ROUTES], ids=[r[0] for r in ROUTES]
)
def test_route_prompt_changes_nothing(
    db: str, number: str, digits: str, try_no: int, caller: str, expected: dict[str, str]
) -> None:
    """A caller who is not connected hears the rule's prompt (or is asked again), and no money is reserved."""

    async def main() -> None:
        async with service(db) as svc:
            before = await ledger(svc)
            assert_answer(await route(svc, number, digits, try_no, uniqueid=uid(), callerid=caller), expected)
            assert await ledger(svc) == before

    asyncio.run(main())


DIALS = [
    # (id, number, digits, try, caller, dest, charged ext key or None for main, granted_s, warn_ms)
    ("ext-billing-on-charged-to-ext", HQ, "1", 1, CALLER, "PJSIP/8001", "1", 3000, 60_000),
    ("ext-short-grant-warned-half-way", HQ, "801", 1, CALLER, "PJSIP/8801", "801", 96, 48_000),
    ("no-key-default-charged-to-main", HQ, "", 1, CALLER, "PJSIP/operator", None, 7200, 60_000),
    ("invalid-key-try-3-default-main", HQ, "9", 3, CALLER, "PJSIP/operator", None, 7200, 60_000),
    ("ext-billing-off-routes-main-pays", ROUTER, "1", 1, CALLER, "PJSIP/9001", None, 7200, 60_000),
    ("foreign-caller-prefix-rate", ROUTER, "1", 1, FOREIGN, "PJSIP/9001", None, 1998, 60_000),
    ("capped-at-max-call", SHARED, "1", 1, CALLER, "PJSIP/6001", "1", 120, 60_000),
]


@pytest.mark.parametrize(
    "number, digits, try_no, caller, dest, ext_key, granted_s, warn_ms",
    [d[1:] for d in DIALS],
    ids=[d[0] for d in DIALS],
)
def test_route_dial_reserves(
    db: str,
    number: str,
    digits: str,
    try_no: int,
    caller: str,
    dest: str,
    ext_key: str | None,
    granted_s: int,
    warn_ms: int,
) -> None:
    """A connected call gets its Dial target and limit, and HQ sees its cost reserved on the right account only."""

    async def main() -> None:
        async with service(db) as svc:
            before = await balance(svc, number)
            billing_id = uid()
            result = await route(svc, number, digits, try_no, uniqueid=billing_id, callerid=caller)
            assert_answer(result, dial_vars(billing_id, dest, granted_s, warn_ms))
            after = await balance(svc, number)
            (rec,) = (await records(svc, number)).values()
            assert rec["state"] == "reserved" and rec["granted_s"] == granted_s and rec["dest"] == dest
            assert rec["ext"] == (None if dest == "PJSIP/operator" else digits)
            reserved = rec["reserved"]
            assert reserved > 0
            charged = "ext" if ext_key else "main"
            assert rec["charged"] == charged
            if ext_key:
                e_before = next(e for e in before["extensions"] if e["key"] == ext_key)
                e_after = next(e for e in after["extensions"] if e["key"] == ext_key)
                assert e_after["reserved"] == reserved <= e_before["available"]
                assert e_after["available"] == e_before["available"] - reserved >= 0
                assert e_after["balance"] == e_before["balance"]
                assert after["main"] == before["main"]
            else:
                assert after["main"]["reserved"] == reserved <= before["main"]["available"]
                assert after["main"]["available"] == before["main"]["available"] - reserved
                assert after["main"]["balance"] == before["main"]["balance"]
                assert after["extensions"] == before["extensions"]

    asyncio.run(main())


def test_invalid_key_three_tries_then_default(db: str) -> None:
    """A caller pressing a wrong key is asked again twice, then put through to the default destination on main."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            before = await ledger(svc)
            for try_no in (1, 2):
                assert_answer(await route(svc, HQ, "77", try_no, uniqueid=call), {"EXTBILL_RESULT": "retry"})
            assert await ledger(svc) == before
            result = await route(svc, HQ, "77", 3, uniqueid=call)
            assert result.variables["EXTBILL_RESULT"] == "dial"
            assert result.variables["EXTBILL_DEST"] == "PJSIP/operator"
            assert (await balance(svc, HQ))["main"]["reserved"] > 0

    asyncio.run(main())


def test_repeated_route_reserves_once(db: str) -> None:
    """The same channel asking again gets the grant it already has; nothing more is reserved."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            first = await route(svc, HQ, "801", uniqueid=call)
            after_first = await ledger(svc)
            second = await route(svc, HQ, "801", uniqueid=call)
            assert second.variables == first.variables
            assert await ledger(svc) == after_first

    asyncio.run(main())


def test_decision_log_line(db: str) -> None:
    """Each decision is one log line carrying the call's uniqueid, number, key, caller, granted seconds and reserve."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
                await route(svc, HQ, "801", uniqueid=call)
                await route(svc, HQ, "2", uniqueid=uid(), callerid=EVIL_CALLERID)
            first, second = [e for e in logs if e["event"] == "call.decision"]
            assert {
                k: first[k]
                for k in ("uniqueid", "number", "ext", "caller", "action", "granted_s", "reserved", "charged")
            } == {
                "uniqueid": call,
                "number": HQ,
                "ext": "801",
                "caller": CALLER,
                "action": "dial",
                "granted_s": 96,
                "reserved": "0.960",
                "charged": "ext",
            }
            assert (second["action"], second["prompt"], second["caller"]) == (
                "prompt",
                "ext-in-arrears",
                "unknown",
            )

    asyncio.run(main())


# ---- hangup: settlement --------------------------------------------------------------------


def test_hangup_rates_once(db: str) -> None:
    """An answered call is charged its rated cost exactly once; a second hangup report changes nothing."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            await route(svc, HQ, "1", uniqueid=call)
            result = await hangup(svc, answered_hangup(call, 95.4))  # 95 s -> billed 96 s at 0.6/min
            assert result.variables == {} and result.commands == []
            e = await ext_balance(svc, HQ, "1")
            expected_cost = cost(95, STD)
            assert expected_cost == CNY("0.96")
            assert (e["balance"], e["reserved"], e["available"], e["spent"]) == (
                EXT1_MONEY - expected_cost,
                0,
                EXT1_MONEY - expected_cost,
                expected_cost,
            )
            rec = (await records(svc, HQ))[call]
            assert (
                rec["state"],
                rec["talk_s"],
                rec["billed_s"],
                rec["cost"],
                rec["disposition"],
                rec["cause"],
                rec["settled_by"],
            ) == ("rated", 95, 96, expected_cost, "ANSWER", "16", "hangup")
            settled = await ledger(svc)
            await hangup(svc, answered_hangup(call, 600))
            await hangup(svc, [call, "NOANSWER", "19", "", f"{time.time():.3f}"])
            assert await ledger(svc) == settled

    asyncio.run(main())


def test_hangup_main_call_rated_on_main(db: str) -> None:
    """A no-key call is charged to the number's main account, and the extensions are untouched."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            before = await balance(svc, HQ)
            await route(svc, HQ, "", uniqueid=call)
            await hangup(svc, answered_hangup(call, 61))  # 61 s -> billed 66 s
            after = await balance(svc, HQ)
            assert after["main"]["balance"] == before["main"]["balance"] - cost(61, STD)
            assert after["main"]["reserved"] == 0 and after["main"]["spent"] == cost(61, STD) == CNY("0.66")
            assert after["extensions"] == before["extensions"]

    asyncio.run(main())


@pytest.mark.parametrize(
    "status, cause, answered",
    [
        ("NOANSWER", "19", False),
        ("BUSY", "17", False),
        ("BUSY", "17", True),
        ("CANCEL", "16", False),
        ("CHANUNAVAIL", "20", False),
        ("", "16", False),
    ],
)
def test_hangup_unanswered_voids(db: str, status: str, cause: str, answered: bool) -> None:
    """A call the branch never answered (busy, no answer, cancelled) costs nothing and releases its reservation."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            await route(svc, HQ, "1", uniqueid=call)
            assert (await ext_balance(svc, HQ, "1"))["reserved"] > 0
            now = time.time()
            await hangup(svc, [call, status, cause, f"{now - 30:.3f}" if answered else "", f"{now:.3f}"])
            e = await ext_balance(svc, HQ, "1")
            assert (e["balance"], e["reserved"], e["available"], e["spent"]) == (EXT1_MONEY, 0, EXT1_MONEY, 0)
            rec = (await records(svc, HQ))[call]
            assert (rec["state"], rec["cost"], rec["talk_s"]) == ("unanswered", 0, 0)

    asyncio.run(main())


# ---- bad input -----------------------------------------------------------------------------

BAD_ROUTES = [
    ("not-a-400-number", ["4001", "1", "1"]),
    ("number-too-long", ["40080012345", "1", "1"]),
    ("number-sql", ["4008001234' OR 1=1 --", "1", "1"]),
    ("try-not-a-number", [HQ, "1", "x"]),
    ("try-zero", [HQ, "1", "0"]),
    ("try-negative", [HQ, "1", "-1"]),
    ("try-empty", [HQ, "1", ""]),
    ("try-huge", [HQ, "1", "99999999999999999999"]),
    ("missing-try", [HQ, "1"]),
    ("missing-digits-and-try", [HQ]),
    ("no-args", []),
]


@pytest.mark.parametrize("args", [b[1] for b in BAD_ROUTES], ids=[b[0] for b in BAD_ROUTES])
def test_bad_route_arguments_answer_nothing(db: str, args: list[str]) -> None:
    """A malformed route request gets no answer (the dialplan fails closed) and changes nothing in the ledger."""

    async def main() -> None:
        async with service(db) as svc:
            before = await ledger(svc)
            result = await agi_call(HOST, port(svc), "route", args, uniqueid=uid())
            assert result.variables == {} and result.commands == []
            assert await ledger(svc) == before

    asyncio.run(main())


def test_bad_uniqueid_answers_nothing(db: str) -> None:
    """A route whose channel id is not an Asterisk uniqueid is refused: no billing id full of SQL is stored."""

    async def main() -> None:
        async with service(db) as svc:
            before = await ledger(svc)
            result = await route(svc, HQ, "1", uniqueid="1'; DROP TABLE calls; --")
            assert result.variables == {} and result.commands == []
            assert await ledger(svc) == before

    asyncio.run(main())


@pytest.mark.parametrize("digits", ["*", "A#", "1*", "#", "１", "1234567"])
def test_non_digit_keys_are_invalid_keys(db: str, digits: str) -> None:
    """A caller pressing '*', letters or an over-long key is asked again (invalid key), and nothing is reserved."""

    async def main() -> None:
        async with service(db) as svc:
            before = await ledger(svc)
            assert_answer(await route(svc, HQ, digits, 1, uniqueid=uid()), {"EXTBILL_RESULT": "retry"})
            assert await ledger(svc) == before
            # After three tries it is "no key": the default destination, charged to main, never an extension.
            result = await route(svc, HQ, digits, 3, uniqueid=uid())
            assert result.variables["EXTBILL_DEST"] == "PJSIP/operator"
            assert (await ext_balance(svc, HQ, "1"))["reserved"] == 0

    asyncio.run(main())


def test_hostile_caller_id_is_rated_and_stored_harmlessly(db: str) -> None:
    """A caller id of quotes, semicolons and SQL still gets its call connected, rated and recorded; no table is harmed."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            result = await route(svc, HQ, "1", uniqueid=call, callerid=EVIL_CALLERID)
            assert result.variables["EXTBILL_RESULT"] == "dial"
            await hangup(svc, answered_hangup(call, 30))
            rec = (await records(svc, HQ))[call]
            assert rec["state"] == "rated" and rec["cost"] == cost(30, STD)
            assert rec["caller"] == "unknown"
            assert svc.store is not None
            counts = await svc.store.read(  # fails if a table was dropped, on either engine
                lambda c: [
                    c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("calls", "accounts")
                ]
            )
            assert counts[0] >= 1 and counts[1] >= 3
            # Digits inside the junk are still the caller number, and pick its prefix rate.
            call2 = uid()
            r2 = await route(svc, ROUTER, "1", uniqueid=call2, callerid='"0044\'; DELETE FROM calls; --" 20')
            assert r2.variables["EXTBILL_LIMIT_MS"] == str(1998 * 1000)  # 100 CNY at 3 CNY/min
            assert (await records(svc, ROUTER))[call2]["caller"] == "004420"

    asyncio.run(main())


BAD_HANGUPS = [
    ("garbage-times", lambda c: [c, "ANSWER", "16", "yesterday", "now"]),
    ("float-exponent-time", lambda c: [c, "ANSWER", "16", "1e9", "2e9"]),
    ("negative-time", lambda c: [c, "ANSWER", "16", "-1732650000.1", "1732650100.1"]),
    ("unknown-status", lambda c: [c, "RINGING", "16", "", ""]),
    ("status-sql", lambda c: [c, "ANSWER'; DROP TABLE calls; --", "16", "", ""]),
    ("cause-not-a-number", lambda c: [c, "ANSWER", "normal", "1732650000.1", "1732650100.1"]),
    ("answered-without-time", lambda c: [c, "ANSWER", "16", "", f"{time.time():.3f}"]),
    ("id-sql", lambda c: ["'; DROP TABLE calls; --", "ANSWER", "16", "1732650000.1", "1732650100.1"]),
    ("unknown-id", lambda c: ["1700000000.999", "ANSWER", "16", "1732650000.1", "1732650100.1"]),
    ("no-args", lambda c: []),
]


@pytest.mark.parametrize("make_args", [b[1] for b in BAD_HANGUPS], ids=[b[0] for b in BAD_HANGUPS])
def test_bad_hangup_changes_nothing(db: str, make_args: Any) -> None:
    """A hangup report with garbage changes nothing: the reservation stays held until a valid report settles it."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            await route(svc, HQ, "1", uniqueid=call)
            held = await ledger(svc)
            result = await hangup(svc, make_args(call))
            assert result.variables == {}
            assert await ledger(svc) == held
            assert (await records(svc, HQ))[call]["state"] == "reserved"
            await hangup(svc, answered_hangup(call, 10))
            assert (await records(svc, HQ))[call]["state"] == "rated"

    asyncio.run(main())


def test_route_not_served(db: str) -> None:
    """A request for a route we do not serve is closed with no answer and no ledger change."""

    async def main() -> None:
        async with service(db) as svc:
            before = await ledger(svc)
            for script in ("admin", "route/../admin", "recharge"):
                result = await agi_call(HOST, port(svc), script, [HQ, "1", "1"], uniqueid=uid())
                assert result.commands == []
            assert await ledger(svc) == before

    asyncio.run(main())


# ---- Asterisk hangs up while we answer -----------------------------------------------------


def test_hangup_right_after_headers_releases_reservation(db: str) -> None:
    """A caller gone before the grant is delivered (HANGUP, then 511 to every command) leaves no money reserved."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            result = await agi_call(
                HOST, port(svc), "route", [HQ, "1", "1"], uniqueid=call, hangup_after_headers=True
            )
            assert set_names(result)[:1] == ["EXTBILL_ID"]
            e = await ext_balance(svc, HQ, "1")
            assert (e["balance"], e["reserved"], e["available"]) == (EXT1_MONEY, 0, EXT1_MONEY)
            rec = (await records(svc, HQ))[call]
            assert (rec["state"], rec["cost"], rec["settled_by"]) == ("unanswered", 0, "setup")
            # The hangup handler may still report it: nothing changes.
            settled = await ledger(svc)
            await hangup(svc, [call, "", "16", "", f"{time.time():.3f}"])
            assert await ledger(svc) == settled
            # Prompts and lookups of a hung-up caller change nothing either, and are no handler error.
            with capture_logs() as logs:
                for script, args in (("lookup", [HQ]), ("route", [HQ, "2", "1"]), ("route", [HQ, "9", "1"])):
                    result = await agi_call(
                        HOST, port(svc), script, args, uniqueid=uid(), hangup_after_headers=True
                    )
                    assert len(result.commands) == 1
            assert await ledger(svc) == settled
            assert not [e for e in logs if e["log_level"] == "error"], logs

    asyncio.run(main())


async def _peer_dropping_at(port_: int, billing_id: str, drop_on: str) -> list[str]:
    """An Asterisk whose connection dies when it receives the command naming `drop_on` (no reply)."""
    reader, writer = await asyncio.open_connection(HOST, port_)
    writer.write(header_block("route", [HQ, "1", "1"], uniqueid=billing_id, extension=HQ, port=port_))
    seen: list[str] = []
    try:
        async with asyncio.timeout(5):
            while line := await reader.readline():
                seen.append(line.decode().rstrip("\n"))
                if drop_on in seen[-1]:
                    break
                writer.write(b"200 result=1\n")
    finally:
        writer.close()
    return seen


async def _idle(svc: Service) -> None:
    assert svc.agi is not None
    async with asyncio.timeout(5):
        while svc.agi.connections:
            await asyncio.sleep(0.01)


def test_connection_lost_before_result_releases_reservation(db: str) -> None:
    """If the connection is gone before the answer is sent, no Dial can follow, so the money is released at once."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            reader, writer = await asyncio.open_connection(HOST, port(svc))
            writer.write(header_block("route", [HQ, "1", "1"], uniqueid=call, extension=HQ, port=port(svc)))
            writer.close()  # gone before the server can answer
            await _idle(svc)
            await asyncio.sleep(0.2)
            assert (await ext_balance(svc, HQ, "1"))["reserved"] == 0
            assert (await records(svc, HQ))[call]["state"] == "unanswered"

    asyncio.run(main())


def test_unconfirmed_result_keeps_reservation_for_the_hangup_handler(db: str) -> None:
    """If EXTBILL_RESULT=dial was sent but never acknowledged, the call may be bridged: it stays reserved and is billed."""

    async def main() -> None:
        async with service(db) as svc:
            call = uid()
            seen = await _peer_dropping_at(port(svc), call, "EXTBILL_RESULT")
            await _idle(svc)
            assert "EXTBILL_RESULT=dial" in seen[-1]
            assert (await ext_balance(svc, HQ, "1"))["reserved"] == EXT1_MONEY
            assert (await records(svc, HQ))[call]["state"] == "reserved"
            await hangup(svc, answered_hangup(call, 120))
            e = await ext_balance(svc, HQ, "1")
            assert (e["balance"], e["reserved"]) == (EXT1_MONEY - cost(120, STD), 0)

    asyncio.run(main())


# ---- concurrency ---------------------------------------------------------------------------


def test_parallel_calls_never_reserve_more_than_balance(db: str) -> None:
    """50 simultaneous calls to one extension connect only as many as its balance pays for; it is never overdrawn."""

    async def main() -> None:
        expected_dials, available = 0, SHARED_MONEY
        expected_reserves = []
        while (granted := seconds_max(available, SHORT)) > 0:
            expected_dials += 1
            expected_reserves.append(cost(granted, SHORT))
            available -= cost(granted, SHORT)
        assert expected_dials == 3 and sum(expected_reserves) == SHARED_MONEY

        async with service(db) as svc:
            samples: list[dict[str, Any]] = []
            done = asyncio.Event()

            async def watch() -> None:
                while not done.is_set():
                    samples.append(await ext_balance(svc, SHARED, "1"))
                    await asyncio.sleep(0)

            watcher = asyncio.create_task(watch())
            ids = [uid() for _ in range(50)]
            results = await asyncio.gather(*(route(svc, SHARED, "1", uniqueid=i) for i in ids))
            done.set()
            await watcher
            samples.append(await ext_balance(svc, SHARED, "1"))

            outcomes = [r.variables.get("EXTBILL_RESULT") for r in results]
            dials = [r for r in results if r.variables.get("EXTBILL_RESULT") == "dial"]
            assert len(dials) == expected_dials
            assert outcomes.count("prompt") == 50 - expected_dials
            assert all(
                r.variables["EXTBILL_PROMPT"] == "ext-in-arrears"
                for r in results
                if r.variables.get("EXTBILL_RESULT") == "prompt"
            )
            assert len(samples) > 2
            for s in samples:
                assert 0 <= s["reserved"] <= s["balance"] == SHARED_MONEY
                assert s["available"] >= 0
            recs = await records(svc, SHARED)
            assert sorted(r["reserved"] for r in recs.values()) == sorted(expected_reserves)
            assert {r["id"] for r in recs.values()} == {r.variables["EXTBILL_ID"] for r in dials}
            assert samples[-1]["reserved"] == SHARED_MONEY and samples[-1]["available"] == 0
            assert (await balance(svc, SHARED))["main"]["reserved"] == 0

            # They all end unanswered: everything is released, nothing charged.
            await asyncio.gather(
                *(
                    hangup(svc, [r.variables["EXTBILL_ID"], "NOANSWER", "19", "", f"{time.time():.3f}"])
                    for r in dials
                )
            )
            e = await ext_balance(svc, SHARED, "1")
            assert (e["balance"], e["reserved"], e["available"]) == (SHARED_MONEY, 0, SHARED_MONEY)

    asyncio.run(main())


def test_valid_call_unaffected_by_concurrent_garbage(db: str) -> None:
    """A real call is granted and settled in normal time while 20 other connections send garbage or over-limit headers."""
    good_headers = header_block("lookup", [HQ], uniqueid="1732650000.5000", extension=HQ)
    garbage = [
        b"A" * 70_000,  # one line over the limit
        b"".join(b"agi_x%d: %s\n" % (i, b"y" * 7000) for i in range(10)),  # 70 KiB header block
        b"".join(b"agi_h%d: v\n" % i for i in range(250)) + b"\n",  # 250 header lines
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"",  # connect and say nothing
        good_headers[:200],  # stall half-way through headers
        good_headers + b"this is not a reply\n",  # garbage instead of a reply
        b"agi_network: yes\n" * 2,  # duplicate headers
        header_block("hack", [HQ], uniqueid="1732650000.5001"),  # a route we do not serve
    ]

    async def junk(svc: Service, payload: bytes) -> asyncio.StreamWriter:
        _reader, writer = await asyncio.open_connection(HOST, port(svc))
        if payload:
            writer.write(payload)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        return writer

    async def valid_call(svc: Service) -> float:
        t0 = time.perf_counter()
        call = uid()
        assert (await lookup(svc, HQ)).variables["EXTBILL_RESULT"] == "collect"
        assert (await route(svc, HQ, "1", uniqueid=call)).variables["EXTBILL_RESULT"] == "dial"
        await hangup(svc, answered_hangup(call, 30))
        assert (await records(svc, HQ))[call]["state"] == "rated"
        return time.perf_counter() - t0

    async def main() -> None:
        async with service(db, header_timeout_s=3.0) as svc:
            normal = min([await valid_call(svc) for _ in range(3)])
            before_calls = len(await records(svc, HQ))
            attack = asyncio.gather(*(junk(svc, garbage[i % len(garbage)]) for i in range(20)))
            under_attack = await valid_call(svc)
            writers = await attack
            assert under_attack < max(1.0, 10 * normal), (under_attack, normal)
            assert len(await records(svc, HQ)) == before_calls + 1
            # The bad clients were cut (or are waiting out the header timeout); the server still serves.
            for writer in writers:
                writer.close()
            assert (await lookup(svc, ROUTER)).variables["EXTBILL_RESULT"] == "collect"

    asyncio.run(main())
