"""The benchmark's server phase: the real `extbill serve` and the load generator, each its
own process; the figures the load generator measures, serve's CPU per phase and its memory."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict
from typing import Any

from fastagi.dev.bench.load import LoadSettings
from fastagi.dev.bench.procs import BenchError, free_port, serve_command, stop_process, tree_cpu_s, tree_kb

SERVE_START_TIMEOUT_S = 20.0
SERVE_STOP_TIMEOUT_S = 15.0
LOAD_TIMEOUT_EXTRA_S = 90.0  # beyond --seconds: ramp, drain, start-up
RSS_SAMPLE_S = 0.1
LOG_SAMPLES_MAX = 5


async def _read_json_line(stream: asyncio.StreamReader, key: str, timeout_s: float) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            line = await stream.readline()
            if not line:
                raise BenchError(f"the load generator exited before sending {key!r}")
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and key in doc:
                return doc[key]


def _log_summary(path: str) -> dict[str, Any]:
    """serve's log lines (JSON) counted by level and by event: what went wrong under load."""
    levels: dict[str, int] = {}
    events: dict[str, int] = {}
    samples: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    doc = json.loads(line)
                    level, event = str(doc.get("level", "?")), str(doc.get("event", "?"))
                    if event == "ami.disconnected" and doc.get("reason") == "stopped":
                        continue  # serve's own shutdown at the end of the run
                except (ValueError, AttributeError):
                    level, event = "text", "text"
                levels[level] = levels.get(level, 0) + 1
                events[event] = events.get(event, 0) + 1
                if len(samples) < LOG_SAMPLES_MAX:
                    samples.append(line.strip()[:300])
    except OSError:
        pass
    return {"lines_by_level": levels, "lines_by_event": events, "first_lines": samples}


