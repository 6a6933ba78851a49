"""`extbill serve --workers 2`: real processes on one port and one SQLite file; serve's own
sweep loop and AMI consumer while a worker process holds calls."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fastagi.dev.bench.agi_peer import agi_call
from fastagi.store.demo import DEMO_NUMBER

START_TIMEOUT_S = 20.0


class Serve:
    """The real serve with --workers 2; its JSON log lines are read from a file."""

    def __init__(
        self, tmp: Path, workers: int = 2, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        self.db = tmp / "w.db"
        self.log_path = tmp / "serve.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastagi",
                "serve",
                "--db",
                str(self.db),
                "--agi-bind",
                "127.0.0.1:0",
                "--workers",
                str(workers),
                "--log-format",
                "json",
                "--log-level",
                "info",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("EXTBILL_")}, **(env or {})},
        )
        self.port = int(self.wait_for("serve.listening")["agi"].rsplit(":", 1)[1])
        if workers > 1:
            self.wait_for("serve.worker_listening")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                pass
        return out

    def wait_for(self, event: str, count: int = 1, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [ln for ln in self.lines() if ln.get("event") == event]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"serve exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {event} x{count} in {timeout_s}s: {self.log_path.read_text()[-2000:]}")

    def worker_pid(self) -> int:
        return int([ln for ln in self.lines() if ln.get("event") == "serve.worker_started"][-1]["pid"])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def serve(tmp_path: Path):
    s = Serve(tmp_path)
    yield s
    s.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by the first process) is gone too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


LOOKUP_ROUNDS_MAX = 10


def test_both_processes_answer_calls_and_never_overdraw_together(serve: Serve) -> None:
    """Requests spread over both processes; 20 parallel calls to an extension holding one
    grant get exactly one Dial between them, the rest the arrears prompt."""

    async def run() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        lookups = await asyncio.gather(
            *(
                agi_call("127.0.0.1", serve.port, "lookup", [DEMO_NUMBER], uniqueid=f"1732650000.{i}")
                for i in range(40)
            )
        )
        routes = await asyncio.gather(
            *(
                agi_call(
                    "127.0.0.1", serve.port, "route", [DEMO_NUMBER, "3", "1"], uniqueid=f"1732650100.{i}"
                )
                for i in range(20)
            )
        )
        return [r.variables for r in lookups], [r.variables for r in routes]

    lookups, routes = asyncio.run(run())
    assert all(v["EXTBILL_RESULT"] == "collect" for v in lookups)
    results = sorted(v["EXTBILL_RESULT"] + ":" + v.get("EXTBILL_PROMPT", "") for v in routes)
    assert results == ["dial:"] + ["prompt:ext-in-arrears"] * 19
    serve.wait_for("call.lookup", count=40)
    # Whoever is free accepts from the one socket: on a busy machine one process may take a
    # whole round of 40, so more rounds (bounded) until both have answered some.
    for round_no in range(LOOKUP_ROUNDS_MAX):
        workers = {ln.get("worker", 0) for ln in serve.lines() if ln.get("event") == "call.lookup"}
        if workers == {0, 1}:
            break

        async def more(round_no: int = round_no) -> None:
            await asyncio.gather(
                *(
                    agi_call(
                        "127.0.0.1",
                        serve.port,
                        "lookup",
                        [DEMO_NUMBER],
                        uniqueid=f"17326502{round_no:02d}.{i}",
                    )
                    for i in range(40)
                )
            )

        asyncio.run(more())
        serve.wait_for("call.lookup", count=40 * (round_no + 2))
    assert workers == {0, 1}, workers
    # Both processes write to one stderr: every line is still one whole JSON object.
    raw = serve.log_path.read_text().splitlines()
    assert len(raw) == len(serve.lines()) > 60


def test_sigterm_stops_every_process_and_a_dead_worker_is_started_again(serve: Serve) -> None:
    """kill -9 of a worker: the first process starts it again; SIGTERM then ends both."""
    first = serve.worker_pid()
    os.kill(first, signal.SIGKILL)
    died = serve.wait_for("serve.worker_died")
    assert died["exitcode"] == -signal.SIGKILL
    serve.wait_for("serve.worker_started", count=2)
    serve.wait_for("serve.worker_listening", count=2)
    second = serve.worker_pid()
    assert second != first and _alive(second)
    assert serve.stop() == 0
    assert not _alive(second)
    assert any(ln.get("event") == "serve.stopped" and ln.get("worker") == 1 for ln in serve.lines())


def _db_rows(db: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _backdate(db: Path, billing_id: str, ms: int = 86_400_000) -> None:
    """A call that began `ms` earlier (by default a day: a reservation gone stale)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        conn.execute("UPDATE calls SET start_ms = start_ms - ? WHERE billing_id = ?", (ms, billing_id))
        conn.commit()
    finally:
        conn.close()


