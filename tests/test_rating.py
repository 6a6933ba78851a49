"""Rating: what N talk seconds cost, and the longest talk time an available amount pays for."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastagi.core.rating import (
    BLOCK_S_MAX,
    CALL_S_MAX,
    PER_MINUTE_MAX,
    PlanError,
    Tariff,
    billed_seconds,
    cost,
    first_block_cost,
    match_rate,
    seconds_max,
    tariff_for_caller,
)


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    """Any tariff the plan validation accepts, biased towards the usual 60/60, 6/6, 1/1 plans."""
    initial = draw(st.one_of(st.sampled_from([1, 6, 30, 60]), st.integers(1, BLOCK_S_MAX)))
    increment = draw(st.one_of(st.sampled_from([1, 6, 30, 60]), st.integers(1, BLOCK_S_MAX)))
    max_call = draw(
        st.one_of(st.sampled_from([7200, initial, initial + 1]), st.integers(initial, CALL_S_MAX))
    )
    grace = draw(st.one_of(st.just(0), st.integers(0, min(max_call - 1, 2 * initial + 10))))
    per_minute = draw(st.one_of(st.sampled_from([0, 1, 300, 600, 60_000]), st.integers(0, PER_MINUTE_MAX)))
    connect_fee = draw(st.one_of(st.just(0), st.integers(0, 100_000)))
    return Tariff(
        per_minute=per_minute,
        initial_s=initial,
        increment_s=increment,
        connect_fee=connect_fee,
        grace_s=grace,
        max_call_s=max_call,
    )


# The three grant properties run Hypothesis' default 100 examples; the others fewer, to keep
# the suite fast (each still covers every plan shape the strategy biases towards).
LIGHT = settings(max_examples=40)

available_amounts = st.integers(min_value=0, max_value=10_000_000_000)
talk_times = st.integers(min_value=0, max_value=2 * CALL_S_MAX)


@given(tariffs(), available_amounts)
def test_granted_time_never_costs_more_than_the_available_amount(t: Tariff, a: int) -> None:
    """A call cut at the granted time can never cost more than the account had available."""
    assert cost(seconds_max(a, t), t) <= a


@given(tariffs(), st.data())
def test_one_more_second_than_granted_would_be_unaffordable_unless_capped(
    t: Tariff, data: st.DataObject
) -> None:
    """The grant is the longest affordable time: a second more costs too much, unless the cap hit."""
    # Amounts between "pays the first block" and "pays the whole maximum call", where it matters.
    a = data.draw(st.integers(first_block_cost(t), max(first_block_cost(t), cost(t.max_call_s, t))))
    granted = seconds_max(a, t)
    assume(0 < granted < t.max_call_s)
    assert cost(granted + 1, t) > a


@LIGHT
@given(tariffs(), available_amounts)
def test_grant_is_never_longer_than_the_maximum_call(t: Tariff, a: int) -> None:
    """No balance, however large, buys a call longer than the plan's maximum call length."""
    assert 0 <= seconds_max(a, t) <= t.max_call_s


@given(tariffs(), available_amounts)
def test_nothing_is_granted_exactly_when_the_first_block_is_unaffordable(t: Tariff, a: int) -> None:
    """An account is refused (arrears) if and only if it cannot pay the first billing block."""
    assert (seconds_max(a, t) == 0) == (a < first_block_cost(t))


@LIGHT
@given(tariffs())
def test_first_block_boundary_is_exact(t: Tariff) -> None:
    """One minor unit less than the first block gets nothing; the first block's price gets a call."""
    fbc = first_block_cost(t)
    if t.grace_s < t.initial_s:
        assert fbc == cost(t.initial_s, t)
    assert seconds_max(fbc, t) >= t.initial_s
    if fbc > 0:
        assert seconds_max(fbc - 1, t) == 0


@LIGHT
@given(tariffs(), available_amounts, available_amounts)
def test_more_money_never_buys_less_time(t: Tariff, a: int, b: int) -> None:
    """The granted time is monotonic in the available amount."""
    lo, hi = sorted((a, b))
    assert seconds_max(lo, t) <= seconds_max(hi, t)


@LIGHT
@given(tariffs(), talk_times, talk_times)
def test_cost_is_monotonic_in_talk_time(t: Tariff, s1: int, s2: int) -> None:
    """Talking longer never costs less."""
    lo, hi = sorted((s1, s2))
    assert cost(lo, t) <= cost(hi, t)


