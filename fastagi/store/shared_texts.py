"""Texts many call rows share, kept once in a table of their own; a call row holds the id.

Tariff snapshots (`tariffs.body`) and Dial strings (`dests.dest`) are the same text on
call after call. The id of each text is remembered here, so call setup writes its row in
one statement. A remembered id is never trusted blindly: the call's INSERT selects the row
by id AND text, so an id from another database (or a rolled-back insert) inserts nothing
and the caller looks the text up again (`id_of`).
"""

from __future__ import annotations

import sqlite3


class SharedTexts:
    """One table of shared texts (`table(id, column UNIQUE)`) and the ids remembered of it."""

    def __init__(self, table: str, column: str, remembered_max: int) -> None:
        self.remembered_max = remembered_max  # distinct texts remembered; then forgotten at once
        self._select = f"SELECT id FROM {table} WHERE {column} = ?"
        self._insert = f"INSERT INTO {table} ({column}) VALUES (?) RETURNING id"
        self._ids: dict[str, int] = {}

    def cached(self, text: str) -> int | None:
        return self._ids.get(text)

    def id_of(self, conn: sqlite3.Connection, text: str) -> int:
        """The id of this text, added to the table if new (in the caller's transaction)."""
        row = conn.execute(self._select, (text,)).fetchone()
        tid: int = row[0] if row is not None else conn.execute(self._insert, (text,)).fetchall()[0][0]
        if len(self._ids) >= self.remembered_max:
            self._ids.clear()
        self._ids[text] = tid
        return tid


# few tariff snapshots exist (plan x prefix rate); one Dial string per number and extension
TARIFFS = SharedTexts("tariffs", "body", 4096)
DESTS = SharedTexts("dests", "dest", 65_536)
