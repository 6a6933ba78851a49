"""`extbill user` and `extbill apikey`, run as a user runs them, on a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

NUMBER = "4001234567"


def extbill(*args: str, db: Path, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "fastagi", *args, "--db", str(db)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "EXTBILL_DB"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"extbill {' '.join(args)}: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("users") / "u.db"
    extbill("db", "init", db=path)
    extbill("number", "add", NUMBER, "--name", "HQ", db=path)
    extbill("ext", "add", NUMBER, "1", "--name", "B", "--dest", "SIP/b", db=path)
    return path


def test_user_add_list_passwd_remove(db: Path) -> None:
    """The password comes from standard input and is stored only as a salted argon2id hash."""
    out = extbill("user", "add", "alice", "--role", "hq", "--number", NUMBER, db=db, stdin="s3cret-pass\n")
    assert out.stdout.strip() == f"user alice added: role hq, sees number {NUMBER}"
    extbill(
        "user",
        "add",
        "bob",
        "--role",
        "branch",
        "--number",
        NUMBER,
        "--ext",
        "1",
        db=db,
        stdin="s3cret-pass\n",
    )
    listing = extbill("user", "list", db=db).stdout
    assert "alice" in listing and "bob" in listing and "branch" in listing
    hashes = [h for (h,) in sqlite3.connect(db).execute("SELECT password_hash FROM users")]
    assert all(h.startswith("$argon2id$") and "s3cret" not in h for h in hashes)
    assert hashes[0] != hashes[1]  # salted: the same password, two hashes
    out = extbill("user", "passwd", "alice", db=db, stdin="another-pass\n")
    assert out.stdout.strip() == "password of alice changed; 0 session(s) signed out"
    extbill("user", "remove", "bob", db=db)
    assert "bob" not in extbill("user", "list", db=db).stdout


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["--role", "hq", "--number", NUMBER], "short\n", "password must be 8 to 256 characters"),
        (["--role", "hq"], "long-enough\n", "a hq user needs --number"),
        (["--role", "branch", "--number", NUMBER], "long-enough\n", "a branch user needs --ext"),
        (
            ["--role", "branch", "--number", NUMBER, "--ext", "7"],
            "long-enough\n",
            f"number {NUMBER} has no extension 7",
        ),
        (["--role", "operator", "--number", NUMBER], "long-enough\n", "an operator sees every number"),
        (["--role", "hq", "--number", "4009999999"], "long-enough\n", "unknown number 4009999999"),
    ],
)
def test_user_add_refusals(db: Path, args: list[str], stdin: str, message: str) -> None:
    """A refused user add exits 2 with one line and adds nobody."""
    before = extbill("user", "list", db=db).stdout
    proc = extbill("user", "add", "carol", *args, db=db, stdin=stdin, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("extbill: error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert extbill("user", "list", db=db).stdout == before


def test_apikey_token_printed_once_and_stored_hashed(db: Path) -> None:
    out = extbill("apikey", "add", "payments", "--number", NUMBER, db=db)
    token = out.stdout.strip()
    assert token.startswith("ebk_") and len(token) > 40
    stored = (
        sqlite3.connect(db).execute("SELECT token_hash FROM api_keys WHERE name='payments'").fetchone()[0]
    )
    assert token not in stored and len(stored) == 64
    listing = extbill("apikey", "list", db=db).stdout
    assert "payments" in listing and token not in listing and token[:10] in listing
    assert extbill("apikey", "revoke", "payments", db=db).stdout.strip() == "API key payments revoked"
    again = extbill("apikey", "revoke", "payments", db=db).stdout.strip()
    assert again == "API key payments was already revoked; nothing changed"
    dup = extbill("apikey", "add", "payments", "--number", NUMBER, db=db, check=False)
    assert dup.returncode == 2 and "API key payments already exists" in dup.stderr
