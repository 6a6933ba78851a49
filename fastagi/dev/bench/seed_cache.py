"""The benchmark's seeded database, cached between runs while the code that shapes it is unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from fastagi.dev.bench.seed import DataSet, seed_file

SEED_CACHE_FILES_MAX = 4
# What shapes the seeded rows: a change to any of these seeds afresh.
SEED_SOURCES = (
    "dev/bench/seed.py",
    "schema.sql",
    "../schema.sql",
    "store/tx_admin.py",
    "store/tx_ledger.py",
    "store/sqlite.py",
    "core/numbers.py",
    "core/rating.py",
    "core/ledger.py",
    "core/money.py",
    "core/calls.py",
)


def seed_key(ds: DataSet) -> str:
    """Changes whenever the data set or the code that shapes the seeded rows changes."""
    root = Path(__file__).resolve().parent.parent.parent
    h = hashlib.sha256(f"{ds.numbers}x{ds.extensions}".encode())
    for rel in SEED_SOURCES:
        path = root / rel
        h.update(rel.encode())
        h.update(path.read_bytes() if path.exists() else b"-")
    return h.hexdigest()[:20]


def seed(path: str, ds: DataSet, use_cache: bool) -> bool:
    """Seed `path`; with the cache, copy a database seeded earlier with the same code. True if copied."""
    if not use_cache:
        seed_file(path, ds)
        return False
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "extbill-bench"
    cached = cache / f"seed-{seed_key(ds)}.db"
    if cached.exists():
        shutil.copyfile(cached, path)
        return True
    seed_file(path, ds)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # older code or other sizes: keep the newest few only
        older = sorted(cache.glob("seed-*.db"), key=lambda f: f.stat().st_mtime, reverse=True)
        for stale in older[SEED_CACHE_FILES_MAX - 1 :]:
            stale.unlink(missing_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, cached)
    except OSError:
        pass  # no cache this time; the run goes on
    return False
