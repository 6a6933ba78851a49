"""The call decision (fastagi/core/calls.py), table-driven over every rule of docs/rules.md it keeps (3-5, 7).

Pure: snapshots of a number, its extension and their accounts in, one Decision out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastagi.core.calls import Decision, ExtView, NumberView, PlanView, decide_lookup, decide_route
from fastagi.core.ledger import Account, AccountKind
from fastagi.core.money import parse_amount
from fastagi.core.rating import Tariff, cost, first_block_cost

CNY = parse_amount
BASE = Tariff(per_minute=CNY("0.6"), initial_s=60, increment_s=6)  # 0.6 CNY/min, 60+6
PLAN = PlanView(BASE, {"00": CNY("3"), "0086": CNY("0.6")})  # international 3 CNY/min
FIRST_BLOCK = first_block_cost(BASE)  # 0.6 CNY
CALLER = "13800138000"
FOREIGN = "0044207946000"

MAIN_ID, EXT_ID, EXT_ACCOUNT_ID = 10, 7, 20


def account(
    balance: int, reserved: int = 0, *, id: int = MAIN_ID, kind: AccountKind = AccountKind.MAIN
) -> Account:
    return Account(id, kind, debits_pending=reserved, credits_posted=balance)


def number(
    *,
    main: int = CNY("500"),
    reserved: int = 0,
    min_balance: int = CNY("50"),
    ivr: bool = True,
    ext_billing: bool = True,
    default_dest: str | None = "PJSIP/operator",
    plan: PlanView | None = PLAN,
    lang: str = "zh",
    keys: tuple[str, ...] = ("1", "2", "801"),
) -> NumberView:
    return NumberView(
        number_id=1,
        number="4008001234",
        lang=lang,
        ivr=ivr,
        ext_billing=ext_billing,
        min_balance=min_balance,
        default_dest=default_dest,
        digit_timeout_s=7,
        main=account(main, reserved),
        plan=plan,
        max_key_len=max((len(k) for k in keys), default=None),
    )


def ext(
    balance: int = CNY("30"), reserved: int = 0, *, key: str = "1", plan: PlanView | None = None
) -> ExtView:
    return ExtView(
        extension_id=EXT_ID,
        key=key,
        dest="PJSIP/8001",
        account=account(balance, reserved, id=EXT_ACCOUNT_ID, kind=AccountKind.EXT),
        plan=plan,
    )


def longest_affordable(available: int, t: Tariff) -> int:
    """Brute force: the longest talk (s, capped) whose cost the amount pays; 0 below the first block."""
    if available < first_block_cost(t):
        return 0
    best = 0
    for s in range(1, t.max_call_s + 1):
        if cost(s, t) <= available:
            best = s
    return best


@dataclass(frozen=True)
class Case:
    name: str
    number: NumberView | None
    digits: str
    try_no: int
    ext: ExtView | None
    expect: dict[str, Any]
    caller: str = CALLER


DIAL_MAIN_DEFAULT = {
    "action": "dial",
    "dest": "PJSIP/operator",
    "charged": "main",
    "account_id": MAIN_ID,
    "extension_id": None,
}
DIAL_EXT = {
    "action": "dial",
    "dest": "PJSIP/8001",
    "charged": "ext",
    "account_id": EXT_ACCOUNT_ID,
    "extension_id": EXT_ID,
    "ext_key": "1",
}
SUSPENDED = {"action": "prompt", "prompt": "number-suspended", "dest": None, "reserve": 0, "granted_s": 0}
ARREARS = {"action": "prompt", "prompt": "ext-in-arrears", "dest": None, "reserve": 0, "granted_s": 0}
NOT_IN_SERVICE = {"action": "prompt", "prompt": "not-in-service", "dest": None, "reserve": 0}
RETRY = {"action": "retry", "dest": None, "reserve": 0, "granted_s": 0}
NO_DEST = {"action": "prompt", "prompt": "service-unavailable", "dest": None, "reserve": 0}

ROUTE_CASES = [
    Case("unknown number: not in service", None, "1", 1, None, NOT_IN_SERVICE),
    Case(
        "suspended number: suspension prompt even for an extension with money",
        number(main=CNY("49.999")),
        "1",
        1,
        ext(CNY("1000")),
        SUSPENDED,
    ),
    Case("suspended number: suspension prompt with no key", number(main=CNY("10")), "", 1, None, SUSPENDED),
    Case(
        "suspended number: suspension prompt even with extension billing off",
        number(main=CNY("10"), ext_billing=False),
        "1",
        1,
        ext(CNY("1000")),
        SUSPENDED,
    ),
    Case(
        "no key (timeout): the default destination, charged to main",
        number(),
        "",
        1,
        None,
        {**DIAL_MAIN_DEFAULT, "reason": "no-key"},
    ),
    Case(
        "no key with extension billing off: the default destination, charged to main",
        number(ext_billing=False),
        "",
        1,
        None,
        DIAL_MAIN_DEFAULT,
    ),
    Case("invalid key, try 1: try again", number(), "9", 1, None, RETRY),
    Case("invalid key, try 2: try again", number(), "9", 2, None, RETRY),
    Case(
        "invalid key, try 3: the default destination, charged to main",
        number(),
        "9",
        3,
        None,
        {**DIAL_MAIN_DEFAULT, "reason": "invalid-key-fallback"},
    ),
    Case(
        "invalid key past try 3 (a looping dialplan): still the default destination",
        number(),
        "9",
        7,
        None,
        DIAL_MAIN_DEFAULT,
    ),
    Case("non-digit key ('*') matches no extension: try again", number(), "?*", 1, None, RETRY),
    Case(
        "extension billing on, extension cannot pay its first block: arrears, though main is rich",
        number(main=CNY("100000")),
        "1",
        1,
        ext(FIRST_BLOCK - 1),
        ARREARS,
    ),
    Case("extension billing on, extension at zero: arrears", number(), "1", 1, ext(0), ARREARS),
    Case(
        "extension billing on, money held by other calls is not available: arrears",
        number(),
        "1",
        1,
        ext(CNY("5"), reserved=CNY("4.5")),
        ARREARS,
    ),
    Case(
        "extension billing on with money: dial the extension, charged to it",
        number(),
        "1",
        1,
        ext(CNY("30")),
        {**DIAL_EXT, "reason": "extension"},
    ),
    Case(
        "extension billing on, exactly one first block: dial for one block",
        number(),
        "1",
        1,
        ext(FIRST_BLOCK),
        {**DIAL_EXT, "granted_s": 60, "reserve": FIRST_BLOCK},
    ),
    Case(
        "extension billing on, an empty main account does not matter while above its minimum",
        number(main=CNY("50"), min_balance=CNY("50")),
        "1",
        1,
        ext(CNY("30")),
        DIAL_EXT,
    ),
    Case(
        "extension billing off: the key routes to the extension but main pays",
        number(ext_billing=False),
        "1",
        1,
        ext(0),
        {
            "action": "dial",
            "dest": "PJSIP/8001",
            "charged": "main",
            "account_id": MAIN_ID,
            "extension_id": EXT_ID,
            "reason": "extension-billing-off",
        },
    ),
    Case(
        "IVR off: the digits are ignored, the default destination, charged to main",
        number(ivr=False, ext_billing=False),
        "1",
        1,
        ext(CNY("30")),
        DIAL_MAIN_DEFAULT,
    ),
    Case(
        "main cannot pay its first block (no key): the suspension prompt",
        number(main=FIRST_BLOCK - 1, min_balance=0),
        "",
        1,
        None,
        {**SUSPENDED, "reason": "main-cannot-pay"},
    ),
    Case(
        "main cannot pay its first block (extension billing off): the suspension prompt",
        number(main=FIRST_BLOCK - 1, min_balance=0, ext_billing=False),
        "1",
        1,
        ext(CNY("30")),
        SUSPENDED,
    ),
    Case(
        "main's money held by other calls cannot pay the first block: the suspension prompt",
        number(main=CNY("1"), reserved=CNY("0.5"), min_balance=0),
        "",
        1,
        None,
        SUSPENDED,
    ),
    Case(
        "no default destination, no key: a prompt, not a Dial",
        number(default_dest=None),
        "",
        1,
        None,
        NO_DEST,
    ),
    Case(
        "no default destination, out of tries: a prompt, not a Dial",
        number(default_dest=None),
        "9",
        3,
        None,
        NO_DEST,
    ),
    Case("no rate plan: a prompt, never an unbilled Dial", number(plan=None), "", 1, None, NO_DEST),
    Case(
        "foreign caller cannot pay the first block at the international rate: arrears",
        number(),
        "1",
        1,
        ext(CNY("1")),
        ARREARS,
        caller=FOREIGN,
    ),
    Case(
        "domestic caller with the same balance: dial",
        number(),
        "1",
        1,
        ext(CNY("1")),
        {**DIAL_EXT, "granted_s": 96},
    ),
    Case(
        "the language of the number is carried to the prompt",
        number(lang="en", main=0),
        "",
        1,
        None,
        {**SUSPENDED, "lang": "en"},
    ),
]


@pytest.mark.parametrize("case", ROUTE_CASES, ids=[c.name for c in ROUTE_CASES])
def test_route_decision(case: Case) -> None:
    """Each rule gives the caller the prompt or the Dial (destination, account charged) docs/rules.md says."""
    d = decide_route(case.number, case.digits, case.try_no, case.ext, case.caller)
    got = {k: getattr(d, k) for k in case.expect}
    assert got == case.expect
    if d.action == "dial":
        assert d.granted_s > 0 and d.limit_ms > 0
        assert d.tariff is not None
    else:
        assert d.granted_s == 0 and d.reserve == 0 and d.dest is None


LOOKUP_CASES = [
    ("unknown number: not in service", None, {"action": "prompt", "prompt": "not-in-service"}),
    (
        "suspended number: suspension prompt",
        number(main=CNY("49.999")),
        {"action": "prompt", "prompt": "number-suspended", "lang": "zh"},
    ),
    (
        "suspended English number: English suspension prompt",
        number(main=0, lang="en"),
        {"action": "prompt", "prompt": "number-suspended", "lang": "en"},
    ),
    (
        "active number: collect up to the longest key with the number's digit timeout",
        number(),
        {"action": "collect", "lang": "zh", "digit_timeout_s": 7, "max_digits": 3, "prompt": None},
    ),
    (
        "active number without extensions: collect one digit",
        number(keys=(), lang="en"),
        {"action": "collect", "lang": "en", "max_digits": 1},
    ),
    (
        "IVR off: still sized by the keys (as before)",
        number(ivr=False, ext_billing=False, keys=("12345",)),
        {"action": "collect", "max_digits": 5},
    ),
]


@pytest.mark.parametrize("nv, expect", [c[1:] for c in LOOKUP_CASES], ids=[c[0] for c in LOOKUP_CASES])
def test_lookup_decision(nv: NumberView | None, expect: dict[str, Any]) -> None:
    """The first request tells the dialplan to collect the key (how many digits, how long) or play a prompt."""
    d = decide_lookup(nv)
    assert {k: getattr(d, k) for k in expect} == expect


@pytest.mark.parametrize(
    "balance",
    [
        FIRST_BLOCK,
        FIRST_BLOCK + 1,
        CNY("0.659"),
        CNY("0.66"),
        CNY("1"),
        CNY("7.777"),
        CNY("30"),
        CNY("71.999"),
    ],
)
def test_extension_grant_is_longest_affordable_in_whole_blocks(balance: int) -> None:
    """The extension is granted the longest talk time its available money pays, and reserves exactly its cost."""
    d = decide_route(number(), "1", 1, ext(balance), CALLER)
    assert d.action == "dial" and d.charged == "ext"
    assert d.granted_s == longest_affordable(balance, BASE)
    assert (d.granted_s - BASE.initial_s) % BASE.increment_s == 0  # whole blocks
    assert d.reserve == cost(d.granted_s, BASE) <= balance
    assert cost(d.granted_s + 1, BASE) > balance  # one second more is unaffordable


def test_grant_counts_only_available_money() -> None:
    """Money already reserved by the extension's other calls is not granted again."""
    d = decide_route(number(), "1", 1, ext(CNY("10"), reserved=CNY("7")), CALLER)
    assert d.granted_s == longest_affordable(CNY("3"), BASE) == 300
    assert d.reserve <= CNY("3")


