"""The real-Asterisk reference (`extbill bench --asterisk`): Asterisk 22's own cost per FastAGI request.

The load generator stands in for Asterisk everywhere else in the benchmark. This
measures the real one, from the e2e harness's root (fastagi/dev/harness/),
against a real `extbill serve` on a copy of the benchmark database: `channels` Local
channels at once, each making `requests` FastAGI `lookup` requests one after another
and nothing else - no audio, no Dial, no new channel per request. That is the least
work Asterisk can do per request, so its CPU per request here is a lower bound for a
real call, which also makes channels, plays prompts, bridges, and makes three requests
(lookup, route, hangup).

Each channel stops at the first request that does not answer `collect` and leaves, in
global variables, how many were answered and when it started and ended. The run fails
unless every request was answered.
"""

from __future__ import annotations

import asyncio
import os
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from fastagi.dev.bench.procs import BenchError, free_port, serve_command, stop_process, tree_cpu_s
from fastagi.dev.harness import AmiError, Asterisk, default_root, root_problem

LOOP_CONTEXT = "extbill-bench-agi-loop"
# Variables per channel: BENCH_NUMBER, BENCH_REQUESTS, BENCH_CHANNEL (its index).
LOOP_DIALPLAN = f"""\
[{LOOP_CONTEXT}]
; extbill bench --asterisk: BENCH_REQUESTS FastAGI lookups in a row; then how many were
; answered, and when the channel started and ended, in global variables.
exten => s,1,Set(GLOBAL(BENCH_START_${{BENCH_CHANNEL}})=${{STRFTIME(,,%s.%3q)}})
 same => n,Set(i=0)
 same => n(next),Set(EXTBILL_RESULT=)
 same => n,AGI(agi://${{EXTBILL_AGI}}/lookup,${{BENCH_NUMBER}})
 same => n,GotoIf($["${{EXTBILL_RESULT}}" != "collect"]?done)
 same => n,Set(i=$[${{i}} + 1])
 same => n,GotoIf($[${{i}} < ${{BENCH_REQUESTS}}]?next)
 same => n(done),Set(GLOBAL(BENCH_END_${{BENCH_CHANNEL}})=${{STRFTIME(,,%s.%3q)}})
 same => n,Set(GLOBAL(BENCH_DONE_${{BENCH_CHANNEL}})=${{i}})
 same => n,Hangup()
"""

CHANNELS_MAX = 500
REQUESTS_MAX = 10_000
SERVE_START_TIMEOUT_S = 20.0
SERVE_STOP_TIMEOUT_S = 15.0
RUN_TIMEOUT_S = 120.0  # from the first Originate to the last channel's end
POLL_S = 0.25  # how often the calls still up are counted
HOLD_S = 600  # the ;1 half of each Local channel waits this long at most


def asterisk_problem() -> str | None:
    """Why the reference cannot run here (no root privileges, no Asterisk root), or None."""
    return root_problem(default_root())


