"""`extbill bench --history N`: today's reads and setups on a store with N calls of history.

Two copies of the seeded bench database, each with the same last day of calls (so first
pages are full on both): `recent` has nothing older, `history` has N settled calls over
the year before. On each, in this process and on the store's own read functions (the
CLI's work minus starting Python), the reads a user and the console make: balance,
number show, the first statement page (main and an extension), the first `calls --since`
page; then setups per second (the raw reference's loop). Ratios compare the two copies
in one run, so they hold across machines. Bytes per call: the history copy's pages in use
minus the recent copy's, over N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable
from typing import Any

from fastagi.core.clock import iso_from_ms
from fastagi.core.records import CallFacts
from fastagi.core.vocab import SettledBy
from fastagi.dev.bench.history_seed import DAY_MS, seed_history
from fastagi.dev.bench.mix import CallMix
from fastagi.dev.bench.seed import DataSet, seed_file
from fastagi.store import counters, tx_admin, tx_calls
from fastagi.store.pages import PAGE_ROWS_DEFAULT
from fastagi.store.sqlite import _configure, _in_read, _in_transaction

HISTORY_MAX = 20_000_000  # calls --history seeds at most
RECENT_CALLS = 2_000  # the last day's calls, on both copies
READ_ROUNDS = 300  # timed repetitions of each read on each copy
SETUP_TURNS = 12  # the setup loop alternates between the two files this many times
SETUP_WARM_TURNS = 2  # the first turns fill the page cache (serve's stays warm): not counted
TARGETS = {"history_read_ratio": 1.2, "history_setup_ratio": 0.9, "bytes_per_call": 500}


def _reads(ds: DataSet, since: str) -> dict[str, Callable[[sqlite3.Connection], Any]]:
    busy, key = ds.number(0), ds.funded_keys()[0]
    return {
        "balance": lambda c: tx_admin.balance(c, busy),
        "number_show": lambda c: tx_admin.balance(c, busy),  # the same document, another layout
        "statement_main": lambda c: tx_admin.statement(c, busy, None, PAGE_ROWS_DEFAULT),
        "statement_ext": lambda c: tx_admin.statement(c, busy, key, PAGE_ROWS_DEFAULT),
        "calls_since": lambda c: tx_calls.call_records(c, busy, None, since, PAGE_ROWS_DEFAULT),
    }


def _latencies(
    paths: list[str], reads: dict[str, Callable], rounds: int
) -> list[dict[str, dict[str, float]]]:
    """p50 and p99 of each read on each file; the files take turns, read by read, so both
    see the same moments of a busy machine."""
    conns = [sqlite3.connect(p, isolation_level=None) for p in paths]
    try:
        for conn in conns:
            _configure(conn)
        out: list[dict[str, dict[str, float]]] = [{} for _ in paths]
        for name, fn in reads.items():
            ms: list[list[float]] = [[] for _ in paths]
            for conn in conns:
                _in_read(conn, fn, ())  # warm the page cache, as a running console's would be
            for _ in range(rounds):
                for i, conn in enumerate(conns):
                    t = time.perf_counter()
                    _in_read(conn, fn, ())
                    ms[i].append((time.perf_counter() - t) * 1000)
            for i, m in enumerate(ms):
                m.sort()
                out[i][name] = {
                    "p50_ms": round(statistics.median(m), 4),
                    "p99_ms": round(m[min(len(m) - 1, int(len(m) * 0.99))], 4),
                }
        return out
    finally:
        for conn in conns:
            conn.close()


def _pages_in_use(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size, count, free = (
            conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count", "freelist_count")
        )
        return size * (count - free)
    finally:
        conn.close()


def _seed_copy(template: str, path: str, older: int, end_ms: int, seed: int) -> float:
    shutil.copyfile(template, path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _configure(conn)
        # a scratch copy: no fsync, and a rollback journal (not a WAL the size of the history)
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")
        t = time.perf_counter()
        if older:
            seed_history(conn, older, end_ms - DAY_MS, seed=seed)
        # the last day's calls: the same on both copies (same seed), after the history
        seed_history(conn, RECENT_CALLS, end_ms, days=1, seed=seed + 1)
        conn.execute("PRAGMA journal_mode = WAL")  # as serve runs it
        return time.perf_counter() - t
    finally:
        conn.close()


def _check(path: str) -> list[str]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _configure(conn)
        return _in_read(conn, counters.check_counters, ())
    finally:
        conn.close()


def run_history(n: int, work: str, ds: DataSet, setup_seconds: float, seed: int = 1) -> dict[str, Any]:
    """Every history figure of one run (the JSON keys of `extbill bench --history`)."""
    template = os.path.join(work, "history-template.db")
    seed_file(template, ds)
    end_ms = int(time.time() * 1000) - 60_000
    recent, history = os.path.join(work, "recent.db"), os.path.join(work, "history.db")
    _seed_copy(template, recent, 0, end_ms, seed)
    seed_s = _seed_copy(template, history, n, end_ms, seed)
    t = time.perf_counter()
    problems = _check(history)
    check_s = time.perf_counter() - t
    bytes_per_call = (_pages_in_use(history) - _pages_in_use(recent)) / max(n, 1)
    reads = _reads(ds, since=_since(end_ms))
    lat_recent, lat_history = _latencies([recent, history], reads, READ_ROUNDS)
    ratios = {k: lat_history[k]["p50_ms"] / lat_recent[k]["p50_ms"] for k in reads}
    setups_recent, setups_history = _setups([recent, history], ds, end_ms, setup_seconds, seed)
    return {
        "history_calls": n,
        "history_seed_s": round(seed_s, 1),
        "history_check_s": round(check_s, 1),
        "history_check": problems or "clean",
        "history_reads": {
            k: {"recent": lat_recent[k], "history": lat_history[k], "p50_ratio": round(ratios[k], 3)}
            for k in reads
        },
        "history_read_ratio": round(max(ratios.values()), 3),
        "history_setups_per_s": round(setups_history["raw_tx_per_s"]),
        "recent_setups_per_s": round(setups_recent["raw_tx_per_s"]),
        "history_setup_ratio": round(setups_history["raw_tx_per_s"] / setups_recent["raw_tx_per_s"], 3),
        "bytes_per_call": round(bytes_per_call),
        "history_targets": TARGETS,
    }


def _setups(paths: list[str], ds: DataSet, end_ms: int, seconds: float, seed: int) -> list[dict[str, float]]:
    """Setups per second on each file: the raw reference's transactions (lookup, route;
    then settle, untimed) on one connection per file kept open as serve keeps its own,
    in SETUP_TURNS turns, which file goes first alternating, the WAL folded back after
    each turn as serve's checkpointer does; the median turn's rate per file, after the
    warm-up turns."""
    mixes = [CallMix(ds, seed=seed + 3, epoch=end_ms // 1000 + 1) for _ in paths]
    conns = [sqlite3.connect(p, isolation_level=None) for p in paths]
    rates: list[list[float]] = [[] for _ in paths]
    try:
        for conn in conns:
            _configure(conn)
        for turn in range(SETUP_TURNS):
            order = range(len(paths)) if turn % 2 == 0 else reversed(range(len(paths)))
            for i in order:
                rates[i].append(_setup_turn(conns[i], mixes[i], seconds / SETUP_TURNS))
                conns[i].execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        for conn in conns:
            conn.close()
    return [{"raw_tx_per_s": statistics.median(r[SETUP_WARM_TURNS:])} for r in rates]


def _setup_turn(conn: sqlite3.Connection, mix: CallMix, seconds: float) -> float:
    """One turn of raw.py's loop on an open connection: setups per second of setup time."""
    clock = time.perf_counter
    done, setup_s, deadline = 0, 0.0, clock() + seconds
    now_ms = int(time.time() * 1000)
    while clock() < deadline:
        call = mix.next()
        t0 = clock()
        _in_read(conn, tx_calls.lookup, (call.number,))
        d = _in_transaction(
            conn, tx_calls.route, (call.billing_id, call.number, call.digits, 1, call.caller, None, None)
        )
        setup_s += clock() - t0
        done += 1
        if d.action == "dial":
            answer_ms = now_ms + call.ring_ms
            end_ms = answer_ms + min(call.talk_ms, d.limit_ms)
            facts = CallFacts(
                call.billing_id, call.answered, end_ms - answer_ms if call.answered else 0,
                iso_from_ms(answer_ms) if call.answered else None, iso_from_ms(end_ms),
                "ANSWER" if call.answered else "NOANSWER", "16", SettledBy.HANGUP,
            )  # fmt: skip
            _in_transaction(conn, tx_calls.settle, (facts,))
    return done / setup_s


