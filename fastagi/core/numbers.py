"""The rules for 400 numbers and their IVR extensions (docs/rules.md rules 1-5), pure.

The store asks these functions before it writes; each refusal is a NumberRuleError
whose text is what the user reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

LANGUAGES = ("zh", "en")
KEY_DIGITS_MAX = 6
NAME_CHARS_MAX = 100
DEST_CHARS_MAX = 200
DIGIT_TIMEOUT_S_MIN, DIGIT_TIMEOUT_S_MAX = 1, 30

# ASCII digits only ([0-9], not \d, which also matches e.g. full-width digits a phone cannot
# dial), and always fullmatch: "$" would also match before a trailing newline.
_NUMBER_RE = re.compile(r"400[0-9]{7}")
_KEY_RE = re.compile(r"[0-9]{1,%d}" % KEY_DIGITS_MAX)
# A Dial string: Tech/resource[&Tech/resource...]; no spaces, commas or dialplan
# expression characters, so it cannot smuggle Dial options or functions.
_DEST_RE = re.compile(
    r"[A-Za-z][A-Za-z0-9_-]*/[A-Za-z0-9_.@+*#:/-]+(&[A-Za-z][A-Za-z0-9_-]*/[A-Za-z0-9_.@+*#:/-]+)*"
)


class NumberRuleError(ValueError):
    """A number or extension change that docs/rules.md's rules refuse."""


@dataclass(frozen=True, slots=True)
class NumberSettings:
    ivr: bool
    ext_billing: bool


def is_number(text: str) -> bool:
    """A 400 number: 400 and 7 ASCII digits."""
    return isinstance(text, str) and _NUMBER_RE.fullmatch(text) is not None


def is_key(text: str) -> bool:
    """An extension key: 1 to KEY_DIGITS_MAX ASCII digits."""
    return isinstance(text, str) and _KEY_RE.fullmatch(text) is not None


def check_number(number: str) -> str:
    if not is_number(number):
        raise NumberRuleError(f"{number!r} is not a 400 number (400 followed by 7 digits)")
    return number


def check_key(key: str) -> str:
    if not is_key(key):
        raise NumberRuleError(f"extension key {key!r} must be 1 to {KEY_DIGITS_MAX} digits")
    return key


def check_name(name: str) -> str:
    if not name or not name.strip():
        raise NumberRuleError("name must not be empty")
    if len(name) > NAME_CHARS_MAX or any(ord(c) < 32 for c in name):
        raise NumberRuleError(f"name must be at most {NAME_CHARS_MAX} printable characters")
    return name.strip()


def check_dest(dest: str) -> str:
    if not dest or len(dest) > DEST_CHARS_MAX or not _DEST_RE.fullmatch(dest):
        raise NumberRuleError(
            f"destination {dest!r} is not a Dial string like PJSIP/8001 or Local/8001@branches"
        )
    return dest


def check_lang(lang: str) -> str:
    if lang not in LANGUAGES:
        raise NumberRuleError(f"language {lang!r} must be one of {', '.join(LANGUAGES)}")
    return lang


def check_digit_timeout(seconds: int) -> int:
    if not DIGIT_TIMEOUT_S_MIN <= seconds <= DIGIT_TIMEOUT_S_MAX:
        raise NumberRuleError(
            f"digit timeout must be {DIGIT_TIMEOUT_S_MIN}..{DIGIT_TIMEOUT_S_MAX} s, got {seconds}"
        )
    return seconds


def check_new_key(key: str, existing: Iterable[str]) -> str:
    """Refuse a duplicate key or one that is a prefix of another (the IVR could not tell them apart)."""
    check_key(key)
    for other in existing:
        if other == key:
            raise NumberRuleError(f"extension {key} already exists")
        if other.startswith(key) or key.startswith(other):
            raise NumberRuleError(
                f"extension key {key} and existing key {other} are prefixes of each other; "
                "a caller dialing the shorter one could never reach the longer"
            )
    return key


def check_settings(current: NumberSettings, ivr: bool | None, ext_billing: bool | None) -> NumberSettings:
    """Apply an IVR / extension-billing change, refusing a silent mix (docs/rules.md rule 2)."""
    new_ivr = current.ivr if ivr is None else ivr
    new_billing = current.ext_billing if ext_billing is None else ext_billing
    if new_billing and not new_ivr:
        if ivr is False and current.ext_billing and ext_billing is None:
            raise NumberRuleError(
                "cannot turn IVR off while extension billing is on: extension billing needs "
                "IVR voice navigation; turn both off together with --ivr off --ext-billing off"
            )
        raise NumberRuleError("extension billing can only be enabled on a number with IVR on (use --ivr on)")
    return NumberSettings(ivr=new_ivr, ext_billing=new_billing)


def is_suspended(main_balance: int, min_balance: int, owed: int = 0) -> bool:
    """docs/rules.md rules 5 and 10: a number is suspended while its main balance is below its
    minimum, or while it owes part of a monthly minimum charge (core/period.py)."""
    return main_balance < min_balance or owed > 0


# Call setup compares the main balance with the number's minimum balance only; a number that
# owes is read with this minimum instead, so the same comparison suspends it (tx_admin.py).
OWING_MIN_BALANCE = 2**62


def digits_to_collect(max_key_len: int | None) -> int:
    """Digits the IVR collects: the longest key's length, 1 when the number has no keys."""
    return 1 if max_key_len is None else max_key_len