async def _start_serve(db: str, port: int, workers: int, log_path: str) -> asyncio.subprocess.Process:
    with open(log_path, "wb") as log:
        serve = await asyncio.create_subprocess_exec(
            *serve_command(db, port, workers=workers),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if serve.returncode is not None:
            raise BenchError(f"serve exited ({serve.returncode}) before it listened; see {log_path}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()  # no headers: serve logs one agi.protocol_error and bills nothing
        return serve
    await stop_process(serve, SERVE_STOP_TIMEOUT_S)
    raise BenchError(f"serve did not listen on 127.0.0.1:{port} within {SERVE_START_TIMEOUT_S:g} s")


def _ms_time(text: object) -> Decimal | None:
    """STRFTIME's '1732650000.123' as seconds; None when the channel never set it."""
    try:
        return Decimal(str(text)) if text else None
    except InvalidOperation:
        return None


async def asterisk_reference(
    db: str, work: str, *, number: str, channels: int, requests: int, serve_workers: int
) -> dict[str, Any]:
    """Run the loop; Asterisk's and serve's CPU per request and the requests per second."""
    problem = asterisk_problem()
    if problem:
        raise BenchError(f"--asterisk: cannot run the real-Asterisk reference: {problem}")
    if not (1 <= channels <= CHANNELS_MAX and 1 <= requests <= REQUESTS_MAX):
        raise BenchError(f"--asterisk: channels 1..{CHANNELS_MAX} and requests 1..{REQUESTS_MAX}")
    port = free_port()
    serve = await _start_serve(db, port, serve_workers, os.path.join(work, "asterisk-serve.log"))
    ast = Asterisk(agi_address=f"127.0.0.1:{port}", verbose=0, extra_extensions=LOOP_DIALPLAN)
    try:
        await asyncio.to_thread(ast.start)
        assert ast.proc is not None
        ast_pid = ast.proc.pid  # chroot execs asterisk: the same process
        async with ast.ami() as ami:
            # No events to this session: the harness user reads dialplan events, and
            # Asterisk would send it every step of every channel.
            off = await ami.action("Events", EventMask="off")
            if off.get("Response") != "Success":
                raise BenchError(f"--asterisk: could not turn this session's events off: {off}")
            ast_cpu0, serve_cpu0 = tree_cpu_s(ast_pid), tree_cpu_s(serve.pid)
            t0 = time.monotonic()
            for k in range(channels):
                resp = await ami.action(
                    "Originate",
                    [
                        ("Channel", f"Local/s@{LOOP_CONTEXT}"),
                        ("Application", "Wait"),
                        ("Data", str(HOLD_S)),
                        ("Async", "true"),
                        ("Variable", f"BENCH_NUMBER={number}"),
                        ("Variable", f"BENCH_REQUESTS={requests}"),
                        ("Variable", f"BENCH_CHANNEL={k}"),
                    ],
                )
                if resp.get("Response") != "Success":
                    raise BenchError(f"--asterisk: Originate refused: {resp}")
            while True:
                await asyncio.sleep(POLL_S)
                status = await ami.action("CoreStatus")  # one short reply, unlike CoreShowChannels
                if status.get("CoreCurrentCalls") == "0":
                    break
                if time.monotonic() - t0 > RUN_TIMEOUT_S:
                    raise BenchError(f"--asterisk: channels still up after {RUN_TIMEOUT_S:g} s")
            wall_s = time.monotonic() - t0
            ast_cpu = (tree_cpu_s(ast_pid) or 0.0) - (ast_cpu0 or 0.0)
            serve_cpu = (tree_cpu_s(serve.pid) or 0.0) - (serve_cpu0 or 0.0)
            done, starts, ends = 0, [], []
            for k in range(channels):
                got: dict[str, Any] = {}
                for name in ("DONE", "START", "END"):
                    got[name] = (await ami.action("Getvar", Variable=f"BENCH_{name}_{k}")).get("Value")
                done += int(got["DONE"]) if str(got["DONE"]).isdigit() else 0
                starts.append(_ms_time(got["START"]))
                ends.append(_ms_time(got["END"]))
    except (AmiError, OSError, RuntimeError, TimeoutError) as exc:
        raise BenchError(f"--asterisk: {exc}") from None
    finally:
        await asyncio.to_thread(ast.stop)
        await stop_process(serve, SERVE_STOP_TIMEOUT_S)
    asked = channels * requests
    if done != asked or None in starts or None in ends:
        raise BenchError(
            f"--asterisk: {done} of {asked} FastAGI requests were answered; see "
            f"{os.path.join(work, 'asterisk-serve.log')} (--keep keeps it)"
        )
    # The requests' own window, by Asterisk's clock: first channel start to last channel end.
    span_s = float(max(ends) - min(starts))  # type: ignore[type-var, operator]  # no None: checked above
    cpus = os.cpu_count() or 1
    ast_ms = ast_cpu * 1000 / asked
    return {
        "asterisk_agi_per_s": asked / span_s if span_s > 0 else 0.0,
        "asterisk_cpu_ms_per_agi": ast_ms,
        "asterisk_serve_cpu_ms_per_agi": serve_cpu * 1000 / asked,
        # With every core and nothing else to do, at two requests (lookup, route) per setup.
        "asterisk_setups_per_s_max": cpus * 1000 / (2 * ast_ms) if ast_ms > 0 else 0.0,
        "asterisk_requests": asked,
        "asterisk_channels": channels,
        "asterisk_span_s": span_s,
        "asterisk_wall_s": wall_s,
        "asterisk_cpu_s": ast_cpu,
        "asterisk_serve_cpu_s": serve_cpu,
    }
