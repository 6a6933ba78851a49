"""`extbill sandbox`: see extbill work with no Asterisk of your own.

Brings up the Asterisk 22 root of the end-to-end harness with the project's own dialplan,
runs `extbill serve` (in this process) on a fresh SQLite file with the demo number, places
a few demo calls through real Asterisk channels, and prints balances and call records
before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastagi.dev.harness import BRANCH_CONTEXT, PROJECT, Asterisk, default_root, root_problem
from fastagi.runtime.config import Settings
from fastagi.runtime.log import configure as configure_logging
from fastagi.store import tx_calls
from fastagi.store.demo import DEMO_NUMBER, seed
from fastagi.store.sqlite import SqliteStore

SETTLE_WAIT_S_MAX = 30  # after the last call, how long to wait for its settlement
CALL_WAIT_S_MAX = 60  # one demo call, start to end

SANDBOX_DESTS = {
    "operator": f"Local/talk-1-3@{BRANCH_CONTEXT}",
    "1": f"Local/talk-2-5@{BRANCH_CONTEXT}",
    "2": f"Local/talk-1-5@{BRANCH_CONTEXT}",
    "3": f"Local/talk-1-5@{BRANCH_CONTEXT}",
}

# (what the caller does, DTMF, seconds on the line)
DEMO_CALLS = [
    ("presses 1: Beijing branch, which has money", "1", 14.0),
    ("presses 2: Shanghai branch, in arrears", "2", 10.0),
    ("presses nothing: the operator, charged to the main account", "", 20.0),
]


def say(text: str) -> None:
    print(f"[sandbox] {text}", flush=True)


def show(db: Path, *args: str) -> None:
    """Run a real extbill command, so the output is exactly what HQ would see."""
    print(f"$ extbill {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "fastagi", *args, "--db", str(db)], check=False)


async def _wait_settled(store: SqliteStore) -> int:
    deadline = time.monotonic() + SETTLE_WAIT_S_MAX
    while time.monotonic() < deadline:
        open_calls = await store.read(tx_calls.open_calls)
        if not open_calls:
            return 0
        await asyncio.sleep(0.5)
    return len(await store.read(tx_calls.open_calls))


async def cmd_sandbox(a: argparse.Namespace) -> int:
    configure_logging("console", "warning")
    if getattr(a, "db", None):
        # every command takes --db; the sandbox seeds a throw-away file of its own instead
        print(
            "extbill: error: sandbox makes its own new database (it prints where); --db is not used",
            file=sys.stderr,
        )
        return 2
    root = Path(a.root) if a.root else default_root()
    problem = root_problem(root)
    if problem:
        script = PROJECT / ".ci" / "asterisk-root"
        if not a.build:
            say(f"no Asterisk root: {problem}")
            say("build it with: bash .ci/setup --asterisk   (or run extbill sandbox --build)")
            return 2
        say(f"building the Asterisk 22 root at {root} (about a minute, once) ...")
        subprocess.run(
            ["bash", str(script)],
            check=True,
            env={"EXTBILL_ASTERISK_ROOT": str(root), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    workdir = Path(tempfile.mkdtemp(prefix="extbill-sandbox-"))
    db = workdir / "extbill.db"
    store = await SqliteStore.open(str(db))
    await store.run(seed, SANDBOX_DESTS, 3)
    say(f"database {db} with the demo number {DEMO_NUMBER}")
    show(db, "balance", DEMO_NUMBER)

    from fastagi.service.serve import Service  # noqa: PLC0415

    ast = Asterisk(root, tz=None)
    service = Service(
        Settings(
            db=str(db),
            agi_bind="127.0.0.1:0",
            ami_port=ast.ami_port,
            ami_user=ast.extbill_user[0],
            ami_secret=ast.extbill_user[1],
            demo=False,
            log_format="console",
            log_level="warning",
        )
    )
    try:
        say(f"starting Asterisk ({root}) with the project's dialplan/ and sounds/ ...")
        await asyncio.to_thread(ast.start)
        await service.start()  # after Asterisk, so its AMI client connects at the first try
        assert service.agi is not None
        ast.agi_address = f"127.0.0.1:{service.agi.port}"
        say(f"Asterisk is up (AMI on 127.0.0.1:{ast.ami_port}); extbill serve on {ast.agi_address}")
        async with ast.ami() as ami:
            await ami.set_agi(ast.agi_address)
            calls = []
            for i, (what, dtmf, hold) in enumerate(DEMO_CALLS, 1):
                say(f"call {i}/{len(DEMO_CALLS)}: a caller dials {DEMO_NUMBER} and {what}")
                calls.append(
                    (
                        i,
                        what,
                        await ami.originate(DEMO_NUMBER, dtmf=dtmf, hold=hold, callerid=f"1380013800{i}"),
                    )
                )
            for i, what, call in calls:
                await call.wait_done(timeout=CALL_WAIT_S_MAX)
                heard = ", ".join(p.removeprefix("extbill/") for p in call.prompts()) or "nothing"
                where = ", ".join(call.dial_strings()) if call.bridged() else "not connected"
                say(f"call {i} done: heard {heard}; {where}")
        left = await _wait_settled(store)
        say("every call settled" if not left else f"{left} call(s) not settled yet (see the logs)")
    finally:
        await service.stop()
        await asyncio.to_thread(ast.stop)
        await store.close()
    show(db, "balance", DEMO_NUMBER)
    show(db, "calls", DEMO_NUMBER)
    say(f"done; the database stays at {db} for you to explore (extbill ... --db {db})")
    return 0


def add_parsers(subs: Any, sub: Callable) -> None:
    p = sub(
        subs,
        "sandbox",
        cmd_sandbox,
        "place demo calls through a real Asterisk (the test root) and show balances before and after",
    )
    p.set_defaults(own_store=True)
    p.add_argument(
        "--root",
        help="the Asterisk root (default: $EXTBILL_ASTERISK_ROOT or /var/cache/extbill/asterisk-root)",
    )
    p.add_argument("--build", action="store_true", help="build the Asterisk root first when it is missing")
