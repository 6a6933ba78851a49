"""The billing id: one rule for every place that reads one (FastAGI, AMI, the dialplan).

A call's billing id is its IVR channel's Asterisk uniqueid: "1733059200.123", or with
asterisk.conf's systemname set, "host-1733059200.123"; a channel id an AMI/ARI client
chose (a UUID) fits too. The dialplan checks the same rule before it Dials
(dialplan/extensions.conf: REGEX("^[A-Za-z0-9_.:-]{1,64}$")): no space, comma, quote or
control character can reach an AGI argument, a log line or SQL text.
"""

from __future__ import annotations

import re

BILLING_ID_CHARS_MAX = 64  # as the dialplan's check
_BILLING_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % BILLING_ID_CHARS_MAX)


def is_billing_id(text: str) -> bool:
    return _BILLING_ID_RE.fullmatch(text) is not None


_SYSTEM_RE = re.compile(r"(.+)-[0-9]+\.[0-9]+")


def system_of(billing_id: str) -> str:
    """The Asterisk a call lives on: its uniqueid's systemname prefix (asterisk.conf), "" for none.

    Several Asterisk servers sharing one database each set their own systemname: their call
    ids then never collide, and each serve reconciles only its own Asterisk's calls."""
    m = _SYSTEM_RE.fullmatch(billing_id)
    return m.group(1) if m else ""
