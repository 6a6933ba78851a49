"""Drives the process-per-call reference as Asterisk drives an AGI script.

For each call: start `python -m fastagi.dev.bench.ppc_agi <db>` with pipes, write the
agi_* environment, answer every command (`200 result=1`, GET DATA with the pressed
digits), wait for the process to exit. At most `concurrency` processes at once,
for about `seconds`, and never more than `calls_max` processes in all.

A call that crashes, times out or ends other than the server would have ended it fails
the whole reference (BenchError with the reason and the process's stderr): a rate of
calls that did not do the work is not a rate.
"""

from __future__ import annotations

import asyncio
import sys
import time

from fastagi.dev.bench.agi_peer import header_block
from fastagi.dev.bench.mix import Call, CallMix
from fastagi.dev.bench.procs import BenchError

SCRIPT_MODULE = "fastagi.dev.bench.ppc_agi"
PROCESS_TIMEOUT_S = 30.0
STDERR_SHOWN_MAX = 600  # characters of a failed call's stderr in the error (its end)


async def _one_call(db: str, call: Call) -> str:
    """Run one call's process; returns the EXTBILL_RESULT it set. BenchError if it failed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        SCRIPT_MODULE,
        db,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.create_task(proc.stderr.read())  # read all along: a full pipe would block it
    try:
        result = await _converse(proc, call)
    except (TimeoutError, ConnectionError) as exc:
        raise BenchError(
            f"process-per-call reference: call {call.billing_id} "
            f"{'timed out' if isinstance(exc, TimeoutError) else f'lost its pipe ({exc})'}"
            f"{_tail(await _killed(proc, stderr))}"
        ) from None
    except BaseException:  # cancelled: another call failed the reference
        await _killed(proc, stderr)
        raise
    err = await stderr
    if proc.returncode != 0 or result != call.expect:
        raise BenchError(
            f"process-per-call reference: call {call.billing_id} to {call.number} key {call.digits or '-'} "
            f"exited {proc.returncode} with EXTBILL_RESULT {result or '(unset)'}, expected {call.expect}"
            f"{_tail(err)}"
        )
    return result


async def _killed(proc: asyncio.subprocess.Process, stderr: asyncio.Task[bytes]) -> bytes:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    return await stderr


def _tail(err: bytes) -> str:
    text = err.decode("utf-8", "replace").strip()
    return f"; its stderr: {text[-STDERR_SHOWN_MAX:]}" if text else "; no stderr"


async def _converse(proc: asyncio.subprocess.Process, call: Call) -> str:
    """Answer the script as res_agi does until it exits; the EXTBILL_RESULT it set ('' if none)."""
    assert proc.stdin is not None and proc.stdout is not None
    result = ""
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
    return result


async def process_per_call(
    db: str, mix: CallMix, seconds: float, concurrency: int, calls_max: int
) -> dict[str, float]:
    """Setups per second of the process-per-call model on `db`; BenchError if a call failed."""
    done = 0
    started = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal done, started
        while time.perf_counter() < deadline and started < calls_max:
            started += 1
            await _one_call(db, mix.next())
            done += 1

    try:
        async with asyncio.TaskGroup() as tg:  # the first failure cancels the other workers
            for _ in range(concurrency):
                tg.create_task(worker())
    except* BenchError as group:
        raise group.exceptions[0] from None
    elapsed = time.perf_counter() - start
    return {
        "process_per_call_setups_per_s": done / elapsed,
        "process_per_call_calls": done,
        "process_per_call_seconds": elapsed,
    }
