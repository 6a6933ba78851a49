"""The call policy: number -> key -> suspension/arrears -> grant. Pure: snapshots in, a decision out.

Every rule that decides what a caller hears (docs/rules.md rules 3-5, 7) lives here, and only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fastagi.core.ledger import Account
from fastagi.core.numbers import digits_to_collect, is_suspended
from fastagi.core.quota import QUOTA_S_DEFAULT, first_grant, warning_before_ms
from fastagi.core.rating import Tariff, seconds_max, tariff_for_caller
from fastagi.core.vocab import Action, Charged

INVALID_TRIES_MAX = 3  # docs/rules.md rule 3: after three wrong keys, the default destination


@dataclass(frozen=True, slots=True)
class PlanView:
    tariff: Tariff
    rates: Mapping[str, int]  # caller prefix -> per-minute price


@dataclass(frozen=True, slots=True)
class NumberView:
    """What call control needs to know of a 400 number, read in one transaction."""

    number_id: int
    number: str
    lang: str
    ivr: bool
    ext_billing: bool
    min_balance: int
    default_dest: str | None
    digit_timeout_s: int
    main: Account
    plan: PlanView | None
    # Length of the number's longest extension key; None when it has none. All the lookup
    # needs of the keys (how many digits to collect), so the store reads one aggregate,
    # not every key. Call setup's route step does not read it (None there): it looks up
    # the one key pressed instead.
    max_key_len: int | None

    @property
    def suspended(self) -> bool:
        return is_suspended(self.main.balance, self.min_balance)


@dataclass(frozen=True, slots=True)
class ExtView:
    extension_id: int
    key: str
    dest: str
    account: Account
    plan: PlanView | None  # the extension's own plan, if it overrides the number's


@dataclass(frozen=True, slots=True)
class Decision:
    """What the dialplan does next; `reason` goes into the decision's log line."""

    action: Action
    reason: str
    lang: str = "zh"
    prompt: str | None = None  # sound name under sounds/<lang>/extbill/
    digit_timeout_s: int = 5
    max_digits: int = 1
    dest: str | None = None
    charged: Charged | None = None
    ext_key: str | None = None
    extension_id: int | None = None
    account_id: int | None = None
    tariff: Tariff | None = None
    granted_s: int = 0
    reserve: int = 0
    final: bool = True  # no renewal will follow: the grant is all the call gets
    supervised: bool = False  # renewed (and warned) mid-call through AMI, not by Dial's L()

    @property
    def limit_ms(self) -> int:
        return self.granted_s * 1000

    @property
    def warning_ms(self) -> int:
        """Dial's own warning: a minute before the end, or halfway through a grant of two
        minutes or less. 0 for a supervised call, whose cut-off moves: Dial's warning
        would fix its end (L(x:y) installs interval hooks), so the supervisor warns it."""
        return 0 if self.supervised else warning_before_ms(self.granted_s)


def _prompt(name: str, reason: str, lang: str) -> Decision:
    return Decision(action="prompt", prompt=name, reason=reason, lang=lang)


def decide_lookup(number: NumberView | None) -> Decision:
    """First request of a call: is the number in service, and how to collect the key."""
    if number is None:
        return _prompt("not-in-service", "unknown-number", "zh")
    if number.suspended:
        return _prompt("number-suspended", "number-suspended", number.lang)
    return Decision(
        action="collect",
        reason="collect",
        lang=number.lang,
        digit_timeout_s=number.digit_timeout_s,
        max_digits=digits_to_collect(number.max_key_len),
    )


def decide_route(
    number: NumberView | None,
    digits: str,
    try_no: int,
    ext: ExtView | None,
    caller: str,
    *,
    quota_s: int = QUOTA_S_DEFAULT,
    renewable: bool = False,
) -> Decision:
    """Second request: the pressed digits decide the destination and the account charged.

    `ext` is the extension whose key equals `digits`, if any. renewable: a supervisor can
    renew the call mid-call, so it is granted one chunk of `quota_s` (docs/rules.md rule 9);
    otherwise everything the account can pay, capped by the plan.
    """
    if number is None:
        return _prompt("not-in-service", "unknown-number", "zh")
    lang = number.lang
    if number.suspended:
        return _prompt("number-suspended", "number-suspended", lang)
    keyed = number.ivr and digits != ""
    if keyed and ext is None:
        if try_no < INVALID_TRIES_MAX:
            return Decision(action="retry", reason="invalid-key", lang=lang)
        keyed = False  # out of tries: treated as no key (docs/rules.md rule 3)
    if not keyed:
        if not number.default_dest:
            return _prompt("service-unavailable", "no-default-destination", lang)
        return _grant(
            number,
            None,
            number.default_dest,
            number.main,
            number.plan,
            caller,
            charged="main",
            reason="no-key" if digits == "" else "invalid-key-fallback",
            quota_s=quota_s,
            renewable=renewable,
        )
    assert ext is not None
    if number.ext_billing:
        return _grant(
            number,
            ext,
            ext.dest,
            ext.account,
            ext.plan or number.plan,
            caller,
            charged="ext",
            reason="extension",
            quota_s=quota_s,
            renewable=renewable,
        )
    return _grant(
        number,
        ext,
        ext.dest,
        number.main,
        number.plan,
        caller,
        charged="main",
        reason="extension-billing-off",
        quota_s=quota_s,
        renewable=renewable,
    )


def _grant(
    number: NumberView,
    ext: ExtView | None,
    dest: str,
    account: Account,
    plan: PlanView | None,
    caller: str,
    *,
    charged: Charged,
    reason: str,
    quota_s: int,
    renewable: bool,
) -> Decision:
    lang = number.lang
    if plan is None:
        return _prompt("service-unavailable", "no-rate-plan", lang)
    tariff = tariff_for_caller(plan.tariff, caller, plan.rates)
    grant = first_grant(account.available, tariff, quota_s, renewable=renewable)
    if grant is None:
        if charged == "ext":
            return _prompt("ext-in-arrears", "extension-in-arrears", lang)
        return _prompt("number-suspended", "main-cannot-pay", lang)
    return Decision(
        action="dial",
        reason=reason,
        lang=lang,
        dest=dest,
        charged=charged,
        ext_key=ext.key if ext else None,
        extension_id=ext.extension_id if ext else None,
        account_id=account.id,
        tariff=tariff,
        granted_s=grant.granted_s,
        reserve=grant.reserved,
        final=grant.final,
        supervised=renewable,
    )


def extension_status(account: Account, plan: PlanView | None) -> str:
    """'arrears' when the extension cannot pay its first billing block at its base rate."""
    if plan is None:
        return "ok" if account.available > 0 else "arrears"
    return "ok" if seconds_max(account.available, plan.tariff) > 0 else "arrears"
