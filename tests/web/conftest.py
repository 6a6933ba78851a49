"""The web layer served for real: a real SQLite file seeded with the demo number, users and an
API key, the app under uvicorn on a loopback TCP port in its own thread and event loop."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fastagi.core.money import parse_amount
from fastagi.runtime import credentials
from fastagi.runtime.clock import now_ms
from fastagi.store import tx_admin, tx_web
from fastagi.store.demo import DEMO_NUMBER, seed
from fastagi.store.factory import open_store
from fastagi.web.app import create_app

OTHER_NUMBER = "4009990000"
PASSWORD = "correct horse battery"
USERS = {  # login: (role, number, ext)
    "op": ("operator", None, None),
    "hq": ("hq", DEMO_NUMBER, None),
    "br1": ("branch", DEMO_NUMBER, "1"),
    "hq2": ("hq", OTHER_NUMBER, None),
    "br9": ("branch", OTHER_NUMBER, "9"),
}


@dataclass
class Clock:
    """The app's wall clock; a test moves it on to expire sessions without waiting."""

    offset_ms: int = 0

    def __call__(self) -> int:
        return now_ms() + self.offset_ms


@dataclass
class Server:
    url: str
    db: str
    clock: Clock
    tokens: dict[str, str] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None
    store: Any = None

    def client(self, **kw: Any) -> httpx.Client:
        headers = {"Origin": self.url, **kw.pop("headers", {})}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def run(self, fn: Any, *args: Any) -> Any:
        """A store operation on the server's own loop (to set up calls and the like)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(self.store.run(fn, *args), self.loop).result(30)


def _seed(conn: Any, hashes: dict[str, str], tokens: dict[str, str]) -> None:
    seed(conn)
    tx_admin.add_number(conn, OTHER_NUMBER, "Other HQ", "standard", 0, "en", None, 5)
    tx_admin.add_extension(conn, OTHER_NUMBER, "9", "Other branch", "Local/x@ctx", None)
    tx_admin.recharge(conn, OTHER_NUMBER, None, parse_amount("100"), "other-main")
    tx_admin.recharge(conn, OTHER_NUMBER, "9", parse_amount("10"), "other-ext")
    for login, (role, number, ext) in USERS.items():
        tx_web.add_user(conn, login, role, number, ext, hashes[login])
    for name, number in (("pay", DEMO_NUMBER), ("pay2", OTHER_NUMBER)):
        token = credentials.new_api_token()
        tx_web.add_api_key(conn, name, number, credentials.token_hash(token), token[:10])
        tokens[name] = token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp: Path, bind_host: str = "127.0.0.1", db: str | None = None) -> Iterator[Server]:
    """bind_host: the address the app believes it is bound to (/metrics is open on loopback only).
    db: the database (default: an SQLite file in tmp)."""
    db = db or str(tmp / "web.db")
    port = _free_port()
    srv = Server(f"http://127.0.0.1:{port}", db, Clock())
    pw_hash = credentials.hash_password(PASSWORD)
    hashes = dict.fromkeys(USERS, pw_hash)
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        store = await open_store(db)
        await store.run(_seed, hashes, srv.tokens)
        srv.loop, srv.store = asyncio.get_running_loop(), store
        app = create_app(store, clock=srv.clock, bind_host=bind_host)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        box["server"] = server
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        ready.set()
        await task
        await store.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the web server did not start"
    yield srv
    box["server"].should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    db = None
    if os.environ.get("EXTBILL_TEST_WEB_PG") == "1":  # the web suites on PostgreSQL (tests/conftest.py)
        db = request.getfixturevalue("pg_server").new_database()
    yield from serve(tmp_path_factory.mktemp("web"), db=db)


def sign_in(srv: Server, login: str, password: str = PASSWORD, **kw: Any) -> httpx.Client:
    c = srv.client(**kw)
    page = c.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = c.post("/login", data={"login": login, "password": password, "csrf": token})
    assert r.status_code == 303, (r.status_code, r.text[:500])
    return c


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def form_token_of(html: str) -> str:
    return re.search(r'name="form_token" value="([^"]+)"', html).group(1)


def place_call(srv: Server, bid: str, ext: str, caller: str, start: str, talk_s: int | None) -> None:
    """A call routed by call control's own transaction at `start`, then settled (talk_s None:
    still in progress; 0: unanswered) through the same store operation the server uses."""
    from unittest import mock

    from fastagi.core.clock import iso_from_ms, ms_from_iso
    from fastagi.core.records import CallFacts
    from fastagi.store import tx_calls

    with mock.patch.object(tx_calls, "now_ms", lambda: ms_from_iso(start)):
        d = srv.run(tx_calls.route, bid, DEMO_NUMBER, ext, 1, caller, f"PJSIP/t-{bid}", bid)
    assert d.action == "dial", d
    if talk_s is None:
        return
    t0 = ms_from_iso(start) + 5000
    facts = CallFacts(
        billing_id=bid,
        answered=talk_s > 0,
        talk_ms=talk_s * 1000,
        answer_at=iso_from_ms(t0) if talk_s else None,
        end_at=iso_from_ms(t0 + talk_s * 1000),
        disposition="ANSWER" if talk_s else "NOANSWER",
        cause="16",
        settled_by="hangup",
    )
    srv.run(tx_calls.settle, facts)
