"""The face PostgreSQL shows the tx_*.py functions: the sqlite3 connection's, as far as they use it.

The transaction functions are written once, for both engines: `?` placeholders,
`conn.execute(sql, params)` returning a cursor (fetchone, fetchall, rowcount, iteration),
`executemany`, and rows indexable by position and by column name (sqlite3.Row). This
adapter gives a psycopg connection that face; each SQL string is translated once (cached):

- `?` outside string literals becomes psycopg's `%s`, `:name` becomes `%(name)s` (and a
  literal `%` becomes `%%`);
- a comment `/*pg TEXT*/` becomes TEXT: SQL only PostgreSQL needs, invisible to SQLite
  (the row locks `FOR UPDATE` that SQLite's one writer at a time makes unnecessary);
- the few functions named differently in the two dialects are swapped (PG_DIALECT).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Loader

TRANSLATED_SQL_MAX = 4096  # distinct SQL strings whose translation is kept

# SQLite spelling -> PostgreSQL spelling. json_group_object over no rows is '{}', PostgreSQL's
# json_object_agg is NULL; both are read back as text and parsed by the caller.
PG_DIALECT = (
    (
        "json_group_object(prefix, per_minute)",
        "coalesce(json_object_agg(prefix, per_minute)::text, '{}')",
    ),
)

_PG_ONLY = re.compile(r"/\*pg (.*?)\*/", re.DOTALL)
_NAME_START = re.compile(r"[A-Za-z_]").match


@functools.lru_cache(maxsize=TRANSLATED_SQL_MAX)
def to_pg(sql: str) -> str:
    """The PostgreSQL text of one SQLite-flavoured SQL string (see the module's docstring)."""
    sql = _PG_ONLY.sub(r"\1", sql)
    for sqlite_text, pg_text in PG_DIALECT:
        sql = sql.replace(sqlite_text, pg_text)
    out = []
    quoted = False
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == "'":
            quoted = not quoted
        if quoted:
            out.append("%%" if ch == "%" else ch)
        elif ch == "?":
            out.append("%s")
        elif ch == ":" and i + 1 < n and _NAME_START(sql[i + 1]) and (i == 0 or sql[i - 1] != ":"):
            j = i + 1  # a named parameter (:name, with a dict of params); `::type` is a cast
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            out.append(f"%({sql[i + 1 : j]})s")
            i = j
            continue
        else:
            out.append("%%" if ch == "%" else ch)
        i += 1
    return "".join(out)


class Row(tuple):
    """A result row indexable by position and by column name, like sqlite3.Row.

    One subclass per distinct column list (cached) holds the name -> position map, so a
    row costs a tuple and nothing more. A repeated name finds its first column, as in SQLite.
    """

    __slots__ = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        if type(key) is str:
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@functools.lru_cache(maxsize=TRANSLATED_SQL_MAX)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)
    return type("Row", (Row,), {"__slots__": (), "_index": index})


def row_factory(cursor: psycopg.Cursor[Any]) -> Any:
    desc = cursor.description
    if desc is None:
        return tuple
    return _row_class(tuple(d.name for d in desc))


class IntNumericLoader(Loader):
    """numeric as int when whole: sum() of a bigint column is numeric in PostgreSQL, an
    integer in SQLite, and the money code expects integers (minor units)."""

    def load(self, data: Any) -> Any:
        text = bytes(data)
        if b"." in text or b"N" in text:  # a fraction, or NaN
            return Decimal(text.decode())
        return int(text)


def configure_types(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("numeric", IntNumericLoader)


class PgConn:
    """A psycopg connection inside one transaction, with sqlite3's face (see the module)."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        cur.execute(to_pg(sql), params)  # always with params: `%%` is then read as `%`
        return cur

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        cur.executemany(to_pg(sql), list(seq))
        return cur
