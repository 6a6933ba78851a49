"""Fixtures for the end-to-end tests against a real Asterisk 22 (fastagi/dev/harness/).

The Asterisk root is built by .ci/asterisk-root (EXTBILL_ASTERISK_ROOT, default
/var/cache/extbill/asterisk-root). Without it (or without root privileges for chroot)
the e2e tests are skipped, unless EXTBILL_E2E_REQUIRED=1, which turns that into a failure.
EXTBILL_E2E_KEEP=1 keeps the Asterisk config/log dir (ROOT/opt/extbill-e2e-*) afterwards.

The real server: `extbill_server` (one per test module) runs `extbill serve` as a
subprocess (tests/e2e/extbill_server.py) on a temporary SQLite file, with the harness
Asterisk's [extbill] AMI user; `extbill` is the same server per test (started again if a
test left it stopped, its log printed on failure).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .asterisk import Asterisk, default_root, root_problem
from .extbill_server import ExtbillServer

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session")
def asterisk_root() -> Path:
    root = default_root()
    problem = root_problem(root)
    if problem:
        if os.environ.get("EXTBILL_E2E_REQUIRED") == "1":
            pytest.fail(f"EXTBILL_E2E_REQUIRED=1 but {problem}", pytrace=False)
        pytest.skip(f"e2e: {problem}")
    return root


@pytest.fixture(scope="session")
def asterisk_server(asterisk_root: Path):
    """One Asterisk process for the whole e2e session."""
    ast = Asterisk(asterisk_root)
    ast.start()
    try:
        yield ast
    finally:
        ast.stop()


@pytest.fixture
def asterisk(asterisk_server: Asterisk, request: pytest.FixtureRequest):
    """The session's Asterisk, per test: afterwards hangs up any channel a test left
    behind, and on failure prints the tail of Asterisk's log."""
    yield asterisk_server
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n--- Asterisk log ({asterisk_server.log_path}) ---\n{asterisk_server.log_tail(120)}")
    leftover = asterisk_server.cli("core show channels count")
    if not leftover.lstrip().startswith("0 active channel"):
        asterisk_server.cli("channel request hangup all")


@pytest.fixture(scope="module")
def extbill_server(asterisk_server: Asterisk, tmp_path_factory: pytest.TempPathFactory):
    """The real `extbill serve` on a fresh database (created by `extbill db init`), FastAGI
    on a free loopback port, AMI to the session's Asterisk; stopped by PID afterwards."""
    srv = ExtbillServer(asterisk_server, tmp_path_factory.mktemp("extbill-serve"))
    srv.cli("db", "init")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def extbill(extbill_server: ExtbillServer, asterisk: Asterisk, request: pytest.FixtureRequest):
    """The module's server, running, per test; on failure prints its log lines of the test."""
    if not extbill_server.running:
        extbill_server.start()
    mark = len(extbill_server.logs)
    yield extbill_server
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(
            f"\n--- extbill serve log ({extbill_server.log_file}) ---\n"
            f"{extbill_server.log_tail(200, since=mark)}"
        )
