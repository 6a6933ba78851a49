"""The tariff snapshot a call is rated with, as stored in its row (JSON text)."""

from __future__ import annotations

import functools
import json

from fastagi.core.rating import Tariff
from fastagi.store.shared_texts import TARIFFS


@functools.lru_cache(maxsize=1024)
def tariff_json(t: Tariff) -> str:
    """The tariff snapshot stored with a call: json.dumps(asdict(t)), without asdict's deep copy.

    Memoised: a Tariff is immutable and few distinct ones (plan x prefix rate) exist.
    """
    return json.dumps(
        {
            "per_minute": t.per_minute,
            "initial_s": t.initial_s,
            "increment_s": t.increment_s,
            "connect_fee": t.connect_fee,
            "grace_s": t.grace_s,
            "max_call_s": t.max_call_s,
        }
    )


@functools.lru_cache(maxsize=1024)
def tariff_from_json(text: str) -> Tariff:
    """The stored snapshot back as a Tariff, parsed and validated once per distinct text."""
    return Tariff(**json.loads(text))


# Snapshots are shared rows of `tariffs` (store/shared_texts.py); a call row holds the id.
cached_tariff_id = TARIFFS.cached
tariff_id = TARIFFS.id_of