def test_main_grant_is_longest_affordable() -> None:
    """A call charged to main is granted what main's available money pays, capped like any other."""
    nv = number(main=CNY("51"), reserved=CNY("49"), min_balance=CNY("50"))
    d = decide_route(nv, "", 1, None, CALLER)
    assert d.action == "dial" and d.account_id == MAIN_ID
    assert d.granted_s == longest_affordable(CNY("2"), BASE) == 198
    assert d.reserve == cost(198, BASE) <= CNY("2")


def test_grant_capped_at_max_call() -> None:
    """However rich the account, no grant is longer than the plan's maximum call."""
    capped = PlanView(replace(BASE, max_call_s=1800), PLAN.rates)
    d = decide_route(number(plan=capped), "1", 1, ext(CNY("100000")), CALLER)
    assert d.granted_s == 1800 and d.limit_ms == 1_800_000
    assert d.reserve == cost(1800, capped.tariff)


def test_grant_capped_at_max_call_between_blocks() -> None:
    """A maximum call that is not on a block boundary is the grant, and reserves its (rounded-up) cost."""
    odd = PlanView(Tariff(per_minute=CNY("1"), initial_s=60, increment_s=60, max_call_s=90), {})
    d = decide_route(number(plan=odd), "1", 1, ext(CNY("5")), CALLER)
    assert d.granted_s == 90
    assert d.reserve == cost(90, odd.tariff) == CNY("2")


