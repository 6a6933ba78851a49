"""The benchmark's view of its processes: ports, CPU seconds and memory from /proc, stopping."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys


class BenchError(Exception):
    """The run could not be completed (a process failed to start or stopped early)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(
    db: str,
    agi_port: int,
    *,
    workers: int,
    log_level: str | None = None,
    sweep_interval_s: int | None = None,
    ami: tuple[str, ...] = (),
) -> list[str]:
    """`extbill serve` as the benchmark runs it: its own file and port, JSON logs, no demo
    data, room for every connection the load opens; serve's own log level and sweeper
    unless `log_level` / `sweep_interval_s` say otherwise. `ami`: the --ami-* options, if
    it is to log in to an AMI peer."""
    own: tuple[str, ...] = ("--log-level", log_level) if log_level else ()
    own += ("--sweep-interval-s", str(sweep_interval_s)) if sweep_interval_s else ()
    return [
        sys.executable,
        "-m",
        "fastagi",
        "serve",
        "--db",
        db,
        "--agi-bind",
        f"127.0.0.1:{agi_port}",
        *ami,
        "--no-demo",
        *own,
        "--log-format",
        "json",
        "--connections-max",
        "5000",
        "--workers",
        str(workers),
    ]


def _proc_status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _serve_pids(pid: int) -> list[int]:
    """A process and its children: serve and its workers (not multiprocessing's resource tracker)."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(k) for k in fh.read().split()]
    except OSError:
        return pids
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as fh:
                if b"resource_tracker" in fh.read():
                    continue
        except OSError:
            continue
        pids.append(kid)
    return pids


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of a process and its children (serve and its workers; Asterisk)."""
    total = 0.0
    for p in _serve_pids(pid):
        c = _cpu_s(p)
        if c is None:
            return None if p == pid else total
        total += c
    return total


def tree_kb(pid: int, field: str) -> int | None:
    """A /proc status figure of serve, summed over its workers (None when serve is gone)."""
    own = _proc_status_kb(pid, field)
    if own is None:
        return None
    return own + sum(_proc_status_kb(p, field) or 0 for p in _serve_pids(pid)[1:])


async def stop_process(proc: asyncio.subprocess.Process, timeout_s: float) -> int:
    if proc.returncode is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1
