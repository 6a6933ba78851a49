"""Mid-call renewals under load: serve's CPU per renewal, beside its CPU per setup.

A run of its own, because renewals happen in real time (a chunk is renewed shortly before
its end) while the main benchmark's talk exists only in timestamps. `extbill serve` runs
with one-second chunks (--quota-s 1 --renew-before-s 1) against a small database with a
1/1-second plan; the fake AMI peer (ami_peer.py) answers every Setvar as Asterisk does for
a live channel. `calls` calls are set up over FastAGI and answered now, then held for
`seconds`: each is renewed about once a second. Afterwards every call is ended and
settled, and the books are checked: every chunk resolved once, nothing left reserved,
the posted cost of each call exactly its talk time at the plan's price.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from fastagi.asterisk.agi_client import agi_call
from fastagi.core.ledger_check import ledger_discrepancies
from fastagi.core.money import parse_amount
from fastagi.core.rating import Tariff
from fastagi.dev.bench.ami_peer import CallChannels, FakeAmi
from fastagi.dev.bench.procs import BenchError, free_port, serve_command, stop_process, tree_cpu_s
from fastagi.store import tx_admin
from fastagi.store.ledger_check import ledger_facts
from fastagi.store.sqlite import SqliteStore, _in_read

NUMBER = "4009000000"
KEY = "10"
PLAN = Tariff(per_minute=parse_amount("0.6"), initial_s=1, increment_s=1)  # 0.01 CNY a second
FUNDS = parse_amount("1000000")
QUOTA_ARGS = ("--quota-s", "1", "--renew-before-s", "1")
SERVE_READY_S = 20.0
SETUP_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 30.0
SETUPS_IN_FLIGHT_MAX = 50
STOP_TIMEOUT_S = 15.0


async def _seed(db: str) -> None:
    store = await SqliteStore.open(db)
    try:
        await store.run(tx_admin.add_plan, "renew-1s", PLAN)
        await store.run(tx_admin.add_number, NUMBER, "Renewals", "renew-1s", 0, "zh", "Local/op@bench", 5)
        await store.run(tx_admin.set_number, NUMBER, ext_billing=True)
        await store.run(tx_admin.add_extension, NUMBER, KEY, "Branch", "Local/b@bench-branches", None)
        await store.run(tx_admin.recharge, NUMBER, KEY, FUNDS, "renew-funds")
    finally:
        await store.close()


async def _route(port: int, bid: str) -> int:
    """One call setup; the grant in seconds (1: a supervised one-second chunk)."""
    result = await agi_call(
        "127.0.0.1", port, "route", [NUMBER, KEY, "1"], uniqueid=bid, timeout_s=SETUP_TIMEOUT_S
    )
    if result.variables.get("EXTBILL_RESULT") != "dial":
        raise BenchError(f"renewals: call {bid} was not granted: {result.variables}")
    return int(result.variables["EXTBILL_LIMIT_MS"]) // 1000


async def _wait_supervised(port: int, epoch: int) -> None:
    """Until serve's supervisor holds the lease: setups then grant one-second chunks."""
    deadline = time.monotonic() + SERVE_READY_S
    probe = 0
    while time.monotonic() < deadline:
        probe += 1
        bid = f"{epoch - 1}.{probe}"
        granted = await _route(port, bid)
        await agi_call("127.0.0.1", port, "hangup", [bid, "NOANSWER", "19", "", ""], uniqueid=bid)
        if granted == 1:
            return
        await asyncio.sleep(0.2)
    raise BenchError("renewals: serve never granted a one-second chunk (no supervisor lease)")


