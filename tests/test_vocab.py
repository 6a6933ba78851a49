"""The shared vocabularies and the one billing id rule (core/vocab.py, core/ids.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastagi.core.ids import is_billing_id
from fastagi.core.vocab import CallState, SettledBy, UnsettledPolicy

DIALPLAN = Path(__file__).resolve().parent.parent / "dialplan" / "extensions.conf"


def test_vocabularies_keep_the_words_the_database_and_logs_use() -> None:
    assert [s.value for s in CallState] == ["reserved", "rated", "unanswered", "unrated"]
    assert [s.value for s in SettledBy] == ["ami", "hangup", "reconcile", "sweeper", "setup"]
    assert [p.value for p in UnsettledPolicy] == ["mark", "charge"]
    assert CallState.RATED == "rated" and f"{SettledBy.AMI}" == "ami"


@pytest.mark.parametrize(
    "uid",
    [
        "1733059200.123",
        "host-1733059200.123",
        "pbx_01.example-1733059200.7",
        "4f1c2d3e-0b1a-4c5d-9e8f-123456789abc",
    ],
)
def test_every_asterisk_uniqueid_is_a_billing_id(uid: str) -> None:
    assert is_billing_id(uid)


@pytest.mark.parametrize(
    "text", ["", "has space", "1'; DROP TABLE calls; --", "a,b", "1733059200.1\n", "x" * 65, "１733059200.1"]
)
def test_anything_else_is_not(text: str) -> None:
    assert not is_billing_id(text)


def test_the_dialplan_checks_the_same_rule_before_it_dials() -> None:
    """The dialplan's REGEX and core/ids.py agree: an id one accepts, the other does too."""
    m = re.search(r'REGEX\("\^(\[[^"]+\]\{1,\d+\})\$" \$\{EXTBILL_ID\}\)', DIALPLAN.read_text())
    assert m is not None
    dialplan = re.compile(m.group(1))
    for text in ["1733059200.123", "host-1733059200.123", "a:b", "has space", "x" * 64, "x" * 65, "a,b"]:
        assert (dialplan.fullmatch(text) is not None) == is_billing_id(text), text
