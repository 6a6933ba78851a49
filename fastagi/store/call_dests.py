"""The Dial strings calls were granted to, shared between calls: a call row holds the id.

A number's or extension's destination is the same text on every call it takes, so `dests`
keeps each text once (migrations/0006_compact_calls.sql). As with tariff snapshots
(tariff_snapshots.py), the id of each text is remembered, and a remembered id is never
trusted blindly: the call's INSERT selects the row by id AND text.
"""

from __future__ import annotations

import sqlite3

DEST_IDS_MAX = 65_536  # distinct Dial strings remembered (one per number and extension)
_ids: dict[str, int] = {}


def cached_dest_id(dest: str) -> int | None:
    return _ids.get(dest)


def dest_id(conn: sqlite3.Connection, dest: str) -> int:
    """The id of this Dial string, added to `dests` if new (in the caller's transaction)."""
    row = conn.execute("SELECT id FROM dests WHERE dest = ?", (dest,)).fetchone()
    did: int = (
        row[0]
        if row is not None
        else conn.execute("INSERT INTO dests (dest) VALUES (?) RETURNING id", (dest,)).fetchall()[0][0]
    )
    if len(_ids) >= DEST_IDS_MAX:
        _ids.clear()
    _ids[dest] = did
    return did
