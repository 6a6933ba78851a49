"""`extbill bench`: a short real run, and the pieces it trusts (fake AMI peer, ledger check).

No timing thresholds here: the figures depend on the machine; the run must only be
complete, consistent and positive.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fastagi.core.ami import CallEnd, Correlator
from fastagi.dev.bench.ami_peer import CallChannels
from fastagi.dev.bench.check import check_ledger
from fastagi.dev.bench.mix import CallMix
from fastagi.dev.bench.report import REQUIRED_KEYS
from fastagi.dev.bench.seed import DataSet, seed_file
from fastagi.store import tariff_snapshots, tx_calls
from fastagi.store.sqlite import _configure, _in_read, _in_transaction


def _messages(data: bytes) -> list[dict[str, str]]:
    """Split the fake AMI's bytes into events the way the AMI client does (header: value lines)."""
    events = []
    for block in data.decode().split("\r\n\r\n"):
        if block:
            events.append(dict(line.split(": ", 1) for line in block.split("\r\n")))
    return events


def test_short_run_reports_every_figure_and_a_consistent_ledger(tmp_path: Path) -> None:
    """A 2-second run against the real serve writes every key; the ledger balances; each call settled once."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastagi.dev.bench.cli",
            "--seconds",
            "2",
            "--concurrency",
            "20",
            "--numbers",
            "20",
            "--in-flight",
            "50",
            "--ppc-seconds",
            "1",
            "--ppc-calls-max",
            "4",
            "--raw-seconds",
            "0.5",
            "--paced-seconds",
            "1",
            "--no-seed-cache",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    for key in REQUIRED_KEYS:
        assert key in doc, key
    assert doc["ledger_consistent"] is True
    assert doc["settled_exactly_once"] is True
    assert doc["billed_as_simulated"] is True
    for key in REQUIRED_KEYS:
        if key not in ("ledger_consistent", "settled_exactly_once"):
            assert isinstance(doc[key], (int, float)) and doc[key] > 0, (key, doc[key])
    assert doc["settings"]["seconds"] == 2 and doc["settings"]["concurrency"] == 20
    details = doc["details"]
    assert details["errors"] == []
    assert details["counts"]["granted"] == details["counts"]["settled"] > 0
    assert details["counts"]["prompted"] > 0  # the arrears calls were refused
    assert details["talk_time_matches"] and details["revenue_matches_costs"]
    # the paced window counts its 1 s of arrivals, not the uncounted warm-up before it
    assert abs(details["paced_setups"] - doc["paced_rate_per_s"] * 1) <= 2, details["paced_setups"]
    assert "setups_per_s" in proc.stdout  # the table
    # serve ran as it runs in production (info logs, its own sweeper), and the table says so
    assert doc["settings"]["serve_log_level"] == "info" and doc["settings"]["serve_sweep_interval_s"] == 30
    assert "log level info, the sweeper every 30 s (serve's defaults)" in proc.stdout


def test_fake_ami_events_give_the_correlator_the_simulated_talk_time() -> None:
    """Answer, bridge and hangup events of the fake peer end the call with the talk time we simulated."""
    chans = CallChannels("1732650000.7", 7)
    answer_ms, end_ms = 1_732_650_012_345, 1_732_650_074_400
    c = Correlator()
    facts = []
    for ev in _messages(
        chans.answered_events(answer_ms) + chans.ended_events(end_ms) + chans.caller_hangup(end_ms + 5)
    ):
        facts += c.feed(ev)
    ends = [f for f in facts if isinstance(f, CallEnd)]
    assert len(ends) == 1
    assert ends[0].billing_id == "1732650000.7"
    assert ends[0].talk_ms == end_ms - answer_ms
    assert ends[0].dial_status == "ANSWER"


def test_fake_ami_unanswered_call_ends_unanswered() -> None:
    """A ring-out is a DialEnd NOANSWER and a Hangup: the correlator ends it with no answer."""
    chans = CallChannels("1732650000.8", 8)
    c = Correlator()
    facts = []
    for ev in _messages(
        chans.unanswered_events(1_732_650_020_000, "NOANSWER") + chans.caller_hangup(1_732_650_020_005)
    ):
        facts += c.feed(ev)
    ends = [f for f in facts if isinstance(f, CallEnd)]
    assert len(ends) == 1 and ends[0].answered_us is None and ends[0].dial_status == "NOANSWER"


def test_ledger_check_fails_on_a_reservation_left_open(tmp_path: Path) -> None:
    """A granted call nobody settled makes both checks false; settling it makes them true."""
    db = str(tmp_path / "b.db")
    ds = DataSet(numbers=2, extensions=4)
    seed_file(db, ds)
    mix = CallMix(ds, seed=3)
    conn = sqlite3.connect(db, isolation_level=None)
    _configure(conn)
    call = next(c for c in iter(mix.next, None) if c.kind == "ext")
    _in_read(conn, tx_calls.lookup, (call.number,))
    d = _in_transaction(
        conn, tx_calls.route, (call.billing_id, call.number, call.digits, 1, call.caller, None, None)
    )
    assert d.action == "dial"
    expect = {"granted": 1, "answered": 1, "unanswered": 0, "talk_s_total": 0}
    open_run = check_ledger(db, expect)
    assert open_run["ledger_consistent"] is False
    assert open_run["settled_exactly_once"] is False

    from fastagi.core.records import CallFacts  # noqa: PLC0415

    _in_transaction(
        conn,
        tx_calls.settle,
        (
            CallFacts(
                billing_id=call.billing_id,
                answered=True,
                talk_ms=0,
                answer_at="2026-11-26T00:00:00.000Z",
                end_at="2026-11-26T00:00:00.000Z",
                disposition="ANSWER",
                cause="16",
                settled_by="hangup",
            ),
        ),
    )
    conn.close()
    closed = check_ledger(db, expect)
    assert closed["ledger_consistent"] is True
    assert closed["settled_exactly_once"] is True


def test_group_commit_keeps_each_operation_atomic_and_durable(tmp_path: Path, monkeypatch) -> None:
    """Operations queued together commit together; a failing one rolls back alone; a read writes nothing."""
    import asyncio  # noqa: PLC0415

    from fastagi.store import sqlite as sqlite_store  # noqa: PLC0415
    from fastagi.store import tx_admin  # noqa: PLC0415
    from fastagi.store.sqlite import SqliteStore  # noqa: PLC0415

    db = str(tmp_path / "g.db")
    ds = DataSet(numbers=2, extensions=4)
    seed_file(db, ds)
    sizes: list[int] = []
    real = sqlite_store._run_batch

    def recording(conn, ops, *rest):  # type: ignore[no-untyped-def]
        sizes.append(len(ops))
        return real(conn, ops, *rest)

    monkeypatch.setattr(sqlite_store, "_run_batch", recording)

    class Boom(Exception):
        pass

    def write_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO accounts (kind) VALUES ('ext')")
        raise Boom("refused")

    def read_that_writes(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO accounts (kind) VALUES ('ext')")
        return 7

    async def main() -> list[object]:
        store = await SqliteStore.open(db)
        try:
            ops = [store.run(tx_admin.recharge, ds.number(0), None, 1000, f"g{i}") for i in range(20)]
            ops.insert(5, store.run(write_then_fail))
            ops.insert(9, store.read(read_that_writes))
            return await asyncio.gather(*ops, return_exceptions=True)
        finally:
            await store.close()

    accounts_before = sqlite3.connect(db).execute("SELECT count(*) FROM accounts").fetchone()[0]
    results = asyncio.run(main())
    assert max(sizes) > 1  # they were batched
    assert isinstance(results[5], Boom) and results[9] == 7
    assert all(getattr(r, "created", False) for i, r in enumerate(results) if i not in (5, 9))
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == accounts_before
    assert conn.execute("SELECT count(*) FROM transfers WHERE ref LIKE 'g%'").fetchone()[0] == 20
    conn.close()


def test_stored_tariff_snapshot_is_unchanged_by_the_fast_path() -> None:
    """The tariff JSON stored with a call is byte for byte what json.dumps(asdict(tariff)) wrote."""
    import json  # noqa: PLC0415
    from dataclasses import asdict  # noqa: PLC0415

    from fastagi.core.rating import Tariff  # noqa: PLC0415
    from fastagi.dev.bench.seed import PLANS  # noqa: PLC0415

    tariffs = [t for _, t, _ in PLANS] + [
        Tariff(per_minute=0, initial_s=1, increment_s=1, connect_fee=0, grace_s=0, max_call_s=1)
    ]
    for t in tariffs:
        text = tariff_snapshots.tariff_json(t)
        assert text == json.dumps(asdict(t))
        assert tariff_snapshots.tariff_from_json(text) == t


# -- the load generator's fast paths: the same bytes and values as the plain versions ---------


def test_fake_ami_event_templates_write_what_the_field_lists_say() -> None:
    """Every event the templates write is, byte for byte, the reference field list's message."""
    import random  # noqa: PLC0415

    r = random.Random(11)
    for _ in range(500):
        seq = r.choice([1, 7, 0xFFFFFFFF, r.randrange(1, 10**9)])
        chans = CallChannels(f"{r.randrange(10**9, 2 * 10**9)}.{r.randrange(1, 10**7)}", seq)
        ms = r.choice([0, 999, 1000, 1_732_650_012_001, r.randrange(10**12, 2 * 10**12)])
        status = r.choice(["ANSWER", "BUSY", "NOANSWER", "CANCEL"])
        assert chans.answered_events(ms) == (
            chans.reference_dial_end(ms, "ANSWER")
            + chans.reference_bridge("BridgeEnter", ms + 5, False)
            + chans.reference_bridge("BridgeEnter", ms + 6, True)
        )
        assert chans.ended_events(ms) == (
            chans.reference_bridge("BridgeLeave", ms, True)
            + chans.reference_bridge("BridgeLeave", ms + 1, False)
            + chans.reference_hangup(ms + 2, False)
        )
        assert chans.unanswered_events(ms, status) == (
            chans.reference_dial_end(ms, status) + chans.reference_hangup(ms + 1, False)
        )
        assert chans.caller_hangup(ms) == chans.reference_hangup(ms, True)
        assert chans.dial_end(ms, status) == chans.reference_dial_end(ms, status)
        for caller in (True, False):
            assert chans.bridge("BridgeEnter", ms, caller) == chans.reference_bridge(
                "BridgeEnter", ms, caller
            )
            assert chans.hangup(ms, caller) == chans.reference_hangup(ms, caller)
    chans = CallChannels("1732650000.7", 7)
    (ev,) = _messages(chans.caller_hangup(1_732_650_012_345))
    assert ev == {
        "Event": "Hangup",
        "Privilege": "call,all",
        "Timestamp": "1732650012.345000",
        "Channel": "PJSIP/trunk-ct-00000007",
        "ChannelState": "6",
        "ChannelStateDesc": "Up",
        "CallerIDNum": "13800138000",
        "Context": "extbill-ivr",
        "Exten": "s",
        "Priority": "1",
        "Uniqueid": "1732650000.7",
        "Linkedid": "1732650000.7",
        "ChanVariable": "EXTBILL_ID=1732650000.7",
        "Cause": "16",
        "Cause-txt": "Normal Clearing",
    }


