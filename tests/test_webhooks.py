"""Notifications: the outbox delivered as signed webhooks to a real HTTP receiver on
127.0.0.1, retried while the receiver is down, in order per number, through a restart of
serve, and the operator's `events list` / `events retry`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fastagi.core.webhook import verify
from fastagi.service.outbox import Outbox, OutboxLimits
from fastagi.store.sqlite import SqliteStore

SECRET = "test-secret-0123456789"
A, B = "4008001111", "4008002222"
WAIT_S = 30.0


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST; it can go down and come back
    on the same port, or answer 500 for a while."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self.delay_s = 0.0  # a slow receiver answers after this
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay_s)
                ok = receiver.status == 200
                if ok:
                    receiver.received.append({"headers": dict(self.headers), "body": body, "at": time.time()})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.received]


@pytest.fixture
def receiver():
    r = Receiver()
    r.start()
    yield r
    r.stop()


def extbill(*args: str, db: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EXTBILL_DB"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastagi", *args, "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"extbill {' '.join(args)}: {proc.stderr}")
    return proc


def make_events(db: Path, tag: str = "") -> None:
    """Four events on each of two numbers, interleaved: suspended, resumed, suspended, resumed."""
    if not db.exists():
        extbill("db", "init", db=db)
        for n in (A, B):
            extbill("number", "add", n, "--name", "HQ", "--min-balance", "50", db=db)  # starts suspended
    for n in (A, B):
        extbill("recharge", n, "100", "--ref", f"{n}-a{tag}", db=db)  # resumed
    for n in (A, B):
        extbill("number", "set", n, "--min-balance", "1000", db=db)  # suspended
    for n in (A, B):
        extbill("number", "set", n, "--min-balance", "50", db=db)  # resumed


def outbox_rows(db: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM outbox ORDER BY id").fetchall()
    finally:
        conn.close()


def wait_until(cond: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


async def await_until(cond: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def all_delivered(db: Path) -> bool:
    return all(r["state"] == "delivered" for r in outbox_rows(db))


def run_outbox(db: Path, url: str, body: Callable[[], Any], limits: OutboxLimits) -> None:
    """Run a real Outbox on the database while `body` (a coroutine function) runs."""

    async def go() -> None:
        store = await SqliteStore.open(str(db), create=False)
        box = Outbox(store, url, SECRET, limits)
        box.start()
        try:
            await body()
        finally:
            await box.stop()
            await store.close()

    asyncio.run(go())


FAST = OutboxLimits(poll_s=0.05, retry_first_s=0.1, retry_max_gap_s=0.3)


def assert_in_order_once(db: Path, receiver: Receiver) -> None:
    """Every event arrived exactly once per event id, each number's in the order written."""
    got = receiver.events()
    ids = [e["id"] for e in got]
    assert len(ids) == len(set(ids))
    rows = outbox_rows(db)
    assert sorted(ids) == sorted(r["event_id"] for r in rows)
    for n in (A, B):
        written = [r["event_id"] for r in rows if r["stream"] == n]
        arrived = [e["id"] for e in got if e["data"]["number"] == n]
        assert arrived == written


def test_webhooks_are_signed_and_carry_a_unique_event_id(tmp_path: Path, receiver: Receiver) -> None:
    db = tmp_path / "w.db"
    make_events(db)

    async def body() -> None:
        await await_until(lambda: all_delivered(db))

    run_outbox(db, receiver.url, body, FAST)
    assert len(receiver.received) == 8
    for r in receiver.received:
        h = {k.lower(): v for k, v in r["headers"].items()}
        ts, sig = h["x-extbill-timestamp"], h["x-extbill-signature"]
        mac = hmac.new(SECRET.encode(), ts.encode() + b"." + r["body"], hashlib.sha256).hexdigest()
        assert sig == f"v1={mac}"  # computed here independently of the product
        assert verify(SECRET, ts, r["body"], sig, now_s=int(time.time()))
        assert h["content-type"] == "application/json"
        doc = json.loads(r["body"])
        assert doc["id"] == h["x-extbill-event-id"] and doc["id"].startswith("evt_")
    types = [e["type"] for e in receiver.events() if e["data"]["number"] == A]
    assert types == ["number.suspended", "number.resumed", "number.suspended", "number.resumed"]
    first = next(e["data"] for e in receiver.events() if e["data"]["number"] == A)
    assert first == {
        "number": A,
        "balance": "0.000",
        "min_balance": "50.000",
        "owed": "0.000",
        "reason": "created",
    }
    assert_in_order_once(db, receiver)
    listed = extbill("events", "list", db=db).stdout
    assert listed.count("delivered") == 8


