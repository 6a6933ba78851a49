"""`extbill bench --asterisk`: a real Asterisk 22 sends FastAGI requests to a real serve."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from fastagi.dev.bench.asterisk_ref import asterisk_reference
from fastagi.dev.bench.procs import BenchError
from fastagi.dev.bench.seed import DataSet, seed_file


def _db(tmp_path: Path) -> tuple[str, DataSet]:
    db = str(tmp_path / "bench.db")
    ds = DataSet(numbers=2, extensions=4)
    seed_file(db, ds)
    return db, ds


def test_every_request_asterisk_made_was_answered_and_timed(asterisk_root: Path, tmp_path: Path) -> None:
    db, ds = _db(tmp_path)
    before = sqlite3.connect(db).execute("SELECT count(*) FROM transfers").fetchone()[0]
    got = asyncio.run(
        asterisk_reference(db, str(tmp_path), number=ds.number(0), channels=3, requests=10, serve_workers=1)
    )
    assert got["asterisk_requests"] == 30 and got["asterisk_channels"] == 3
    assert got["asterisk_agi_per_s"] > 0 and 0 < got["asterisk_span_s"] <= got["asterisk_wall_s"] + 1
    assert got["asterisk_cpu_ms_per_agi"] > 0 and got["asterisk_serve_cpu_ms_per_agi"] > 0
    assert got["asterisk_setups_per_s_max"] > 0
    # lookups move no money
    assert sqlite3.connect(db).execute("SELECT count(*) FROM transfers").fetchone()[0] == before


def test_requests_that_are_not_answered_fail_the_reference(asterisk_root: Path, tmp_path: Path) -> None:
    """A 400 number serve does not know is answered with a prompt, not `collect`: no rate is reported."""
    db, _ = _db(tmp_path)
    with pytest.raises(BenchError, match="0 of 20 FastAGI requests were answered"):
        asyncio.run(
            asterisk_reference(
                db, str(tmp_path), number="4009999999", channels=2, requests=10, serve_workers=1
            )
        )