@LIGHT
@given(tariffs(), talk_times)
def test_billed_seconds_are_whole_blocks_covering_the_talk(t: Tariff, s: int) -> None:
    """Past grace, billing is the initial block plus whole increments, never less than the talk time."""
    billed = billed_seconds(s, t)
    if billed == 0:
        assert s <= t.grace_s
        return
    assert billed >= s and billed >= t.initial_s
    assert (billed - t.initial_s) % t.increment_s == 0
    # and no more than one increment too many
    assert billed - s < max(t.initial_s, t.increment_s)


@LIGHT
@given(tariffs(), st.data())
def test_grace_time_is_free(t: Tariff, data: st.DataObject) -> None:
    """A call no longer than the grace time (or not answered at all) costs nothing."""
    s = data.draw(st.integers(0, t.grace_s))
    assert cost(s, t) == 0


@LIGHT
@given(tariffs(), st.integers(min_value=1, max_value=CALL_S_MAX))
def test_connect_fee_is_charged_once_per_billed_call(t: Tariff, s: int) -> None:
    """A billed call pays the connect fee exactly once, whatever its length."""
    assume(s > t.grace_s)
    without_fee = Tariff(
        per_minute=t.per_minute,
        initial_s=t.initial_s,
        increment_s=t.increment_s,
        connect_fee=0,
        grace_s=t.grace_s,
        max_call_s=t.max_call_s,
    )
    assert cost(s, t) - cost(s, without_fee) == t.connect_fee


@LIGHT
@given(tariffs(), talk_times)
def test_rounding_up_happens_once_per_call_not_per_block(t: Tariff, s: int) -> None:
    """The price is the exact price of the billed seconds rounded up once to 0.001, never per block."""
    billed = billed_seconds(s, t)
    c = cost(s, t)
    if billed == 0:
        assert c == 0
        return
    exact_times_60 = billed * t.per_minute  # the exact cost is this / 60 minor units
    variable = c - t.connect_fee
    assert variable * 60 >= exact_times_60  # never below the exact price
    assert (variable - 1) * 60 < exact_times_60  # less than one minor unit above it


# ---- worked examples, computed by hand ------------------------------------------------------

P60 = Tariff(per_minute=600)  # 0.6 CNY/min, 60/60
P6 = Tariff(per_minute=300, initial_s=6, increment_s=6)  # 0.3 CNY/min, 6/6
P1 = Tariff(per_minute=1, initial_s=1, increment_s=1)  # 0.001 CNY/min, 1/1


@pytest.mark.parametrize(
    "t, talk_s, billed_s, minor",
    [
        (P60, 0, 0, 0),
        (P60, 1, 60, 600),  # any answered second pays the first minute: 0.600
        (P60, 60, 60, 600),
        (P60, 61, 120, 1_200),  # 61 s on 60/60 is two minutes: 1.200
        (P60, 3600, 3600, 36_000),
        (P6, 1, 6, 30),  # 6 s at 0.3/min = 0.030
        (P6, 7, 12, 60),  # 7 s on 6/6 bills 12 s = 0.060
        (P6, 12, 12, 60),
        (P6, 13, 18, 90),
        (P1, 1, 1, 1),  # 1/60 of 0.001 rounds up to 0.001, not down to 0
        (P1, 59, 59, 1),  # 59/60 of 0.001 -> 0.001
        (P1, 61, 61, 2),  # 61/60 of 0.001 -> 0.002 (rounded once, for the whole call)
    ],
)
def test_worked_examples(t: Tariff, talk_s: int, billed_s: int, minor: int) -> None:
    """Hand-computed prices for the common 60/60, 6/6 and 1/1 plans."""
    assert billed_seconds(talk_s, t) == billed_s
    assert cost(talk_s, t) == minor


def test_connect_fee_and_grace_worked_example() -> None:
    """0.6/min 60/60 with a 0.100 connect fee and 5 s grace: 5 s free, 6 s costs 0.700, 61 s 1.300."""
    t = Tariff(per_minute=600, connect_fee=100, grace_s=5)
    assert cost(5, t) == 0
    assert cost(6, t) == 700
    assert cost(61, t) == 1_300
    assert first_block_cost(t) == 700


