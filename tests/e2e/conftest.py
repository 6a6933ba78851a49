"""Fixtures for the end-to-end tests against a real Asterisk 22 (tests/e2e/asterisk.py).

The Asterisk root is built by .ci/asterisk-root (EXTBILL_ASTERISK_ROOT, default
/var/cache/extbill/asterisk-root). Without it (or without root privileges for chroot)
the e2e tests are skipped, unless EXTBILL_E2E_REQUIRED=1, which turns that into a failure.
EXTBILL_E2E_KEEP=1 keeps the Asterisk config/log dir (ROOT/opt/extbill-e2e-*) afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .asterisk import Asterisk, default_root, root_problem

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
        print(f"\n--- Asterisk log ({asterisk_server.log_path}) ---\n"
              f"{asterisk_server.log_tail(120)}")
    leftover = asterisk_server.cli("core show channels count")
    if not leftover.lstrip().startswith("0 active channel"):
        asterisk_server.cli("channel request hangup all")
