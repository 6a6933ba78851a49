"""The closed vocabularies of a call, one place each (docs/rules.md, glossary).

StrEnum members equal their old strings ("rated" == CallState.RATED), so the database,
the log lines and the CLI's output read as before. Decision's action and charged are
Literals: calls.py builds decisions from plain strings, and a Literal types those as is.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

# What the dialplan does next (EXTBILL_RESULT): collect a key, play a prompt and hang
# up, ask for the key again, or Dial with a grant.
Action = Literal["collect", "prompt", "retry", "dial"]

# Which balance a granted call is charged to: the 400 number's main account, or the
# extension's own.
Charged = Literal["main", "ext"]


class CallState(StrEnum):
    """A call record's state: reserved until exactly one settlement path closes it."""

    RESERVED = "reserved"  # granted, money held, not yet settled
    RATED = "rated"  # answered and charged (or charged the whole grant by the 'charge' policy)
    UNANSWERED = "unanswered"  # never answered: the hold released, nothing charged
    UNRATED = "unrated"  # nobody reported its end: the hold released ('mark' policy)


class SettledBy(StrEnum):
    """The settlement path that closed a call first."""

    AMI = "ami"  # the AMI event stream
    HANGUP = "hangup"  # the dialplan's hangup handler (a FastAGI request)
    RECONCILE = "reconcile"  # on AMI (re)connect: the channel is gone
    SWEEPER = "sweeper"  # older than ring time + grant + grace
    SETUP = "setup"  # the grant never reached Asterisk: call setup released it (not dialled)


class UnsettledPolicy(StrEnum):
    """What the sweeper does with a reservation nobody settled."""

    MARK = "mark"  # release the hold, mark the call unrated
    CHARGE = "charge"  # charge the whole grant