def test_extension_plan_overrides_number_plan() -> None:
    """An extension with a plan of its own is granted and charged at that plan's price."""
    own = PlanView(Tariff(per_minute=CNY("1.2"), initial_s=60, increment_s=60), {})
    d = decide_route(number(), "1", 1, ext(CNY("6"), plan=own), CALLER)
    assert d.granted_s == 300 and d.reserve == CNY("6")
    assert d.tariff == own.tariff


def test_caller_prefix_rate_changes_grant() -> None:
    """A caller whose prefix has a higher rate gets a shorter grant for the same balance."""
    domestic = decide_route(number(), "1", 1, ext(CNY("30")), CALLER)
    foreign = decide_route(number(), "1", 1, ext(CNY("30")), FOREIGN)
    assert domestic.tariff is not None and foreign.tariff is not None
    assert domestic.tariff.per_minute == CNY("0.6") and foreign.tariff.per_minute == CNY("3")
    assert domestic.granted_s == longest_affordable(CNY("30"), BASE) == 3000
    assert foreign.granted_s == longest_affordable(CNY("30"), foreign.tariff) == 600
    assert foreign.reserve <= CNY("30")


def test_longest_prefix_wins() -> None:
    """'0086...' matches its own rate, not the shorter international '00' prefix."""
    d = decide_route(number(), "1", 1, ext(CNY("30")), "008613800138000")
    assert d.tariff is not None and d.tariff.per_minute == CNY("0.6")