def _db_check(db: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastagi", "db", "check", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _short_plan(db: Path) -> None:
    """Grants of at most a minute (0.6 CNY): main can hold dozens of calls at once."""
    for args in (
        ("plan", "add", "short", "--per-minute", "0.6", "--max-call", "60"),
        ("number", "set", DEMO_NUMBER, "--plan", "short"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "fastagi", *args, "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr


def _grant(serve: Serve, ids: list[str]) -> dict[str, int]:
    """No-key calls (charged to main) with these uniqueids; which process granted each."""

    async def run() -> list[dict[str, str]]:
        results = await asyncio.gather(
            *(agi_call("127.0.0.1", serve.port, "route", [DEMO_NUMBER, "", "1"], uniqueid=i) for i in ids)
        )
        return [r.variables for r in results]

    before = sum(1 for ln in serve.lines() if ln.get("event") == "call.decision")
    assert [v["EXTBILL_RESULT"] for v in asyncio.run(run())] == ["dial"] * len(ids)
    serve.wait_for("call.decision", count=before + len(ids))
    return {ln["uniqueid"]: ln.get("worker", 0) for ln in serve.lines() if ln.get("event") == "call.decision"}


@pytest.mark.parametrize("workers", [1, 2])
def test_serves_sweep_loop_charges_a_stale_reservation_whoever_granted_it(
    tmp_path: Path, workers: int
) -> None:
    """unsettled_policy=charge: a reservation nobody settled is charged its whole grant by
    serve's own periodic sweep (the first process's, for calls any process granted); calls
    still within their grant are left alone; the ledger checks out afterwards."""
    serve = Serve(
        tmp_path,
        workers,
        ("--unsettled-policy", "charge", "--sweep-interval-s", "1"),
        {"EXTBILL_AMI_SECRET": ""},
    )
    try:
        _short_plan(serve.db)
        ids: list[str] = []
        for batch in range(5):  # until every process has granted some (the kernel picks who accepts)
            ids += [f"1732650300.{batch * 20 + i}" for i in range(1, 21)]
            by = _grant(serve, ids[-20:])
            if len(set(by.values())) == workers:
                break
        # a stale call granted by each process
        stale = sorted(next(i for i in ids if by[i] == w) for w in range(workers))
        for billing_id in stale:
            _backdate(serve.db, billing_id)
        closed = [serve.wait_for("call.unsettled_closed", count=n) for n in range(1, len(stale) + 1)]
        assert sorted(c["billing_id"] for c in closed) == stale
        assert all(
            c["policy"] == "charge" and c["state"] == "rated" and c.get("worker", 0) == 0 for c in closed
        )
        serve.wait_for("sweeper.closed")
        rows = {r["billing_id"]: r for r in _db_rows(serve.db, "SELECT * FROM calls")}
        for billing_id in stale:
            r = rows[billing_id]
            assert (r["state"], r["settled_by"], r["cost"], r["talk_s"]) == (
                "rated",
                "sweeper",
                r["reserved"],
                r["granted_s"],
            )
            assert r["cost"] > 0
        live = [i for i in ids if i not in stale]
        assert all(rows[i]["state"] == "reserved" for i in live)
        check = _db_check(serve.db)
        assert check.returncode == 0 and f"{len(live)} in progress" in check.stdout, check.stdout
    finally:
        assert serve.stop() == 0


class AmiThread:
    """The fake Asterisk AMI (the benchmark's) on its own event loop and thread, so the
    test can wait on serve's log lines meanwhile."""

    def __init__(self) -> None:
        import threading  # noqa: PLC0415

        from fastagi.dev.bench.ami_peer import FakeAmi  # noqa: PLC0415

        self.live: list[Any] = []  # CallChannels listed by CoreShowChannels
        self.loop = asyncio.new_event_loop()
        self.ami = FakeAmi("extbill", "s3cret", lambda: list(self.live))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.ami.start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def send(self, data: bytes) -> None:
        async def go() -> None:
            assert self.ami.send(data), "serve is not logged in"
            await self.ami.drain()

        self.call(go())

    def disconnect(self) -> None:
        self.loop.call_soon_threadsafe(self.ami.disconnect)

    def close(self) -> None:
        self.call(self.ami.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_two_processes_with_ami_settle_reconcile_and_survive_a_worker_restart(tmp_path: Path) -> None:
    """With AMI on and a worker process holding calls: AMI events settle a call the worker
    granted; a worker killed mid-call is started again and its call is still settled once
    (the hangup handler's request, answered by either process); after an AMI reconnect the
    reconcile closes the worker's call whose channel is gone and keeps the live one."""
    from fastagi.dev.bench.ami_peer import CallChannels  # noqa: PLC0415

    ami = AmiThread()
    serve = Serve(
        tmp_path,
        2,
        ("--ami-port", str(ami.ami.port), "--ami-user", "extbill"),
        {"EXTBILL_AMI_SECRET": "s3cret"},
    )
    try:
        serve.wait_for("ami.connected")
        _short_plan(serve.db)
        ids: list[str] = []
        for batch in range(10):  # until the worker has granted three calls
            ids += [f"1732650400.{batch * 10 + i}" for i in range(1, 11)]
            by = _grant(serve, ids[-10:])
            held = [i for i in ids if by[i] == 1]
            if len(held) >= 3:
                break
        a, b, c = held[:3]
        d = next(i for i in ids if i not in (a, b, c))

        # 1. AMI settles the worker's call A: 30 s of talk
        now = int(time.time() * 1000)
        ch = CallChannels(a, int(a.split(".")[1]))
        ami.send(
            ch.answered_events(now + 1000) + ch.ended_events(now + 31_000) + ch.caller_hangup(now + 31_005)
        )
        settled = serve.wait_for("call.settled")
        assert (settled["billing_id"], settled["settled_by"], settled["talk_s"]) == (a, "ami", 30)

        # 2. the worker dies holding call B; it is started again, and B's hangup report settles it
        os.kill(serve.worker_pid(), signal.SIGKILL)
        serve.wait_for("serve.worker_died")
        serve.wait_for("serve.worker_listening", count=2)

        async def hangup() -> None:
            await agi_call(
                "127.0.0.1",
                serve.port,
                "hangup",
                [b, "ANSWER", "16", f"{now / 1000 + 2:.3f}", f"{now / 1000 + 14:.3f}"],
                uniqueid=b,
            )

        asyncio.run(hangup())
        settled = serve.wait_for("call.settled", count=2)
        assert (settled["billing_id"], settled["settled_by"], settled["talk_s"]) == (b, "hangup", 12)

        # 3. AMI drops; meanwhile C's channel is gone, D's is live: the reconnect's reconcile
        # closes C (policy mark: unrated), leaves D reserved
        for billing_id in (c, d):  # older than a reconcile's minimum age, well within their grant
            _backdate(serve.db, billing_id, ms=10_000)
        ami.live[:] = [CallChannels(d, int(d.split(".")[1]))]
        ami.disconnect()
        serve.wait_for("ami.connected", count=2)
        reconciled = serve.wait_for("settle.reconciled", count=2)
        assert reconciled["live"] == 1 and reconciled["closed"] >= 1
        rows = {r["billing_id"]: r for r in _db_rows(serve.db, "SELECT * FROM calls")}
        assert (rows[a]["state"], rows[a]["settled_by"]) == ("rated", "ami")
        assert (rows[b]["state"], rows[b]["settled_by"], rows[b]["talk_s"]) == ("rated", "hangup", 12)
        assert (rows[c]["state"], rows[c]["settled_by"]) == ("unrated", "reconcile")
        assert rows[d]["state"] == "reserved"
        check = _db_check(serve.db)
        assert check.returncode == 0, check.stdout
    finally:
        assert serve.stop() == 0
        ami.close()


def test_a_worker_dying_again_and_again_is_given_up_and_serve_goes_on(serve: Serve) -> None:
    """Killed WORKER_RESTARTS_MAX + 1 times within the window: logged as given up, not
    started again; the first process still answers calls and still stops cleanly."""
    from fastagi.service.workers import WORKER_RESTARTS_MAX  # noqa: PLC0415

    for n in range(1, WORKER_RESTARTS_MAX + 2):
        serve.wait_for("serve.worker_started", count=n)
        os.kill(serve.worker_pid(), signal.SIGKILL)
        serve.wait_for(
            "serve.worker_died" if n <= WORKER_RESTARTS_MAX else "serve.worker_given_up",
            count=n if n <= WORKER_RESTARTS_MAX else 1,
        )
    given_up = serve.wait_for("serve.worker_given_up")
    assert given_up["worker"] == 1 and given_up["restarts"] == WORKER_RESTARTS_MAX
    started = sum(1 for ln in serve.lines() if ln.get("event") == "serve.worker_started")
    assert started == WORKER_RESTARTS_MAX + 1

    async def calls() -> list[str]:
        results = await asyncio.gather(
            *(
                agi_call("127.0.0.1", serve.port, "lookup", [DEMO_NUMBER], uniqueid=f"1732650500.{i}")
                for i in range(10)
            )
        )
        return [r.variables["EXTBILL_RESULT"] for r in results]

    assert asyncio.run(calls()) == ["collect"] * 10
    assert sum(1 for ln in serve.lines() if ln.get("event") == "serve.worker_started") == started
    assert serve.stop() == 0
