"""The tariff snapshot a call is rated with, as stored in its row (JSON text)."""

from __future__ import annotations

import functools
import json
import sqlite3

from fastagi.core.rating import Tariff


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


# Snapshots are shared rows of `tariffs` (keyed by their JSON text); a call row holds the id.
# The id of each text is remembered here, so call setup writes its row in one statement.
# A remembered id is never trusted blindly: the call's INSERT selects the tariff row by id
# AND text, so an id from another database (or a rolled-back insert) inserts nothing and the
# caller looks the text up again (tariff_id).
TARIFF_IDS_MAX = 4096  # distinct snapshot texts remembered (few exist: plan x prefix rate)
_ids: dict[str, int] = {}


def cached_tariff_id(body: str) -> int | None:
    return _ids.get(body)


def tariff_id(conn: sqlite3.Connection, body: str) -> int:
    """The id of this snapshot text, added to `tariffs` if new (in the caller's transaction)."""
    row = conn.execute("SELECT id FROM tariffs WHERE body = ?", (body,)).fetchone()
    tid: int = row[0] if row is not None else _insert(conn, body)
    if len(_ids) >= TARIFF_IDS_MAX:
        _ids.clear()
    _ids[body] = tid
    return tid


def _insert(conn: sqlite3.Connection, body: str) -> int:
    tid: int = conn.execute("INSERT INTO tariffs (body) VALUES (?) RETURNING id", (body,)).fetchall()[0][0]
    return tid