@pytest.mark.parametrize(
    "balance, granted_s, warning_ms",
    [
        (CNY("0.6"), 60, 30_000),  # one block: warned half-way
        (CNY("0.9"), 90, 45_000),
        (CNY("1.2"), 120, 60_000),  # two minutes: a minute before the end
        (CNY("30"), 3000, 60_000),
        (CNY("100000"), 7200, 60_000),
    ],
)
def test_warning_time(balance: int, granted_s: int, warning_ms: int) -> None:
    """The caller is warned a minute before the cut, or half-way through a short grant."""
    d = decide_route(number(), "1", 1, ext(balance), CALLER)
    assert (d.granted_s, d.limit_ms, d.warning_ms) == (granted_s, granted_s * 1000, warning_ms)
    assert 0 < d.warning_ms < d.limit_ms


def test_free_plan_grants_max_call_and_reserves_connect_fee() -> None:
    """A zero-rate plan still grants a bounded call (never L(0)), reserving only the connect fee."""
    free = PlanView(Tariff(per_minute=0, connect_fee=CNY("0.1"), max_call_s=600), {})
    assert decide_route(number(plan=free), "1", 1, ext(CNY("0.099")), CALLER).prompt == "ext-in-arrears"
    d = decide_route(number(plan=free), "1", 1, ext(CNY("0.1")), CALLER)
    assert d.action == "dial" and d.granted_s == 600 and d.reserve == CNY("0.1")


