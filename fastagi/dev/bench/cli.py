"""`extbill bench`: call setups and full calls per second, latency and memory, and two references.

One run, in this order:
  1. seed a temporary SQLite file (numbers x extensions, a few plans with prefix rates);
  2. start the load generator (its own process: FastAGI client + fake AMI server) and
     the real `extbill serve` (another process) on a copy of it; ramp to `in_flight`
     reserved calls; measure `seconds` of steady state (`concurrency` setups at once
     while the oldest calls end: full calls per second), then `paced_seconds` of
     setups arriving at a fixed rate below that (open loop: latency; counted after a
     first second at that rate, load.PACED_WARMUP_S), then
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
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastagi.admin.cli_types import seconds_up_to
from fastagi.dev.bench import history as bench_history
from fastagi.dev.bench import renewals
from fastagi.dev.bench.asterisk_ref import CHANNELS_MAX, REQUESTS_MAX, asterisk_problem, asterisk_reference
from fastagi.dev.bench.check import check_ledger
from fastagi.dev.bench.mix import CallMix
from fastagi.dev.bench.ppc import process_per_call
from fastagi.dev.bench.procs import BenchError
from fastagi.dev.bench.raw import raw_setups_per_s
from fastagi.dev.bench.report import build_doc, print_table, write_json
from fastagi.dev.bench.seed import DataSet
from fastagi.dev.bench.seed_cache import seed
from fastagi.dev.bench.serve_phase import run_server_phase
from fastagi.runtime.config import Settings
from fastagi.store.factory import is_pg

EXIT_RUN_FAILED = 2  # the run could not be completed, or a reference failed: no figures


def _quiet_logs() -> None:
    """The references run the store's functions in this process: keep their info lines quiet."""
    import logging  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


def _fail(message: str) -> int:
    print(f"extbill bench: error: {message}", file=sys.stderr)
    return EXIT_RUN_FAILED


