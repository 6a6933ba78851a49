"""`extbill bench`: call setups and full calls per second, latency and memory, and two references.

One run, in this order:
  1. seed a temporary SQLite file (numbers x extensions, a few plans with prefix rates);
  2. start the load generator (its own process: FastAGI client + fake AMI server) and
     the real `extbill serve` (another process) on a copy of it; ramp to `in_flight`
     reserved calls; measure `seconds` of steady state (`concurrency` setups at once
     while the oldest calls end: full calls per second), then `paced_seconds` of
     setups arriving at a fixed rate below that (open loop: latency), then
     `burst_seconds` of setups only (call setups per second and their latency at
     `concurrency` in setup at once); drain; read serve's peak RSS;
  3. stop serve; check the ledger and that every granted call was settled exactly once;
  4. the process-per-call reference (pyst2 AGI, one process per call) on a fresh copy;
  5. the raw limit (the same transactions, no protocol) on another fresh copy;
  6. with --asterisk, the real-Asterisk reference (asterisk_ref.py): what Asterisk 22
     itself spends per FastAGI request, against serve on another fresh copy;
  7. print a table, write JSON.
Everything runs on 127.0.0.1 in a temporary directory, removed afterwards (--keep keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastagi.admin.cli_types import seconds_up_to
from fastagi.dev.bench import history as bench_history
from fastagi.dev.bench.asterisk_ref import CHANNELS_MAX, REQUESTS_MAX, asterisk_problem, asterisk_reference
from fastagi.dev.bench.check import check_ledger
from fastagi.dev.bench.load import LoadSettings
from fastagi.dev.bench.mix import CallMix
from fastagi.dev.bench.ppc import process_per_call
from fastagi.dev.bench.procs import BenchError, free_port, serve_command, stop_process, tree_cpu_s, tree_kb
from fastagi.dev.bench.raw import raw_setups_per_s
from fastagi.dev.bench.seed import DataSet, seed_file

SERVE_START_TIMEOUT_S = 20.0
SERVE_STOP_TIMEOUT_S = 15.0
LOAD_TIMEOUT_EXTRA_S = 90.0  # beyond --seconds: ramp, drain, start-up
RSS_SAMPLE_S = 0.1
LOG_SAMPLES_MAX = 5
SEED_CACHE_FILES_MAX = 4
# What shapes the seeded rows: a change to any of these seeds afresh.
SEED_SOURCES = (
    "dev/bench/seed.py",
    "schema.sql",
    "../schema.sql",
    "store/tx_admin.py",
    "store/tx_ledger.py",
    "store/sqlite.py",
    "core/numbers.py",
    "core/rating.py",
    "core/ledger.py",
    "core/money.py",
    "core/calls.py",
)

# figure: (target, how a value meets it) - docs/rules.md rule 21
TARGETS: dict[str, tuple[float, str]] = {
    "setups_per_s": (1500, ">="),
    "setup_p99_ms": (20, "<="),
    "rss_peak_mb": (150, "<="),
    "ratio_vs_process_per_call": (20, ">="),
    "ratio_vs_raw": (0.5, ">="),
    "paced_setup_p99_ms": (20, "<="),
}
# with --asterisk (asterisk_ref.py)
ASTERISK_KEYS = (
    "asterisk_agi_per_s",
    "asterisk_cpu_ms_per_agi",
    "asterisk_serve_cpu_ms_per_agi",
    "asterisk_setups_per_s_max",
)
EXTRA_KEYS = (
    "billed_as_simulated",
    "steady_setups_per_s",
    "steady_setup_p99_ms",
    "paced_rate_per_s",
    "paced_setup_p50_ms",
    "paced_setup_p99_ms",
    "paced_setup_max_ms",
)
REQUIRED_KEYS = (
    "setups_per_s",
    "setup_p50_ms",
    "setup_p99_ms",
    "setup_max_ms",
    "calls_per_s",
    "rss_peak_mb",
    "process_per_call_setups_per_s",
    "raw_tx_per_s",
    "ratio_vs_process_per_call",
    "ratio_vs_raw",
    "ledger_consistent",
    "settled_exactly_once",
)


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
    agi_port = free_port()
    s = LoadSettings(
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
        serve_cmd = serve_command(
            db,
            agi_port,
            workers=a.serve_workers,
            log_level=a.serve_log_level,
            ami=(
                "--ami-host",
                "127.0.0.1",
                "--ami-port",
                str(ami_port),
                "--ami-user",
                s.ami_user,
                "--ami-secret",
                s.ami_secret,
            ),
        )
        if a.py_spy:
            serve_cmd = [
                _py_spy(),
                "record",
                "--rate",
                "250",
                "--nonblocking",
                "--format",
                _py_spy_format(a.py_spy),
                "-o",
                a.py_spy,
                "--",
                *serve_cmd,
            ]
        serve = await asyncio.create_subprocess_exec(
            *serve_cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=serve_log
        )
        serve_pid = await _serve_pid(serve.pid, bool(a.py_spy))
        ready = asyncio.create_task(_read_json_line(load.stdout, "ready", SERVE_START_TIMEOUT_S))
        exited = asyncio.create_task(serve.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            raise BenchError(
                f"serve exited ({serve.returncode}) before it was ready: "
                f"{_tail(os.path.join(work, 'serve.log'))}"
            )
        exited.cancel()
        ready.result()
        result_task = asyncio.create_task(
            _follow_phases(
                load.stdout, serve_pid, a.seconds + a.paced_seconds + a.burst_seconds + LOAD_TIMEOUT_EXTRA_S
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
                f"serve (pid {serve_pid}) is gone before the end of the run; see "
                f"{os.path.join(work, 'serve.log')}"
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
    finally:
        result_rc = None
        if serve is not None:
            if a.py_spy and serve_pid and serve_pid != serve.pid:
                _signal(serve_pid, signal.SIGTERM)  # py-spy writes its profile when serve exits
                try:
                    await asyncio.wait_for(serve.wait(), SERVE_STOP_TIMEOUT_S)
                except TimeoutError:
                    pass
            result_rc = await stop_process(serve, SERVE_STOP_TIMEOUT_S)
        await stop_process(load, 5)
        load_log.close()
        serve_log.close()
    result["serve_exit"] = result_rc
    result["serve_log"] = _log_summary(os.path.join(work, "serve.log"))
    return result


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


def _seed_key(ds: DataSet) -> str:
    """Changes whenever the data set or the code that shapes the seeded rows changes."""
    root = Path(__file__).resolve().parent.parent.parent
    h = hashlib.sha256(f"{ds.numbers}x{ds.extensions}".encode())
    for rel in SEED_SOURCES:
        path = root / rel
        h.update(rel.encode())
        h.update(path.read_bytes() if path.exists() else b"-")
    return h.hexdigest()[:20]


def _seed(path: str, ds: DataSet, use_cache: bool) -> bool:
    """Seed `path`; with the cache, copy a database seeded earlier with the same code. True if copied."""
    if not use_cache:
        seed_file(path, ds)
        return False
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "extbill-bench"
    cached = cache / f"seed-{_seed_key(ds)}.db"
    if cached.exists():
        shutil.copyfile(cached, path)
        return True
    seed_file(path, ds)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # older code or other sizes: keep the newest few only
        older = sorted(cache.glob("seed-*.db"), key=lambda f: f.stat().st_mtime, reverse=True)
        for stale in older[SEED_CACHE_FILES_MAX - 1 :]:
            stale.unlink(missing_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, cached)
    except OSError:
        pass  # no cache this time; the run goes on
    return False


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


async def cmd_bench(a: argparse.Namespace) -> int:
    import logging  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    # The references run the store's functions in this process: keep their info lines quiet.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    if a.history:  # the history run alone (dev/bench/history.py)
        return await asyncio.to_thread(bench_history.cmd_history, a)
    if a.asterisk and (problem := asterisk_problem()):
        # before the run, not after a minute of it
        print(
            f"extbill bench: error: --asterisk: cannot run the real-Asterisk reference: {problem}",
            file=sys.stderr,
        )
        return 2
    t_start = time.perf_counter()
    work = tempfile.mkdtemp(prefix="extbill-bench-")
    ds = DataSet(a.numbers, a.extensions)
    try:
        loadavg = os.getloadavg()[0]
        t = time.perf_counter()
        template = os.path.join(work, "template.db")
        seed_cached = _seed(template, ds, a.seed_cache)
        seed_s = time.perf_counter() - t
        serve_db = os.path.join(work, "serve.db")
        shutil.copyfile(template, serve_db)
        print(
            f"extbill bench: {a.numbers} numbers x {a.extensions} extensions "
            f"{'copied from the seed cache' if seed_cached else 'seeded'} in {seed_s:.1f} s; "
            f"{a.seconds:g} s at {a.concurrency} concurrent setups, {a.in_flight} calls in flight",
            file=sys.stderr,
        )

        try:
            server = await run_server_phase(a, work, serve_db)
        except (BenchError, TimeoutError) as exc:
            print(
                f"extbill bench: error: {exc or 'the load generator stopped answering'}"
                f" (logs: --keep keeps {work})",
                file=sys.stderr,
            )
            return 2
        check = check_ledger(
            serve_db,
            {k: server["counts"].get(k, 0) for k in ("granted", "answered", "unanswered", "talk_s_total")},
        )

        ppc_db = os.path.join(work, "ppc.db")
        shutil.copyfile(template, ppc_db)
        ppc = await process_per_call(
            ppc_db, CallMix(ds, seed=a.seed + 1), a.ppc_seconds, a.ppc_concurrency, a.ppc_calls_max
        )
        raw_db = os.path.join(work, "raw.db")
        shutil.copyfile(template, raw_db)
        raw = await asyncio.to_thread(raw_setups_per_s, raw_db, CallMix(ds, seed=a.seed + 2), a.raw_seconds)
        asterisk: dict[str, Any] = {}
        if a.asterisk:
            ast_db = os.path.join(work, "asterisk.db")
            shutil.copyfile(template, ast_db)
            try:
                asterisk = await asterisk_reference(
                    ast_db,
                    work,
                    number=ds.number(0),
                    channels=a.asterisk_channels,
                    requests=a.asterisk_requests,
                    serve_workers=a.serve_workers,
                )
            except BenchError as exc:
                print(f"extbill bench: error: {exc}", file=sys.stderr)
                return 2
    finally:
        if a.keep:
            print(f"extbill bench: files kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    burst, steady = server["burst"], server["steady"]
    doc: dict[str, Any] = {
        # Setups: the burst window, `concurrency` setups at once and nothing else asked of serve.
        "setups_per_s": burst["setups_per_s"],
        "setup_p50_ms": burst["setup_p50_ms"],
        "setup_p99_ms": burst["setup_p99_ms"],
        "setup_max_ms": burst["setup_max_ms"],
        # Full calls: the steady window, setups and settlements together.
        "calls_per_s": steady["calls_per_s"],
        "rss_peak_mb": server["rss_peak_mb"],
        "process_per_call_setups_per_s": ppc["process_per_call_setups_per_s"],
        "raw_tx_per_s": raw["raw_tx_per_s"],
        "ratio_vs_process_per_call": _ratio(burst["setups_per_s"], ppc["process_per_call_setups_per_s"]),
        "ratio_vs_raw": _ratio(burst["setups_per_s"], raw["raw_tx_per_s"]),
        "ledger_consistent": check["ledger_consistent"],
        "settled_exactly_once": check["settled_exactly_once"],
        "billed_as_simulated": check["billed_as_simulated"],
        "steady_setups_per_s": steady["setups_per_s"],
        "steady_setup_p99_ms": steady["setup_p99_ms"],
        # Latency below saturation: setups arriving at a fixed rate (open loop) while calls
        # also end, at most `concurrency` in setup at once, timed from their scheduled arrival.
        "paced_rate_per_s": server["paced_rate_per_s"],
        "paced_setup_p50_ms": server["paced_setup_p50_ms"],
        "paced_setup_p99_ms": server["paced_setup_p99_ms"],
        "paced_setup_max_ms": server["paced_setup_max_ms"],
        **{k: v for k, v in asterisk.items() if k in ASTERISK_KEYS},
        "settings": {
            "seconds": a.seconds,
            "burst_seconds": a.burst_seconds,
            "concurrency": a.concurrency,
            "settle_concurrency": a.settle_concurrency,
            "in_flight": a.in_flight,
            "paced_seconds": a.paced_seconds,
            "paced_share": a.paced_share,
            "numbers": a.numbers,
            "extensions": a.extensions,
            "seed": a.seed,
            "ppc_seconds": a.ppc_seconds,
            "ppc_concurrency": a.ppc_concurrency,
            "ppc_calls_max": a.ppc_calls_max,
            "raw_seconds": a.raw_seconds,
            "seed_cached": seed_cached,
            "serve_log_level": a.serve_log_level,
            "serve_workers": a.serve_workers,
            "asterisk": a.asterisk,
            "asterisk_channels": a.asterisk_channels,
            "asterisk_requests": a.asterisk_requests,
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": round(loadavg, 2),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        },
        "details": {
            "errors": server["errors"],
            "counts": server["counts"],
            "burst": burst,
            "steady": steady,
            "paced_setups": server["paced_setups"],
            "paced_late": server["paced_late"],
            "in_flight_max": server["in_flight_max"],
            "in_flight_at_steady_start": server["in_flight_at_steady_start"],
            "rss_sampled_max_mb": server["rss_sampled_max_mb"],
            "ramp_s": server["ramp_s"],
            "drain_s": server["drain_s"],
            "seed_s": seed_s,
            "ami_logins": server["ami_logins"],
            "serve_exit": server["serve_exit"],
            "serve_log": server["serve_log"],
            "talk_time_matches": check["talk_time_matches"],
            "revenue_matches_costs": check["revenue_matches_costs"],
            "ledger": check["ledger"],
            "process_per_call": ppc,
            "raw": raw,
            "asterisk": asterisk,
            "ratio_calls_vs_raw_full_calls": _ratio(steady["calls_per_s"], raw["raw_full_calls_per_s"]),
            "total_s": time.perf_counter() - t_start,
        },
    }
    _print_table(doc)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
    ok = (
        doc["ledger_consistent"]
        and doc["settled_exactly_once"]
        and doc["billed_as_simulated"]
        and not server["errors"]
    )
    return 0 if ok else 1


def _print_table(doc: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    for key in REQUIRED_KEYS + EXTRA_KEYS + ASTERISK_KEYS:
        if key not in doc:
            continue
        v = doc[key]
        text = ("yes" if v else "NO") if isinstance(v, bool) else f"{v:,.1f}" if v >= 10 else f"{v:.2f}"
        target, verdict = "", ""
        if key in TARGETS:
            limit, op = TARGETS[key]
            target = f"{op} {limit:g}"
            verdict = "ok" if (v >= limit if op == ">=" else v <= limit) else "MISSED"
        elif isinstance(v, bool):
            verdict = "ok" if v else "FAILED"
        rows.append((key, text, target, verdict))
    d = doc["details"]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>12}  {'target':>8}")
    for name, text, target, verdict in rows:
        print(f"{name:<{width}}  {text:>12}  {target:>8}  {verdict}")
    c, st, bu, sd = d["counts"], doc["settings"], d["burst"], d["steady"]
    print(
        f"\nburst: {st['burst_seconds']:g} s of setups only, {st['concurrency']} at once: serve used "
        f"{_pct(bu['serve_cpu_share'])} of a core, {_ms(bu['serve_cpu_ms_per'])} CPU per setup "
        f"(load generator {_ms(bu['load_cpu_ms_per'])})"
    )
    print(
        f"steady: {st['seconds']:g} s of setups and settlements, about {st['in_flight']} calls in flight: "
        f"serve used {_pct(sd['serve_cpu_share'])} of a core, {_ms(sd['serve_cpu_ms_per'])} CPU per full call "
        f"(load generator {_ms(sd['load_cpu_ms_per'])})"
    )
    print(
        f"in all: {c.get('setups', 0)} setups, {c.get('granted', 0)} granted, {c.get('prompted', 0)} prompted, "
        f"{c.get('settled', 0)} settled, {c.get('errors', 0)} errors, {d['in_flight_max']} calls in flight "
        f"at most; settled by {d['ledger']['calls_by_settlement_path']}; total {d['total_s']:.1f} s"
    )
    if doc["setups_per_s"] > 0:
        # Little's law: with N setups always in progress, the mean setup takes N / throughput.
        print(
            f"note: with {st['concurrency']} setups always in progress a setup takes "
            f"{st['concurrency'] / doc['setups_per_s'] * 1000:.0f} ms on average at this throughput "
            f"(Little's law); p99 <= 20 ms at {st['concurrency']} in setup needs >= "
            f"{st['concurrency'] / 0.020:,.0f} setups/s. The paced rows are the latency below saturation."
        )
    if "asterisk_cpu_ms_per_agi" in doc:
        ast = d["asterisk"]
        print(
            f"real Asterisk: {ast['asterisk_requests']} FastAGI requests from {ast['asterisk_channels']} "
            f"channels at {doc['asterisk_agi_per_s']:,.0f}/s; Asterisk used "
            f"{_ms(doc['asterisk_cpu_ms_per_agi'])} CPU per request, serve "
            f"{_ms(doc['asterisk_serve_cpu_ms_per_agi'])}. With every core and nothing else to do, "
            f"Asterisk could send at most {doc['asterisk_setups_per_s_max']:,.0f} setups/s "
            f"(two requests each; no audio, no Dial, no new channel per request)"
        )
    if d["in_flight_at_steady_start"] < st["in_flight"]:
        print(
            f"note: only {d['in_flight_at_steady_start']} calls were in flight when the steady window began "
            f"(the ramp stopped after its time limit)"
        )
    events = d["serve_log"].get("lines_by_event", {})
    if events:
        print("serve logged: " + ", ".join(f"{k} x{v}" for k, v in sorted(events.items())))
    for e in d["errors"][:5]:
        print(f"  error: {e}")


def _ms(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f} ms"


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{share * 100:.0f}%"


_positive_float = seconds_up_to(3600)


def _seconds_or_zero(text: str) -> float:
    return 0.0 if text in ("0", "0.0") else _positive_float(text)


def _share(text: str) -> float:
    v = _positive_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 1")
    return v


def _count(top: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= top:
            raise argparse.ArgumentTypeError(f"{text!r} must be a whole number 1..{top}")
        return int(text)

    return parse


def add_parser(subs: Any, sub: Callable[..., argparse.ArgumentParser]) -> None:
    p = sub(
        subs,
        "bench",
        cmd_bench,
        "benchmark call setups, full calls, latency and memory "
        "against a process-per-call AGI and the raw database limit",
    )
    p.set_defaults(own_store=True)
    p.add_argument(
        "--seconds",
        type=_positive_float,
        default=10.0,
        help="steady window: setups and settlements together, s (default 10)",
    )
    p.add_argument(
        "--burst-seconds", type=_positive_float, default=5.0, help="burst window: setups only, s (default 5)"
    )
    p.add_argument(
        "--concurrency", type=_count(1000), default=100, help="calls in setup at once (default 100)"
    )
    p.add_argument(
        "--settle-concurrency", type=_count(1000), default=100, help="hangup requests at once (default 100)"
    )
    p.add_argument(
        "--in-flight",
        type=_count(100_000),
        default=1000,
        help="granted calls kept reserved and unsettled during the window (default 1000)",
    )
    p.add_argument(
        "--paced-seconds",
        type=_seconds_or_zero,
        default=5.0,
        help="then, setups arriving at a fixed rate for latency below saturation, s (default 5, 0: none)",
    )
    p.add_argument(
        "--paced-share",
        type=_share,
        default=0.5,
        help="the paced rate as a share of the measured setups per second (default 0.5)",
    )
    p.add_argument(
        "--serve-workers",
        type=_count(64),
        default=min(os.cpu_count() or 1, 64),
        help="serve's FastAGI processes (serve --workers; default: one per core)",
    )
    p.add_argument("--json", metavar="FILE", help="write every figure and the settings here")
    p.add_argument("--numbers", type=_count(100_000), default=1000, help="400 numbers seeded (default 1000)")
    p.add_argument("--extensions", type=_count(90), default=20, help="extensions per number (default 20)")
    p.add_argument("--seed", type=int, default=1, help="call mix random seed")
    p.add_argument(
        "--ppc-seconds",
        type=_positive_float,
        default=4.0,
        help="process-per-call reference: how long, s (default 4)",
    )
    p.add_argument(
        "--ppc-concurrency",
        type=_count(16),
        default=2,
        help="process-per-call reference: processes at once (default 2, one per core)",
    )
    p.add_argument(
        "--ppc-calls-max",
        type=_count(10_000),
        default=400,
        help="process-per-call reference: processes in all, at most (default 400)",
    )
    p.add_argument(
        "--raw-seconds", type=_positive_float, default=3.0, help="raw reference: how long, s (default 3)"
    )
    p.add_argument(
        "--serve-log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="serve's log level during the run (default warning)",
    )
    p.add_argument(
        "--py-spy",
        metavar="FILE",
        help="profile serve with py-spy into FILE (.svg flamegraph, .json speedscope, .txt collapsed stacks)",
    )
    p.add_argument(
        "--no-seed-cache",
        dest="seed_cache",
        action="store_false",
        help="seed afresh; by default a database seeded by the same code is reused "
        "from ~/.cache/extbill-bench",
    )
    p.add_argument(
        "--asterisk",
        action="store_true",
        help="also measure a real Asterisk 22 (the e2e root, needs root) sending FastAGI "
        "requests to serve: its CPU per request",
    )
    p.add_argument(
        "--asterisk-channels",
        type=_count(CHANNELS_MAX),
        default=60,
        help="--asterisk: channels making requests at once (default 60)",
    )
    p.add_argument(
        "--asterisk-requests",
        type=_count(REQUESTS_MAX),
        default=100,
        help="--asterisk: requests per channel, one after another (default 100)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (databases, logs)")
    bench_history.add_args(p)


def main(argv: list[str] | None = None) -> int:
    """`python -m fastagi.dev.bench.cli ...`: the same command before it is registered in extbill."""
    parser = argparse.ArgumentParser(prog="extbill")
    subs = parser.add_subparsers(dest="command", required=True)

    def sub(subs: Any, name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        p = subs.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    add_parser(subs, sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return asyncio.run(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