def _since(end_ms: int) -> str:
    """`calls --since`: the day before the last one (a page of recent calls on both copies)."""
    return iso_from_ms(end_ms - 2 * DAY_MS)[:10]


def print_history(doc: dict[str, Any]) -> None:
    print(
        f"history: {doc['history_calls']:,} settled calls seeded in {doc['history_seed_s']} s, "
        f"ledger check {doc['history_check'] if isinstance(doc['history_check'], str) else 'FAILED'} "
        f"({doc['history_check_s']} s)"
    )
    print(
        f"  {'read':<16}{'p50 recent':>12}{'p50 history':>13}{'p99 recent':>12}{'p99 history':>13}{'ratio':>8}"
    )
    for k, r in doc["history_reads"].items():
        print(
            f"  {k:<16}{r['recent']['p50_ms']:>10.3f}ms{r['history']['p50_ms']:>11.3f}ms"
            f"{r['recent']['p99_ms']:>10.3f}ms{r['history']['p99_ms']:>11.3f}ms{r['p50_ratio']:>8.2f}"
        )
    print(
        f"  history_read_ratio {doc['history_read_ratio']} (target <= {TARGETS['history_read_ratio']}); "
        f"setups/s {doc['history_setups_per_s']} with history, {doc['recent_setups_per_s']} without: "
        f"history_setup_ratio {doc['history_setup_ratio']} (target >= {TARGETS['history_setup_ratio']}); "
        f"bytes_per_call {doc['bytes_per_call']} (target <= {TARGETS['bytes_per_call']})"
    )


def history_count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= HISTORY_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be a whole number of calls from 1 to {HISTORY_MAX:,}"
        )
    return int(text)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--history",
        type=history_count,
        metavar="N",
        help="only the history run: seed N settled calls, then reads and setups with and without them",
    )
    p.add_argument(
        "--history-seconds",
        type=float,
        default=3.0,
        help="setup loop per copy in the history run (default 3 s)",
    )


def cmd_history(a: argparse.Namespace) -> int:
    """The history run alone: figures on stdout, and in --json FILE."""
    import json  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    ds = DataSet(a.numbers, a.extensions)
    work = tempfile.mkdtemp(prefix="extbill-bench-history-")
    t = time.perf_counter()
    print(f"extbill bench: history run, {a.history:,} calls over {a.numbers} numbers", file=sys.stderr)
    try:
        doc = run_history(a.history, work, ds, a.history_seconds, a.seed)
    finally:
        if a.keep:
            print(f"extbill bench: files kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc["history_run_s"] = round(time.perf_counter() - t, 1)
    print_history(doc)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0 if doc["history_check"] == "clean" else 1