tariffs = st.builds(
    lambda pm, init, inc, fee, grace, extra: Tariff(
        per_minute=pm,
        initial_s=init,
        increment_s=inc,
        connect_fee=fee,
        grace_s=min(grace, init - 1),
        max_call_s=init + extra,
    ),
    st.integers(0, 20_000),
    st.integers(1, 120),
    st.integers(1, 120),
    st.integers(0, 2_000),
    st.integers(0, 30),
    st.integers(0, 3_000),
)


@settings(max_examples=300, deadline=None)
@given(
    t=tariffs,
    balance=st.integers(0, 200_000),
    reserved_pct=st.integers(0, 100),
    key=st.sampled_from(["", "1", "9"]),
    try_no=st.integers(1, 4),
    ext_billing=st.booleans(),
    main=st.integers(0, 200_000),
    min_balance=st.integers(0, 100_000),
)
def test_never_a_zero_limit_and_never_over_available(
    t: Tariff,
    balance: int,
    reserved_pct: int,
    key: str,
    try_no: int,
    ext_billing: bool,
    main: int,
    min_balance: int,
) -> None:
    """Whatever the balances and tariff, a Dial has a positive limit and reserves no more than is available."""
    plan = PlanView(t, {})
    reserved = balance * reserved_pct // 100
    nv = number(main=main, min_balance=min_balance, ext_billing=ext_billing, plan=plan)
    ev = ext(balance, reserved) if key == "1" else None
    d: Decision = decide_route(nv, key, try_no, ev, CALLER)
    if d.action != "dial":
        assert d.reserve == 0 and d.granted_s == 0
        return
    payer = ev.account if d.charged == "ext" and ev else nv.main
    assert not nv.suspended
    assert 0 < d.granted_s <= t.max_call_s and d.limit_ms >= 1000
    assert d.reserve == cost(d.granted_s, t) <= payer.available
    assert d.granted_s == t.max_call_s or cost(d.granted_s + 1, t) > payer.available
    assert 0 < d.warning_ms < d.limit_ms


@given(st.lists(st.text("0123456789", max_size=6), max_size=12))
def test_digits_to_collect_from_the_longest_key_is_max_key_digits(keys: list[str]) -> None:
    """The store reads only max(length(key)) (NULL without keys); the digits collected are the same
    as from the full list of keys."""
    from fastagi.core.numbers import digits_to_collect  # noqa: PLC0415

    def max_key_digits(keys: list[str]) -> int:  # the longest key's length, 1 without keys
        return max((len(k) for k in keys), default=1)

    longest = max((len(k) for k in keys), default=None)
    assert digits_to_collect(longest) == max_key_digits(keys)
    assert decide_lookup(number(keys=tuple(keys))).max_digits == max_key_digits(keys)