def test_a_receiver_down_for_a_while_gets_every_event_afterwards_once_in_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    db = tmp_path / "w.db"
    receiver.stop()  # down: connections to its port are refused
    make_events(db)

    async def body() -> None:
        await await_until(lambda: all(r["attempts"] >= 2 for r in outbox_rows(db) if r["id"] in (1, 2)))
        # while down: each number's first event is retried, the later ones wait behind it
        rows = outbox_rows(db)
        assert all(r["state"] == "pending" for r in rows)
        assert all(r["attempts"] == 0 for r in rows if r["id"] > 2)
        assert rows[0]["last_error"].startswith("ConnectError")
        receiver.start()  # back, on the same port
        await await_until(lambda: all_delivered(db))

    run_outbox(db, receiver.url, body, FAST)
    assert_in_order_once(db, receiver)


def test_an_event_given_up_is_listed_as_failed_and_retried_by_the_operator(
    tmp_path: Path, receiver: Receiver
) -> None:
    db = tmp_path / "w.db"
    receiver.status = 500
    extbill("db", "init", db=db)
    extbill("number", "add", A, "--name", "HQ", "--min-balance", "50", db=db)
    limits = OutboxLimits(poll_s=0.05, retry_first_s=0.05, retry_max_gap_s=0.1, retry_window_s=0.3)

    async def body() -> None:
        await await_until(lambda: outbox_rows(db)[0]["state"] == "failed")

    run_outbox(db, receiver.url, body, limits)
    failed = extbill("events", "list", "--failed", db=db).stdout
    assert "number.suspended" in failed and "HTTP 500" in failed
    assert json.loads(extbill("events", "list", "--failed", "--json", db=db).stdout)[0]["state"] == "failed"
    receiver.status = 200
    assert "will be sent again" in extbill("events", "retry", "1", db=db).stdout

    async def body2() -> None:
        await await_until(lambda: all_delivered(db))

    run_outbox(db, receiver.url, body2, limits)
    assert [e["type"] for e in receiver.events()] == ["number.suspended"]
    assert extbill("events", "list", "--failed", db=db).stdout.count("number.") == 0
    proc = extbill("events", "retry", "1", db=db, check=False)
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "extbill: error: event 1 was already delivered; nothing to retry"
    )


def test_a_slow_receiver_does_not_hold_up_call_setup(tmp_path: Path, receiver: Receiver) -> None:
    db = tmp_path / "w.db"
    make_events(db)
    receiver.delay_s = 3.0

    async def body() -> None:
        from fastagi.store import tx_calls  # noqa: PLC0415

        store = await SqliteStore.open(str(db), create=False)
        try:
            await asyncio.sleep(0.3)  # the outbox's POSTs are now waiting on the receiver
            for i in range(20):
                t0 = time.monotonic()
                await store.run(tx_calls.route, f"c{i}", A, "", 1, "13800000000", None, None)
                assert time.monotonic() - t0 < 0.5
        finally:
            await store.close()
        assert not any(r["state"] == "delivered" for r in outbox_rows(db))

    run_outbox(db, receiver.url, body, FAST)


class Serve:
    """The real `extbill serve` as a subprocess, its JSON log in a file."""

    def __init__(self, db: Path, url: str, log: Path) -> None:
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115  (closed in stop)
        env = {
            **os.environ,
            "EXTBILL_AMI_SECRET": "",
            "EXTBILL_WEBHOOK_URL": url,
            "EXTBILL_WEBHOOK_SECRET": SECRET,
            "EXTBILL_WEBHOOK_RETRY_S": "1",
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastagi",
                "serve",
                "--db",
                str(db),
                "--agi-bind",
                "127.0.0.1:0",
                "--no-demo",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env=env,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def test_serve_restarted_with_events_pending_still_delivers_them(tmp_path: Path, receiver: Receiver) -> None:
    db = tmp_path / "w.db"
    receiver.stop()
    make_events(db)
    serve = Serve(db, receiver.url, tmp_path / "serve.log")
    try:
        wait_until(lambda: outbox_rows(db)[0]["attempts"] >= 1)  # serve tried: the receiver is down
    finally:
        serve.stop()
    assert serve.proc.returncode == 0
    assert all(r["state"] == "pending" for r in outbox_rows(db))
    receiver.start()
    make_events(db, tag="-2")  # more events while serve is down
    serve = Serve(db, receiver.url, tmp_path / "serve.log")
    try:
        wait_until(lambda: all_delivered(db))
    finally:
        serve.stop()
    assert len(outbox_rows(db)) == 12  # 8, then suspended and resumed again on each number
    assert_in_order_once(db, receiver)
