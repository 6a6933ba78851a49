"""Drives the process-per-call reference as Asterisk drives an AGI script.

For each call: start `python -m fastagi.dev.bench.ppc_agi <db>` with pipes, write the
agi_* environment, answer every command (`200 result=1`, GET DATA with the pressed
digits), wait for the process to exit. At most `concurrency` processes at once,
for about `seconds`, and never more than `calls_max` processes in all.
"""

from __future__ import annotations

import asyncio
import sys
import time

from fastagi.dev.bench.agi_peer import header_block
from fastagi.dev.bench.mix import Call, CallMix

SCRIPT_MODULE = "fastagi.dev.bench.ppc_agi"
PROCESS_TIMEOUT_S = 30.0


async def _one_call(db: str, call: Call) -> str:
    """Run one call's process; returns the EXTBILL_RESULT it set ('' if none)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        SCRIPT_MODULE,
        db,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    result = ""
    try:
        async with asyncio.timeout(PROCESS_TIMEOUT_S):
            # res_agi's environment block, as over a pipe (no agi_network lines needed by the script)
            proc.stdin.write(
                header_block(
                    "ppc",
                    [call.number],
                    uniqueid=call.billing_id,
                    callerid=call.caller,
                    extension=call.number,
                )
            )
            await proc.stdin.drain()
            while True:
                line = await proc.stdout.readline()
                if not line:
                    break
                text = line.decode("utf-8", "replace").strip().replace('"', "")  # pyst2 quotes every arg
                if text.startswith("GET DATA"):
                    reply = f"200 result={call.digits}\n" if call.digits else "200 result= (timeout)\n"
                else:
                    reply = "200 result=1\n"
                    if text.startswith("SET VARIABLE EXTBILL_RESULT"):
                        result = text.split(" ", 3)[3]
                proc.stdin.write(reply.encode())
                await proc.stdin.drain()
            await proc.wait()
    except (TimeoutError, ConnectionError):
        proc.kill()
        await proc.wait()
        return ""
    return result


async def process_per_call(
    db: str, mix: CallMix, seconds: float, concurrency: int, calls_max: int
) -> dict[str, float]:
    """Setups per second of the process-per-call model on `db`."""
    done = 0
    wrong = 0
    started = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal done, wrong, started
        while time.perf_counter() < deadline and started < calls_max:
            started += 1
            call = mix.next()
            result = await _one_call(db, call)
            done += 1
            wrong += result != call.expect

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "process_per_call_setups_per_s": done / elapsed,
        "process_per_call_calls": done,
        "process_per_call_wrong": wrong,
        "process_per_call_seconds": elapsed,
    }
