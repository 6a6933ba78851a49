"""Money at the edges: decimal text with at most 3 places <-> integer minor units (0.001 CNY)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastagi.core.money import AMOUNT_MAX, AmountError, format_amount, parse_amount

amounts = st.integers(min_value=1, max_value=AMOUNT_MAX)


@given(amounts)
def test_format_then_parse_gives_back_the_same_minor_units(minor: int) -> None:
    """Every valid amount printed with 3 places reads back as exactly the same amount."""
    assert parse_amount(format_amount(minor)) == minor


@given(
    st.integers(min_value=0, max_value=10_000_000),
    st.integers(min_value=0, max_value=999),
    st.integers(min_value=0, max_value=3),
)
def test_parse_then_format_prints_the_typed_value_with_three_places(
    whole: int, frac: int, places: int
) -> None:
    """An amount typed with 0 to 3 decimals prints as the same number padded to 3 places."""
    if places == 0:
        text, frac_digits = str(whole), "000"
    else:
        frac_digits = str(frac).zfill(3)[:places]
        text = f"{whole}.{frac_digits}"
        frac_digits = frac_digits.ljust(3, "0")
    expected_minor = whole * 1000 + int(frac_digits)
    if expected_minor == 0 or expected_minor > AMOUNT_MAX:
        with pytest.raises(AmountError):
            parse_amount(text)
        return
    assert format_amount(parse_amount(text)) == f"{whole}.{frac_digits}"


@pytest.mark.parametrize(
    "text, minor",
    [
        ("12", 12_000),
        ("12.5", 12_500),
        ("0.001", 1),
        ("0.6", 600),
        ("007.070", 7_070),
        ("10000000", 10_000_000_000),
    ],
)
def test_documented_examples_parse_to_minor_units(text: str, minor: int) -> None:
    """The amounts the CLI documents ('12', '12.5', '0.001') mean what they say in 0.001 units."""
    assert parse_amount(text) == minor


@pytest.mark.parametrize(
    "minor, text",
    [(0, "0.000"), (1, "0.001"), (12_500, "12.500"), (-1_500, "-1.500"), (10_000_000_000, "10000000.000")],
)
def test_format_prints_exactly_three_places(minor: int, text: str) -> None:
    """Money always prints with exactly three decimal places, with a sign when negative."""
    assert format_amount(minor) == text


@pytest.mark.parametrize(
    "text, word",
    [
        ("-1", "negative"),
        ("-0.5", "negative"),
        ("0", "zero"),
        ("0.000", "zero"),
        ("00", "zero"),
        ("1.2345", "decimal places"),
        ("0.0001", "decimal places"),
        ("10000000.001", "maximum"),
        ("99999999", "maximum"),
        ("999999999999.999", "maximum"),
    ],
)
def test_refusals_name_the_problem(text: str, word: str) -> None:
    """Negative, zero, over-precise and too-large amounts are refused with a message naming why."""
    with pytest.raises(AmountError, match=word):
        parse_amount(text)


@pytest.mark.parametrize(
    "text",
    [
        "1e3",
        "1E3",
        "",
        " ",
        " 5",
        "5 ",
        "5\n",
        "\t5",
        "1 000",
        "1,000",
        "1_000",
        "abc",
        "5.",
        ".5",
        "+5",
        "0x10",
        "NaN",
        "inf",
        "12.5.1",
        "١٢",
        "１２",
        "5yuan",
        "¥5",
        "1000000000000",
    ],
)
def test_malformed_text_is_refused(text: str) -> None:
    """Scientific notation, spaces, signs, separators, non-ASCII digits and garbage are not amounts."""
    with pytest.raises(AmountError):
        parse_amount(text)


def test_zero_is_allowed_only_when_asked_for() -> None:
    """A zero price (a free plan) is accepted where zero is explicitly allowed, and only there."""
    assert parse_amount("0", allow_zero=True) == 0
    assert parse_amount("0.000", allow_zero=True) == 0
    with pytest.raises(AmountError):
        parse_amount("-0", allow_zero=True)


@given(st.text(max_size=20))
def test_any_text_either_parses_into_range_or_raises_amount_error(text: str) -> None:
    """Arbitrary text never crashes the parser: it is an in-range amount or an AmountError."""
    try:
        value = parse_amount(text)
    except AmountError:
        return
    assert 1 <= value <= AMOUNT_MAX
    assert re.fullmatch(r"[0-9]+(\.[0-9]{1,3})?", text), f"accepted {text!r}"


def test_money_is_never_a_float() -> None:
    """Formatting refuses floats and bools, so no float can sneak into printed money."""
    for bad in (1.5, True, "12"):
        with pytest.raises(TypeError):
            format_amount(bad)  # type: ignore[arg-type]
