"""The REAL `extbill serve` as a subprocess, for the end-to-end scenarios.

    srv = ExtbillServer(asterisk, tmp_dir)    # temp SQLite file, free loopback FastAGI port
                                              # (db="postgresql://...": that database instead)
    srv.cli("plan", "add", "p", "--per-minute", "0.6")   # the admin CLI on srv.db
    srv.start()          # waits for serve.listening and ami.connected (the harness's
                         # [extbill] AMI user); point the dialplan at srv.agi_address
    srv.logs             # every JSON log line of every run, in order ("_run": 1, 2, ...)
    await srv.wait_log("call.settled", billing_id=...)
    srv.restart()        # SIGTERM, wait, start again on the same DB and port
    srv.stop()           # SIGTERM by PID, then SIGKILL
    srv.kill()           # SIGKILL by PID at once (a serve that dies mid-call)

The admin CLI runs in-process (fastagi.admin.cli.main, the `extbill` entry point, with its
stdout captured): the same parser and code as the command, without a Python start-up
per call. EXTBILL_E2E_CLI_SUBPROCESS=1 runs each as `extbill ...` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog

from fastagi.admin.cli import main as cli_main
from fastagi.dev.harness import Asterisk, free_port

LogLine = dict[str, Any]


class CliError(RuntimeError):
    pass


def minor(amount: str | int | None) -> int:
    """CLI money text ('12.345') -> minor units (0.001 CNY); sign kept, so a negative shows."""
    if amount is None:
        return 0
    return int(Decimal(str(amount)) * 1000)


def extbill_command() -> list[str]:
    exe = Path(sys.executable).parent / "extbill"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fastagi"]


class ExtbillServer:
    def __init__(
        self,
        asterisk: Asterisk,
        workdir: Path,
        *,
        agi_port: int | None = None,
        dial_timeout_s: int = 5,
        sweep_interval_s: int = 1,
        sweep_grace_s: int = 10,
        log_level: str = "debug",
        extra_args: tuple[str, ...] = (),
        db: str | None = None,
    ) -> None:
        self.asterisk = asterisk
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # what --db names: a temporary SQLite file, or the database given (a postgresql:// URL)
        self.db = db or str(self.workdir / "extbill.db")
        self.log_file = self.workdir / "serve.log"
        self.agi_port = agi_port or free_port()
        self.dial_timeout_s = dial_timeout_s
        self.sweep_interval_s = sweep_interval_s
        self.sweep_grace_s = sweep_grace_s
        self.log_level = log_level
        self.extra_args = extra_args  # more `serve` flags, e.g. a short --quota-s
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.logs: list[LogLine] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    @property
    def agi_address(self) -> str:
        return f"127.0.0.1:{self.agi_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ admin CLI
    def cli(self, *args: str) -> str:
        argv = [*args, "--db", self.db]
        if os.environ.get("EXTBILL_E2E_CLI_SUBPROCESS") == "1":
            res = subprocess.run(extbill_command() + argv, capture_output=True, text=True, timeout=30)
            rc, out, err = res.returncode, res.stdout, res.stderr
        else:
            saved = structlog.get_config()
            out_buf, err_buf = io.StringIO(), io.StringIO()
            try:
                with contextlib.redirect_stdout(out_buf), contextlib.redirect_stderr(err_buf):
                    rc = cli_main(argv)
            finally:
                structlog.configure(**saved)
            out, err = out_buf.getvalue(), err_buf.getvalue()
        if rc != 0:
            raise CliError(f"extbill {' '.join(argv)} -> {rc}: {err.strip()}")
        return out

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json"))

    def balance(self, number: str) -> dict[str, Any]:
        return self.cli_json("balance", number)

    def calls(self, number: str) -> list[dict[str, Any]]:
        return self.cli_json("calls", number)

    def call(self, number: str, billing_id: str) -> dict[str, Any]:
        found = [c for c in self.calls(number) if c["id"] == billing_id]
        assert len(found) == 1, (billing_id, self.calls(number))
        return found[0]

    # ------------------------------------------------------------------ process
    def command(self) -> list[str]:
        user, secret = self.asterisk.extbill_user
        return extbill_command() + [
            "serve",
            "--db",
            self.db,
            "--agi-bind",
            self.agi_address,
            "--ami-host",
            "127.0.0.1",
            "--ami-port",
            str(self.asterisk.ami_port),
            "--ami-user",
            user,
            "--ami-secret",
            secret,
            "--no-demo",
            "--log-format",
            "json",
            "--log-level",
            self.log_level,
            "--dial-timeout-s",
            str(self.dial_timeout_s),
            "--sweep-interval-s",
            str(self.sweep_interval_s),
            "--sweep-grace-s",
            str(self.sweep_grace_s),
            *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> ExtbillServer:
        assert not self.running, "already running"
        self.runs += 1
        mark = len(self.logs)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXTBILL_")}
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc, self.runs), daemon=True)
        self._reader.start()
        try:
            self.wait_log_sync("serve.listening", since=mark, timeout=timeout)
            self.wait_log_sync("ami.connected", since=mark, timeout=timeout)
            # calls set up from now on get chunks renewed mid-call (the supervisor holds the lease)
            self.wait_log_sync("supervisor.lease_taken", since=mark, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read(self, proc: subprocess.Popen[bytes], run: int) -> None:
        assert proc.stderr is not None
        with open(self.log_file, "ab") as sink:
            for raw in proc.stderr:
                sink.write(raw)
                sink.flush()
                text = raw.decode("utf-8", errors="replace").rstrip("\n")
                try:
                    line = json.loads(text)
                    if not isinstance(line, dict):
                        raise ValueError
                except ValueError:
                    line = {"event": "_raw", "text": text}
                line["_run"] = run
                line["_t"] = time.time()
                with self._lock:
                    self.logs.append(line)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM by PID; SIGKILL if it has not exited within `timeout`. Returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL by PID: the process dies at once, mid-call, leaving what it held (its
        supervisor lease, its calls) to the other serve. Returns the exit code."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        return self.stop()

    def restart(self, timeout: float = 20.0) -> ExtbillServer:
        self.stop()
        return self.start(timeout)

    # ------------------------------------------------------------------ logs
    def find(self, event: str, since: int = 0, **match: Any) -> list[LogLine]:
        with self._lock:
            lines = self.logs[since:]
        return [
            line
            for line in lines
            if line.get("event") == event and all(line.get(k) == v for k, v in match.items())
        ]

    def _first(self, pred: Callable[[LogLine], bool], since: int) -> LogLine | None:
        with self._lock:
            for line in self.logs[since:]:
                if pred(line):
                    return line
        return None

    def _pred(self, event: str, match: dict[str, Any]) -> Callable[[LogLine], bool]:
        return lambda line: line.get("event") == event and all(line.get(k) == v for k, v in match.items())

    def wait_log_sync(self, event: str, since: int = 0, timeout: float = 10.0, **match: Any) -> LogLine:
        deadline = time.monotonic() + timeout
        pred = self._pred(event, match)
        while True:
            line = self._first(pred, since)
            if line is not None:
                return line
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"extbill serve exited ({self.proc.returncode}) before {event}:\n" + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} {match} in extbill serve's log:\n{self.log_tail()}")
            time.sleep(0.05)

    async def wait_log(self, event: str, since: int = 0, timeout: float = 10.0, **match: Any) -> LogLine:
        deadline = time.monotonic() + timeout
        pred = self._pred(event, match)
        while True:
            line = self._first(pred, since)
            if line is not None:
                return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} {match} in extbill serve's log:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def log_tail(self, lines: int = 40, since: int = 0) -> str:
        with self._lock:
            tail = self.logs[since:][-lines:]
        return "\n".join(
            json.dumps({k: v for k, v in x.items() if k != "_t"}, ensure_ascii=False) for x in tail
        )

    def __enter__(self) -> ExtbillServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