async def run_server_phase(a: argparse.Namespace, work: str, db: str) -> dict[str, Any]:
    """serve + load generator: the throughput, latency and memory figures."""
    s = _load_settings(a, free_port())
    load_log = open(os.path.join(work, "load.log"), "wb")  # noqa: SIM115  (closed below)
    serve_log = open(os.path.join(work, "serve.log"), "wb")  # noqa: SIM115
    load = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fastagi.dev.bench.load",
        json.dumps(asdict(s)),
        stdout=asyncio.subprocess.PIPE,
        stderr=load_log,
        limit=16 * 1024 * 1024,
    )
    serve: asyncio.subprocess.Process | None = None
    serve_pid = 0
    assert load.stdout is not None
    try:
        ami_port = await _read_json_line(load.stdout, "ami_port", SERVE_START_TIMEOUT_S)
        serve = await asyncio.create_subprocess_exec(
            *_serve_cmd(a, db, s, ami_port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=serve_log,
        )
        serve_pid = await _serve_pid(serve.pid, bool(a.py_spy))
        await _wait_ready(load.stdout, serve, work)
        result = await _measure(load.stdout, serve_pid, a, work)
    finally:
        result_rc = await _stop_serve(serve, serve_pid, bool(a.py_spy)) if serve is not None else None
        await stop_process(load, 5)
        load_log.close()
        serve_log.close()
    result["serve_exit"] = result_rc
    result["serve_log"] = _log_summary(os.path.join(work, "serve.log"))
    return result


def _load_settings(a: argparse.Namespace, agi_port: int) -> LoadSettings:
    return LoadSettings(
        agi_port=agi_port,
        seconds=a.seconds,
        concurrency=a.concurrency,
        burst_seconds=a.burst_seconds,
        settle_concurrency=a.settle_concurrency,
        in_flight=a.in_flight,
        paced_seconds=a.paced_seconds,
        paced_share=a.paced_share,
        numbers=a.numbers,
        extensions=a.extensions,
        seed=a.seed,
    )


def _serve_cmd(a: argparse.Namespace, db: str, s: LoadSettings, ami_port: int) -> list[str]:
    """serve's command line (with serve's own log level and sweeper unless told otherwise)."""
    ami = ("--ami-host", "127.0.0.1", "--ami-port", str(ami_port), "--ami-user", s.ami_user)
    cmd = serve_command(
        db,
        s.agi_port,
        workers=a.serve_workers,
        log_level=a.serve_log_level,
        sweep_interval_s=a.serve_sweep_interval_s,
        ami=(*ami, "--ami-secret", s.ami_secret),
    )
    if not a.py_spy:
        return cmd
    py_spy = (_py_spy(), "record", "--rate", "250", "--nonblocking", "--format", _py_spy_format(a.py_spy))
    return [*py_spy, "-o", a.py_spy, "--", *cmd]


async def _wait_ready(stream: asyncio.StreamReader, serve: asyncio.subprocess.Process, work: str) -> None:
    """Until the load generator says serve answers; BenchError if serve exits first."""
    ready = asyncio.create_task(_read_json_line(stream, "ready", SERVE_START_TIMEOUT_S))
    exited = asyncio.create_task(serve.wait())
    await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        raise BenchError(
            f"serve exited ({serve.returncode}) before it was ready: {_tail(os.path.join(work, 'serve.log'))}"
        )
    exited.cancel()
    ready.result()


async def _measure(
    stream: asyncio.StreamReader, serve_pid: int, a: argparse.Namespace, work: str
) -> dict[str, Any]:
    """The load generator's result, with serve's memory and its CPU in each window."""
    result_task = asyncio.create_task(
        _follow_phases(
            stream, serve_pid, a.seconds + a.paced_seconds + a.burst_seconds + LOAD_TIMEOUT_EXTRA_S
        )
    )
    rss_max_kb = 0
    while not result_task.done():
        rss_max_kb = max(rss_max_kb, tree_kb(serve_pid, "VmRSS") or 0)
        await asyncio.wait([result_task], timeout=RSS_SAMPLE_S)
    result, phases = result_task.result()
    hwm_kb = tree_kb(serve_pid, "VmHWM")  # every serve process's own peak, added up
    if hwm_kb is None:
        raise BenchError(
            f"serve (pid {serve_pid}) is gone before the end of the run; see {os.path.join(work, 'serve.log')}"
        )
    result["rss_peak_mb"] = hwm_kb / 1024
    result["rss_sampled_max_mb"] = rss_max_kb / 1024
    # serve's CPU in each measured window: 1.0 = one core busy all the window
    for name, done_key in (("steady", "completed"), ("burst", "setups")):
        w = result[name]
        cpu = _phase_cpu(phases, name)
        w["serve_cpu_share"] = cpu / w["seconds"] if cpu is not None else None
        w["serve_cpu_ms_per"] = cpu * 1000 / max(w[done_key], 1) if cpu is not None else None
        w["load_cpu_ms_per"] = w["load_cpu_s"] * 1000 / max(w[done_key], 1)
    return result


async def _stop_serve(serve: asyncio.subprocess.Process, serve_pid: int, py_spy: bool) -> int | None:
    if py_spy and serve_pid and serve_pid != serve.pid:
        _signal(serve_pid, signal.SIGTERM)  # py-spy writes its profile when serve exits
        try:
            await asyncio.wait_for(serve.wait(), SERVE_STOP_TIMEOUT_S)
        except TimeoutError:
            pass
    return await stop_process(serve, SERVE_STOP_TIMEOUT_S)


async def _follow_phases(
    stream: asyncio.StreamReader, serve_pid: int, timeout_s: float
) -> tuple[dict[str, Any], list[tuple[str, float | None]]]:
    """Read the load generator's lines to its result; serve's CPU seconds as each phase began."""
    phases: list[tuple[str, float | None]] = []
    async with asyncio.timeout(timeout_s):
        while True:
            line = await stream.readline()
            if not line:
                raise BenchError("the load generator exited before sending its result")
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            if "phase" in doc:
                phases.append((str(doc["phase"]), tree_cpu_s(serve_pid)))
            elif "result" in doc:
                phases.append(("end", tree_cpu_s(serve_pid)))
                return doc["result"], phases


def _phase_cpu(phases: list[tuple[str, float | None]], name: str) -> float | None:
    """serve's CPU seconds from the start of phase `name` to the start of the next one."""
    for (this, c0), (_, c1) in zip(phases, phases[1:]):
        if this == name and c0 is not None and c1 is not None:
            return c1 - c0
    return None


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return " | ".join(line.strip()[:300] for line in fh.readlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no log)"


def _py_spy_format(path: str) -> str:
    """.json: speedscope; .txt: collapsed stacks (one line per stack, a count); else an SVG flamegraph."""
    return "speedscope" if path.endswith(".json") else "raw" if path.endswith(".txt") else "flamegraph"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _py_spy() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = here if os.path.exists(here) else shutil.which("py-spy")
    if not found:
        raise BenchError("--py-spy needs py-spy (pip install py-spy)")
    return found


async def _serve_pid(pid: int, wrapped: bool) -> int:
    """serve's own pid: under py-spy, its child."""
    if not wrapped:
        return pid
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                kids = fh.read().split()
            if kids:
                return int(kids[0])
        except OSError:
            pass
        await asyncio.sleep(0.05)
    return pid