async def measure(
    workdir: Path, *, calls: int = 200, seconds: float = 6.0, workers: int = 1
) -> dict[str, Any]:
    db = str(workdir / "renewals.db")
    await _seed(db)
    live: dict[str, CallChannels] = {}
    ami = FakeAmi("bench", "bench", lambda: list(live.values()))
    await ami.start()
    port = free_port()
    ami_args = ("--ami-host", "127.0.0.1", "--ami-port", str(ami.port), "--ami-user", "bench")
    cmd = serve_command(db, port, workers=workers, ami=(*ami_args, "--ami-secret", "bench")) + list(
        QUOTA_ARGS
    )
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await asyncio.wait_for(ami.logged_in.wait(), SERVE_READY_S)
        epoch = int(time.time())
        await _wait_supervised(port, epoch)
        figures = await _hold(ami, port, live, epoch, calls, seconds, proc.pid)
    finally:
        await stop_process(proc, STOP_TIMEOUT_S)
        await ami.stop()
    figures.update(_books(db, figures["talk_s"]))
    return figures


async def _hold(
    ami: FakeAmi, port: int, live: dict[str, CallChannels], epoch: int, calls: int, seconds: float, pid: int
) -> dict[str, Any]:
    slots = asyncio.Semaphore(SETUPS_IN_FLIGHT_MAX)
    answered: dict[str, int] = {}

    async def setup(seq: int) -> None:
        bid = f"{epoch}.{seq}"
        async with slots:
            await _route(port, bid)
        chans = live[bid] = CallChannels(bid, seq)
        answered[bid] = int(time.time() * 1000)
        ami.send(chans.answered_events(answered[bid]))

    await asyncio.gather(*(setup(seq) for seq in range(1, calls + 1)))
    setvars0, cpu0, t0 = ami.setvars, tree_cpu_s(pid), time.monotonic()
    await asyncio.sleep(seconds)
    setvars1, cpu1, elapsed = ami.setvars, tree_cpu_s(pid), time.monotonic() - t0
    renewals = (setvars1 - setvars0) // 2  # each renewal: the callee's cut-off, the caller's limit
    talk_s = 0
    for bid, chans in list(live.items()):
        end = int(time.time() * 1000)
        talk_ms = end - answered[bid]
        ami.send(chans.ended_events(end))
        args = [bid, "ANSWER", "16", f"{answered[bid] / 1000:.3f}", f"{end / 1000:.3f}"]
        await agi_call("127.0.0.1", port, "hangup", args, uniqueid=bid, timeout_s=SETUP_TIMEOUT_S)
        ami.send(chans.caller_hangup(end + 3))
        del live[bid]
        talk_s += (talk_ms + 500) // 1000
    if renewals <= 0 or cpu0 is None or cpu1 is None:
        raise BenchError("renewals: no renewal happened while the calls were held")
    return {
        "renew_calls": calls,
        "renew_seconds": round(elapsed, 2),
        "renewals": renewals,
        "renewals_per_s": round(renewals / elapsed, 1),
        "serve_cpu_ms_per_renewal": round((cpu1 - cpu0) * 1000 / renewals, 3),
        "talk_s": talk_s,
    }


def _books(db: str, talk_s: int) -> dict[str, Any]:
    """The ledger after the run: `extbill db check`'s check (every account rebuilt from its
    transfers, every chunk resolved once, each call's chunks posting its cost) with nothing
    left reserved, and the cost of this run's flat plan: 0.010 a second of talk."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        f = _in_read(conn, ledger_facts, ())
        q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        cost = q("SELECT coalesce(sum(cost), 0) FROM calls WHERE billing_id LIKE '%.%' AND talk_s > 0")
        billed = q("SELECT coalesce(sum(talk_s), 0) FROM calls WHERE talk_s > 0")
    finally:
        conn.close()
    wrong = ledger_discrepancies(f, quiescent=True)
    # billed may fall short of the load's count where a renewal came late and the call was
    # capped at its grant (reported); it may never exceed it
    if wrong or cost != billed * 10 or billed > talk_s:
        raise BenchError(
            f"renewals: books wrong: {'; '.join(wrong[:5]) or 'ledger consistent'}; "
            f"cost {cost} for {billed} s billed (load counted {talk_s} s)"
        )
    return {"renew_chunks": f.reservations, "renew_books_ok": True, "renew_talk_capped_s": talk_s - billed}


def run(workdir: Path, *, calls: int = 200, seconds: float = 6.0, workers: int = 1) -> dict[str, Any]:
    return asyncio.run(measure(workdir, calls=calls, seconds=seconds, workers=workers))
