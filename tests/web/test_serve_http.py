"""`extbill serve` with http_bind: the console, API and /metrics on serve's own loop and store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import csrf_of

from fastagi.runtime import config
from fastagi.store.demo import DEMO_NUMBER, DEMO_PASSWORD

START_TIMEOUT_S = 30


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_the_console_when_http_bind_is_set(tmp_path: Path) -> None:
    """The demo HQ signs in on the URL serve logs, sees its number, and /metrics answers on loopback."""
    http, agi = _port(), _port()
    env = {**os.environ, "EXTBILL_HTTP_BIND": f"127.0.0.1:{http}", "EXTBILL_AGI_BIND": f"127.0.0.1:{agi}"}
    env.pop("EXTBILL_AMI_SECRET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastagi", "serve", "--db", str(tmp_path / "s.db")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + START_TIMEOUT_S
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if line.startswith("{") and json.loads(line)["event"] == "serve.http_listening":
                url = json.loads(line)["url"]
        assert url == f"http://127.0.0.1:{http}"
        c = httpx.Client(base_url=url, headers={"Origin": url, "Accept-Language": "en"}, timeout=30)
        token = csrf_of(c.get("/login").text)
        r = c.post("/login", data={"login": "demo-hq", "password": DEMO_PASSWORD, "csrf": token})
        assert r.status_code == 303
        page = c.get("/", follow_redirects=True)
        assert page.status_code == 200 and f"{DEMO_NUMBER} · Demo HQ" in page.text
        metrics = httpx.get(f"{url}/metrics").text
        assert "extbill_calls_in_progress 0.0" in metrics and "extbill_ami_connected 0.0" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_http_bind_is_validated() -> None:
    with pytest.raises(config.ConfigError, match="http_bind"):
        config.load(env={"EXTBILL_HTTP_BIND": "8080"})
    assert config.load(env={}).http_bind == ""
