"""`extbill serve --workers 2`: two real processes on one port and one SQLite file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
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

    def __init__(self, tmp: Path) -> None:
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
                "2",
                "--log-format",
                "json",
                "--log-level",
                "info",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**os.environ, "EXTBILL_AMI_SECRET": ""},
        )
        self.port = int(self.wait_for("serve.listening")["agi"].rsplit(":", 1)[1])
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
    workers = {ln.get("worker", 0) for ln in serve.lines() if ln.get("event") == "call.lookup"}
    assert workers == {0, 1}, workers  # 40 connections from different ports: both got some
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