@pytest.mark.parametrize(
    "t, available, granted",
    [
        (P60, 599, 0),  # cannot pay the first minute: arrears
        (P60, 600, 60),
        (P60, 1_199, 60),
        (P60, 1_200, 120),
        (P60, 1_000_000, 7200),  # capped by the default maximum call
        (P6, 29, 0),
        (P6, 30, 6),
        (P6, 59, 6),
        (P6, 60, 12),
        (P1, 1, 60),  # 0.001 pays 60 s at 0.001/min
        (Tariff(per_minute=0), 0, 7200),  # a free plan grants the maximum call even with no money
        (Tariff(per_minute=600, connect_fee=100), 699, 0),
        (Tariff(per_minute=600, connect_fee=100), 700, 60),
        (Tariff(per_minute=600, max_call_s=90), 10_000, 90),
    ],
)
def test_worked_grants(t: Tariff, available: int, granted: int) -> None:
    """Hand-computed longest grants for a few balances."""
    assert seconds_max(available, t) == granted


def test_grace_longer_than_the_first_block_is_granted_when_affordable() -> None:
    """With 10 s grace on a 6/6 plan, an account that pays one block may talk the 10 free seconds."""
    t = Tariff(per_minute=300, initial_s=6, increment_s=6, grace_s=10)
    assert seconds_max(30, t) == 10
    assert cost(10, t) == 0 and cost(11, t) == 60  # 11 s bills 12 s = 0.060 > 0.030


# ---- longest-prefix match -------------------------------------------------------------------

RATES = {"": 100, "0086": 200, "008610": 300, "13": 400}


@pytest.mark.parametrize(
    "caller, per_minute",
    [
        ("008610123456", 300),  # the longest matching prefix wins
        ("0086755123", 200),
        ("0086", 200),
        ("00861", 200),
        ("0044123", 100),  # the empty prefix is the default
        ("13800000000", 400),
        ("", 100),
        ("1", 100),
    ],
)
def test_longest_prefix_wins(caller: str, per_minute: int) -> None:
    """The caller's price comes from the longest prefix of its number in the plan's rates."""
    assert match_rate(caller, 999, RATES) == per_minute
    assert match_rate(caller, 999, list(RATES.items())[::-1]) == per_minute  # order does not matter


def test_plan_price_applies_when_no_prefix_matches() -> None:
    """Without an empty-prefix rate, callers matching nothing pay the plan's own per-minute price."""
    assert match_rate("0044", 999, {"0086": 200}) == 999
    t = tariff_for_caller(P60, "008610", {"0086": 200, "008610": 300})
    assert t.per_minute == 300 and t.initial_s == P60.initial_s
    assert tariff_for_caller(P60, "0044", {"0086": 200}) == P60


@LIGHT
@given(
    st.dictionaries(st.text("0123456789", max_size=6), st.integers(0, 10_000), max_size=8),
    st.text("0123456789", max_size=12),
)
def test_longest_prefix_property(rates: dict[str, int], caller: str) -> None:
    """The chosen price belongs to a matching prefix, and no longer prefix matches."""
    chosen = match_rate(caller, -1, rates)
    matching = [p for p in rates if caller.startswith(p)]
    if not matching:
        assert chosen == -1
        return
    longest = max(matching, key=len)
    assert chosen == rates[longest]


# ---- tariffs that make no sense are refused -------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_minute": -1},
        {"initial_s": 0},
        {"increment_s": 0},
        {"initial_s": BLOCK_S_MAX + 1},
        {"max_call_s": 59},
        {"max_call_s": CALL_S_MAX + 1},
        {"grace_s": 7200},
        {"connect_fee": -1},
        {"per_minute": PER_MINUTE_MAX + 1},
        {"per_minute": 0.5},
    ],
)
def test_nonsense_tariffs_are_refused(kwargs: dict) -> None:
    """A plan with a zero block, negative price, grace >= max call or max call < first block is refused."""
    base = {"per_minute": 600}
    with pytest.raises(PlanError):
        Tariff(**{**base, **kwargs})


@LIGHT
@given(
    tariffs(),
    st.one_of(st.integers(0, PER_MINUTE_MAX), st.sampled_from([-1, PER_MINUTE_MAX + 1, True, 1.0])),
    st.text("0123456789", max_size=6),
)
def test_caller_tariff_is_the_plan_with_the_prefix_price(t: Tariff, per_minute: int, prefix: str) -> None:
    """tariff_for_caller (memoised per plan and price) is replace(plan, per_minute=price), and a bad
    stored price is refused every time, not just the first."""
    from dataclasses import replace  # noqa: PLC0415

    caller = prefix + "1234"
    for _ in range(2):
        try:
            expect = replace(t, per_minute=per_minute) if per_minute != t.per_minute else t
        except PlanError:
            with pytest.raises(PlanError):
                tariff_for_caller(t, caller, {prefix: per_minute})
            continue
        got = tariff_for_caller(t, caller, {prefix: per_minute})
        assert got == expect and type(got.per_minute) is type(expect.per_minute)