def test_header_template_is_header_block() -> None:
    """The per-call header bytes are header_block's, whatever the values (even % and {})."""
    from fastagi.dev.bench.agi_peer import HeaderTemplate, header_block  # noqa: PLC0415

    for port in (4573, 40123):
        tpl = HeaderTemplate(port)
        for script, args in [
            ("lookup", ["4001000001"]),
            ("route", ["4001000001", "", "1"]),
            ("hangup", ["1732650000.5", "ANSWER", "16", "", "1732650072.345"]),
            ("x%s{y}", ["%d", "{0}"]),
            ("lookup", []),
        ]:
            for uid, caller, ext in [("1732650000.5", "13800131234", "4001000001"), ("é%s", "{x}", "")]:
                assert tpl.block(script, args, uniqueid=uid, callerid=caller, extension=ext) == header_block(
                    script, args, uniqueid=uid, callerid=caller, extension=ext, port=port
                )


def test_lean_agi_reads_variables_as_the_full_parser_does() -> None:
    """EXEC MSet / SET VARIABLE lines, however split: the values parse_command_args gives; one reply each."""
    import asyncio  # noqa: PLC0415

    from fastagi.core.agi import mset_command, parse_command_args, set_variable_command  # noqa: PLC0415
    from fastagi.dev.bench.agi_peer import _LeanAgi  # noqa: PLC0415

    def expected(lines: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for text in lines:
            parts = parse_command_args(text)
            if parts[:2] == ["SET", "VARIABLE"]:
                out[parts[2]] = parts[3] if len(parts) > 3 else ""
            elif parts[:2] == ["EXEC", "MSet"]:
                for pair in (parts[2] if len(parts) > 2 else "").split(","):
                    name, _, value = pair.partition("=")
                    out[name] = value
        return out

    class Transport:
        def __init__(self) -> None:
            self.sent = b""

        def write(self, data: bytes) -> None:
            self.sent += data

        def abort(self) -> None:
            pass

    pairs = [
        ("EXTBILL_ID", "1732650000.5"),
        ("EXTBILL_DEST", "Local/400100012312@bench-branches"),
        ("EXTBILL_LIMIT_MS", "7200000"),
        ("EXTBILL_RESULT", "dial"),
    ]
    cases = [
        [mset_command(pairs)],
        [mset_command(pairs) + "\r"],
        ['EXEC MSet "A=1,B=x\\"y,C"'],  # quotes and backslashes: the full parser
        ['EXEC MSet "A=1" "B=2"'],
        ["EXEC MSet A=1,B=2=3,,D"],  # unquoted
        ['EXEC MSet  "A=1"'],
        ['EXEC MSet ""'],
        [
            set_variable_command("EXTBILL_PROMPT", 'say "hi" \\ there'),
            set_variable_command("EXTBILL_RESULT", "prompt"),
        ],
        ["NOOP", mset_command([("X", "1")])],
    ]
    loop = asyncio.new_event_loop()
    try:
        for lines in cases:
            data = "".join(line + "\n" for line in lines).encode()
            for cut in range(len(data) + 1):
                proto = _LeanAgi(b"", loop.create_future())
                proto.transport = Transport()  # type: ignore[assignment]
                for piece in (data[:cut], data[cut:]):
                    if piece:
                        proto.data_received(piece)
                assert proto.variables == expected([line.rstrip("\r") for line in lines]), (lines, cut)
                assert proto.commands == len(lines)
                assert proto.transport.sent == b"200 result=1\n" * len(lines)  # type: ignore[union-attr]
    finally:
        loop.close()


def test_call_mix_draws_the_calls_randrange_and_choice_would() -> None:
    """The cheaper draws give, for a seed, the very calls the randrange/choice version gave."""
    import random  # noqa: PLC0415

    from fastagi.dev.bench import mix as m  # noqa: PLC0415

    for seed, ds in [(1, DataSet(1000, 20)), (3, DataSet(2, 4)), (7, DataSet(100_000, 90))]:
        calls = CallMix(ds, seed=seed, epoch=1_732_650_000)
        r = random.Random(seed)
        funded, arrears = ds.funded_keys(), ds.arrears_keys()
        for seq in range(1, 5001):
            number = ds.number(r.randrange(ds.numbers))
            pick = r.random()
            if pick < m.EXT_SHARE:
                kind, digits = "ext", r.choice(funded)
            elif pick < m.EXT_SHARE + m.NO_KEY_SHARE:
                kind, digits = "no-key", ""
            else:
                kind, digits = "arrears", r.choice(arrears)
            caller = r.choice(m.CALLER_PREFIXES) + f"{r.randrange(10_000):04d}"
            answered = r.random() < m.ANSWERED_SHARE
            ring_ms = r.randrange(m.RING_MS_MIN, m.RING_MS_MAX)
            talk_ms = r.randrange(m.TALK_MS_MIN, m.TALK_MS_MAX) if answered else 0
            assert calls.next() == m.Call(
                f"1732650000.{seq}", number, digits, caller, kind, answered, ring_ms, talk_ms
            )


def test_agi_request_times_out_answering_and_connecting() -> None:
    """A server that never answers, or a connect that never completes: TimeoutError, nothing left armed."""
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from fastagi.dev.bench import agi_peer  # noqa: PLC0415

    async def main() -> None:
        loop = asyncio.get_running_loop()
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        t0 = time.monotonic()
        try:
            await agi_peer.agi_request("127.0.0.1", port, b"agi_network: yes\n\n", timeout_s=0.3)
            raise AssertionError("no timeout")
        except TimeoutError:
            pass
        assert 0.3 <= time.monotonic() - t0 < 2.0
        silent.close()

        async def never(*args: object, **kwargs: object) -> None:
            await asyncio.sleep(3600)

        loop.create_connection = never  # type: ignore[method-assign]
        try:
            await agi_peer.agi_request("127.0.0.1", port, b"", timeout_s=0.2)
            raise AssertionError("no timeout")
        except TimeoutError:
            pass
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the timeout's cancel is not left pending
        assert agi_peer._Deadlines._by_loop == {}

    asyncio.run(main())


def test_asterisk_reference_without_an_asterisk_root_fails_before_the_run(tmp_path: Path) -> None:
    env = {**os.environ, "EXTBILL_ASTERISK_ROOT": str(tmp_path / "no-root")}
    proc = subprocess.run(
        [sys.executable, "-m", "fastagi.dev.bench.cli", "--asterisk", "--no-seed-cache"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    assert "--asterisk: cannot run the real-Asterisk reference" in proc.stderr
    assert "seeded" not in proc.stderr and "setups_per_s" not in proc.stdout  # nothing ran


def test_process_per_call_reference_fails_the_run_when_a_call_crashes(tmp_path: Path) -> None:
    """A reference process that dies (here: its database is not one) fails the reference
    with the reason and the process's own stderr, instead of counting as a setup."""
    import asyncio  # noqa: PLC0415

    import pytest  # noqa: PLC0415

    from fastagi.dev.bench.ppc import process_per_call  # noqa: PLC0415
    from fastagi.dev.bench.procs import BenchError  # noqa: PLC0415

    bad = tmp_path / "bad.db"
    bad.write_text("not a database\n" * 100)
    with pytest.raises(BenchError) as err:
        asyncio.run(process_per_call(str(bad), CallMix(DataSet(2, 4), seed=5), 5.0, 2, 4))
    text = str(err.value)
    assert "process-per-call reference: call 1732650000." in text
    assert "exited 1" in text and "its stderr:" in text and "DatabaseError" in text


def test_process_per_call_reference_fails_the_run_on_a_wrong_answer(tmp_path: Path) -> None:
    """A call the reference ends other than the server would (here: numbers it does not
    have, so it prompts where the mix expects a Dial) fails the reference."""
    import asyncio  # noqa: PLC0415

    import pytest  # noqa: PLC0415

    from fastagi.dev.bench.ppc import process_per_call  # noqa: PLC0415
    from fastagi.dev.bench.procs import BenchError  # noqa: PLC0415

    db = str(tmp_path / "one.db")
    seed_file(db, DataSet(numbers=1, extensions=4))
    # the mix draws from 50 numbers: nearly every call is to a number this file does not have
    mix = CallMix(DataSet(numbers=50, extensions=4), seed=5)
    with pytest.raises(BenchError, match=r"with EXTBILL_RESULT prompt, expected dial"):
        asyncio.run(process_per_call(db, mix, 10.0, 1, 10))


def test_raw_reference_group_commits_as_serve_does_and_leaves_a_consistent_ledger(
    tmp_path: Path, monkeypatch
) -> None:
    """The raw ceiling does serve's work the way serve's store commits it: BATCH_OPS_MAX
    operations per COMMIT, not one COMMIT per transaction; every call it granted is settled."""
    from fastagi.core.ledger_check import ledger_discrepancies  # noqa: PLC0415
    from fastagi.dev.bench import raw  # noqa: PLC0415
    from fastagi.store.ledger_check import ledger_facts  # noqa: PLC0415
    from fastagi.store.sqlite import BATCH_OPS_MAX  # noqa: PLC0415

    db = str(tmp_path / "raw.db")
    ds = DataSet(numbers=4, extensions=6)
    seed_file(db, ds)
    commits: list[str] = []
    real_connect = sqlite3.connect

    def observed(*args, **kwargs):  # the real connection, its statements counted
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
        return conn

    monkeypatch.setattr(raw.sqlite3, "connect", observed)
    r = raw.raw_setups_per_s(db, CallMix(ds, seed=9), 0.3, concurrency=100)
    monkeypatch.undo()
    assert r["raw_setups"] >= BATCH_OPS_MAX and r["raw_dialed"] > 0
    # per batch of 64 calls: one COMMIT of routes, one of answers, one of settlements
    assert len(commits) <= 3 * (r["raw_setups"] // BATCH_OPS_MAX + 1), (len(commits), r["raw_setups"])
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        assert ledger_discrepancies(_in_read(conn, ledger_facts, ()), quiescent=True) == []
    finally:
        conn.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_renewal_run_renews_live_calls_and_keeps_the_books(tmp_path: Path, workers: int) -> None:
    """The benchmark's renewal run: a real serve on one-second chunks renews every held call
    about once a second through the fake AMI peer's Setvar, and afterwards every chunk is
    resolved once and each call costs exactly its talk time. With two processes, calls set up
    by either are renewed by the one holding AMI."""
    from fastagi.dev.bench import renewals

    figures = renewals.run(tmp_path, calls=20, seconds=3.0, workers=workers)
    assert figures["renew_books_ok"] is True
    assert figures["renewals"] >= 20  # each of the 20 calls renewed at least once in 3 s
    assert figures["renew_chunks"] >= 20 + figures["renewals"]  # first chunks + one per renewal
    assert figures["serve_cpu_ms_per_renewal"] > 0
    # every call was renewed in time: none was capped at a grant it outlived (the fake peer
    # does not cut calls), give or take a late renewal on a busy machine
    assert figures["renew_talk_capped_s"] <= 2, figures