async def cmd_bench(a: argparse.Namespace) -> int:
    _quiet_logs()
    if a.history:  # the history run alone (dev/bench/history.py)
        return await asyncio.to_thread(bench_history.cmd_history, a)
    if a.asterisk and (problem := asterisk_problem()):
        # before the run, not after a minute of it
        return _fail(f"--asterisk: cannot run the real-Asterisk reference: {problem}")
    t_start = time.perf_counter()
    work = tempfile.mkdtemp(prefix="extbill-bench-")
    try:
        parts = await _run(a, work)
    except (BenchError, TimeoutError) as exc:
        return _fail(f"{exc or 'the load generator stopped answering'} (logs: --keep keeps {work})")
    finally:
        if a.keep:
            print(f"extbill bench: files kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    parts["total_s"] = time.perf_counter() - t_start
    doc = build_doc(a, parts)
    print_table(doc)
    if a.json:
        write_json(a.json, doc)
    ok = doc["ledger_consistent"] and doc["settled_exactly_once"] and doc["billed_as_simulated"]
    return 0 if ok and not parts["server"]["errors"] else 1


async def _run(a: argparse.Namespace, work: str) -> dict[str, Any]:
    """Every phase of one run in `work`; BenchError if one could not be completed."""
    ds = DataSet(a.numbers, a.extensions)
    loadavg = os.getloadavg()[0]
    t = time.perf_counter()
    template = os.path.join(work, "template.db")
    seed_cached = seed(template, ds, a.seed_cache)
    seed_s = time.perf_counter() - t
    print(
        f"extbill bench: {a.numbers} numbers x {a.extensions} extensions "
        f"{'copied from the seed cache' if seed_cached else 'seeded'} in {seed_s:.1f} s; "
        f"{a.seconds:g} s at {a.concurrency} concurrent setups, {a.in_flight} calls in flight",
        file=sys.stderr,
    )
    serve_db = await _serve_db(getattr(a, "db", None), template, work)
    server = await run_server_phase(a, work, serve_db)
    counts = server["counts"]
    check = check_ledger(
        serve_db, {k: counts.get(k, 0) for k in ("granted", "answered", "unanswered", "talk_s_total")}
    )
    ppc = await process_per_call(
        _copy(template, work, "ppc.db"),
        CallMix(ds, seed=a.seed + 1),
        a.ppc_seconds,
        a.ppc_concurrency,
        a.ppc_calls_max,
    )
    raw = await asyncio.to_thread(
        raw_setups_per_s,
        _copy(template, work, "raw.db"),
        CallMix(ds, seed=a.seed + 2),
        a.raw_seconds,
        a.concurrency,
    )
    renew: dict[str, Any] = {}
    if a.renew_seconds:  # serve's CPU per mid-call renewal (renewals.py: a run of its own)
        renew_dir = Path(work) / "renew"
        renew_dir.mkdir()
        renew = await renewals.measure(renew_dir, calls=a.renew_calls, seconds=a.renew_seconds)
    asterisk: dict[str, Any] = {}
    if a.asterisk:
        asterisk = await asterisk_reference(
            _copy(template, work, "asterisk.db"),
            work,
            number=ds.number(0),
            channels=a.asterisk_channels,
            requests=a.asterisk_requests,
            serve_workers=a.serve_workers,
        )
    return {
        "server": server,
        "check": check,
        "ppc": ppc,
        "raw": raw,
        "asterisk": asterisk,
        "renew": renew,
        "seed_cached": seed_cached,
        "seed_s": seed_s,
        "loadavg": loadavg,
    }


async def _serve_db(target: str | None, template: str, work: str) -> str:
    """serve's database: a copy of the seeded file, or with --db postgresql://... that
    (empty) PostgreSQL database, filled from the seeded file by `extbill db copy`'s code."""
    if not (target and is_pg(target)):
        return _copy(template, work, "serve.db")
    from fastagi.store.copy import CopyError, copy_sqlite_to_pg  # noqa: PLC0415

    try:
        await asyncio.to_thread(copy_sqlite_to_pg, template, target)
    except CopyError as exc:
        raise BenchError(f"--db: {exc}") from None
    return target


def _copy(template: str, work: str, name: str) -> str:
    """A fresh copy of the seeded database for one phase."""
    path = os.path.join(work, name)
    shutil.copyfile(template, path)
    return path


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
    _add_load_args(p)
    _add_serve_args(p)
    _add_reference_args(p)
    p.add_argument(
        "--no-seed-cache",
        dest="seed_cache",
        action="store_false",
        help="seed afresh; by default a database seeded by the same code is reused "
        "from ~/.cache/extbill-bench",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (databases, logs)")


def _add_load_args(p: argparse.ArgumentParser) -> None:
    """The load: its windows, concurrency and data set."""
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
        help="then, setups arriving at a fixed rate for latency below saturation, s, counted after "
        "a first uncounted second at that rate (default 5, 0: none)",
    )
    p.add_argument(
        "--paced-share",
        type=_share,
        default=0.5,
        help="the paced rate as a share of the measured setups per second (default 0.5)",
    )
    p.add_argument("--json", metavar="FILE", help="write every figure and the settings here")
    p.add_argument("--numbers", type=_count(100_000), default=1000, help="400 numbers seeded (default 1000)")
    p.add_argument("--extensions", type=_count(90), default=20, help="extensions per number (default 20)")
    p.add_argument("--seed", type=int, default=1, help="call mix random seed")


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    """How serve runs under the load."""
    p.add_argument(
        "--serve-workers",
        type=_count(64),
        default=Settings().workers,
        help="serve's FastAGI processes (serve --workers; default serve's own, 1: on two cores a "
        "second process cost each request more CPU than it added, measured in README.md)",
    )
    p.add_argument(
        "--serve-log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="serve's log level during the run (default info, serve's own default)",
    )
    p.add_argument(
        "--serve-sweep-interval-s",
        type=_count(3600),
        default=Settings().sweep_interval_s,
        help=f"serve's sweeper interval during the run, s (default {Settings().sweep_interval_s}, serve's own)",
    )
    p.add_argument(
        "--py-spy",
        metavar="FILE",
        help="profile serve with py-spy into FILE (.svg flamegraph, .json speedscope, .txt collapsed stacks)",
    )


def _add_reference_args(p: argparse.ArgumentParser) -> None:
    """The process-per-call, raw and real-Asterisk references."""
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
        "--renew-seconds",
        type=_seconds_or_zero,
        default=5.0,
        help="renewal run: how long calls are held on one-second chunks, s; 0 skips it (default 5)",
    )
    p.add_argument(
        "--renew-calls",
        type=_count(5_000),
        default=300,
        help="renewal run: calls held at once, each renewed about once a second (default 300)",
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
