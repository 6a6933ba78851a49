"""Fixtures shared by the store suites: the same tests on SQLite and on a real PostgreSQL.

`db` is parametrised over both engines: a new database per test, named the way a user names
one (a file path, or a postgresql:// URL). `new_db()` makes another (property tests make one
per example). PostgreSQL is started once per session (tests/pg_server.py); without its
binaries the PostgreSQL cases are skipped, unless EXTBILL_PG_REQUIRED=1 (.ci/test) fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pg_server import PgServer, bindir

ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    found = bindir()
    if found is None:
        if os.environ.get("EXTBILL_PG_REQUIRED") == "1":
            pytest.fail("PostgreSQL's server binaries are missing (pg_config --bindir); run .ci/setup")
        pytest.skip("PostgreSQL's server binaries are missing (pg_config --bindir)")
    server = PgServer(found)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def new_db(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], str]:
    """Makes a new, empty database of this test's engine; returns what --db would name."""
    if engine == "postgresql":
        server: PgServer = request.getfixturevalue("pg_server")
        return server.new_database
    return lambda: str(tmp_path / f"{uuid.uuid4().hex[:12]}.db")


@pytest.fixture
def db(new_db: Callable[[], str]) -> str:
    return new_db()
