"""`extbill bench`: a short real run, and the pieces it trusts (fake AMI peer, ledger check).

No timing thresholds here: the figures depend on the machine; the run must only be
complete, consistent and positive.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from fastagi.ami import CallEnd, Correlator
from fastagi.bench.ami_peer import CallChannels
from fastagi.bench.check import check_ledger
from fastagi.bench.cli import REQUIRED_KEYS
from fastagi.bench.mix import CallMix
from fastagi.bench.seed import DataSet, seed_file
from fastagi.store import tx_calls
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
        [sys.executable, "-m", "fastagi.bench.cli", "--seconds", "2", "--concurrency", "20",
         "--numbers", "20", "--in-flight", "50", "--ppc-seconds", "1", "--ppc-calls-max", "4",
         "--raw-seconds", "0.5", "--paced-seconds", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    for key in REQUIRED_KEYS:
        assert key in doc, key
    assert doc["ledger_consistent"] is True
    assert doc["settled_exactly_once"] is True
    for key in REQUIRED_KEYS:
        if key not in ("ledger_consistent", "settled_exactly_once"):
            assert isinstance(doc[key], (int, float)) and doc[key] > 0, (key, doc[key])
    assert doc["settings"]["seconds"] == 2 and doc["settings"]["concurrency"] == 20
    details = doc["details"]
    assert details["errors"] == []
    assert details["counts"]["granted"] == details["counts"]["settled"] > 0
    assert details["counts"]["prompted"] > 0            # the arrears calls were refused
    assert details["talk_time_matches"] and details["revenue_matches_costs"]
    assert "setups_per_s" in proc.stdout                 # the table


def test_fake_ami_events_give_the_correlator_the_simulated_talk_time() -> None:
    """Answer, bridge and hangup events of the fake peer end the call with the talk time we simulated."""
    chans = CallChannels("1732650000.7", 7)
    answer_ms, end_ms = 1_732_650_012_345, 1_732_650_074_400
    c = Correlator()
    facts = []
    for ev in _messages(chans.answered_events(answer_ms) + chans.ended_events(end_ms)):
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
    for ev in _messages(chans.unanswered_events(1_732_650_020_000, "NOANSWER")):
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
    d = _in_transaction(conn, tx_calls.route, (call.billing_id, call.number, call.digits, 1,
                                               call.caller, None, None))
    assert d.action == "dial"
    expect = {"granted": 1, "answered": 1, "unanswered": 0, "talk_s_total": 0}
    open_run = check_ledger(db, expect)
    assert open_run["ledger_consistent"] is False
    assert open_run["settled_exactly_once"] is False

    from fastagi.store.base import CallFacts  # noqa: PLC0415
    _in_transaction(conn, tx_calls.settle, (CallFacts(
        billing_id=call.billing_id, answered=True, talk_ms=0, answer_at="2026-11-26T00:00:00.000Z",
        end_at="2026-11-26T00:00:00.000Z", disposition="ANSWER", cause="16", settled_by="hangup"),))
    conn.close()
    closed = check_ledger(db, expect)
    assert closed["ledger_consistent"] is True
    assert closed["settled_exactly_once"] is True
