"""The benchmark's call mix: which number, key, caller and outcome each simulated call has.

Deterministic for a seed, so the server run and both references see the same kinds
of calls in the same proportions. Talk time exists only as timestamps: nothing sleeps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fastagi.dev.bench.seed import DataSet

# Shares of the mix (they add up to 1).
EXT_SHARE = 0.80  # a funded extension: Dial, charged to the extension
NO_KEY_SHARE = 0.10  # no key pressed: Dial to the number's default destination, charged to main
ARREARS_SHARE = 0.10  # an extension that cannot pay its first block: a prompt, nothing reserved
ANSWERED_SHARE = 0.85  # of the granted calls; the rest ring out (NOANSWER / BUSY): void
TALK_MS_MIN, TALK_MS_MAX = 3_000, 300_000
RING_MS_MIN, RING_MS_MAX = 1_000, 15_000

# Caller numbers with the prefixes the plans price differently (and some none of them do).
CALLER_PREFIXES = ("1380013", "1390139", "1860186", "0105555", "0215555", "0085261", "0014155")


@dataclass(slots=True)
class Call:
    billing_id: str  # the IVR channel's uniqueid: epoch.sequence, as Asterisk writes it
    number: str
    digits: str  # "" = no key pressed
    caller: str
    kind: str  # ext | no-key | arrears
    answered: bool  # for granted calls: did the callee answer
    ring_ms: int
    talk_ms: int  # 0 when unanswered

    @property
    def expect(self) -> str:
        return "prompt" if self.kind == "arrears" else "dial"


class CallMix:
    def __init__(self, ds: DataSet, seed: int = 1, epoch: int = 1_732_650_000, first_seq: int = 1) -> None:
        self.ds = ds
        self.rng = random.Random(seed)
        self.epoch = epoch
        self.seq = first_seq
        self.funded = ds.funded_keys()
        self.arrears = ds.arrears_keys()

    def next(self) -> Call:
        # r._randbelow(n) is what r.randrange(n) and r.choice() draw with: the same calls as
        # with those, for a seed, at a fraction of the cost per call.
        r = self.rng
        below = r._randbelow  # type: ignore[attr-defined]
        seq, self.seq = self.seq, self.seq + 1
        number = self.ds.number(below(self.ds.numbers))
        pick = r.random()
        if pick < EXT_SHARE:
            kind, digits = "ext", self.funded[below(len(self.funded))]
        elif pick < EXT_SHARE + NO_KEY_SHARE:
            kind, digits = "no-key", ""
        else:
            kind, digits = "arrears", self.arrears[below(len(self.arrears))]
        caller = CALLER_PREFIXES[below(len(CALLER_PREFIXES))] + "%04d" % below(10_000)
        answered = r.random() < ANSWERED_SHARE
        ring_ms = RING_MS_MIN + below(RING_MS_MAX - RING_MS_MIN)
        talk_ms = TALK_MS_MIN + below(TALK_MS_MAX - TALK_MS_MIN) if answered else 0
        return Call(f"{self.epoch}.{seq}", number, digits, caller, kind, answered, ring_ms, talk_ms)
