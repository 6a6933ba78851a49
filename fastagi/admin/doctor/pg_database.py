"""Doctor's database check on PostgreSQL: one read-only connection; never creates or migrates."""

from __future__ import annotations

from fastagi.admin.doctor.findings import FAIL, OK, WARN, Finding
from fastagi.store.factory import redact
from fastagi.store.sqlite import SCHEMA_VERSION

CONNECT_TIMEOUT_S = 3


def check_pg_database(url: str, facts: object) -> Finding:
    """Fills facts.langs and facts.number (database.DbFacts) like the SQLite check."""
    import psycopg  # noqa: PLC0415  (only for a postgresql:// database)

    from fastagi.store.pg import scalar  # noqa: PLC0415

    shown = redact(url)
    init = f"extbill db init --db {shown}"
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = on")
            if not scalar(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL"):
                return Finding(FAIL, "database", f"database: {shown} has no extbill schema", init)
            version = scalar(conn, "SELECT coalesce(max(version), 0) FROM schema_migrations")
            rows = []
            if version == SCHEMA_VERSION:
                rows = conn.execute("SELECT number, lang FROM numbers ORDER BY id").fetchall()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Finding(
            FAIL,
            "database",
            f"database: cannot reach {shown}: {first}",
            "check the URL (host, port, user, database) and that PostgreSQL accepts this host "
            "(pg_hba.conf); test with: psql 'URL'",
        )
    if version != SCHEMA_VERSION:
        newer = version > SCHEMA_VERSION
        return Finding(
            FAIL,
            "database",
            f"database: {shown} has schema version {version}, this extbill needs {SCHEMA_VERSION}",
            "upgrade extbill to the version that wrote this database" if newer else f"{init}   (migrates it)",
        )
    facts.langs = {lang for _, lang in rows}  # type: ignore[attr-defined]
    facts.number = rows[0][0] if rows else None  # type: ignore[attr-defined]
    if not rows:
        return Finding(
            WARN,
            "database",
            f"database: {shown} is an extbill database (schema version {version}) with no 400 numbers yet",
            "extbill number add 400XXXXXXX --name NAME --plan PLAN (see extbill number add --help)",
        )
    return Finding(
        OK,
        "database",
        f"database: {shown} is an extbill database on PostgreSQL (schema version {version}, "
        f"{len(rows)} number{'s' if len(rows) != 1 else ''}, languages {', '.join(sorted(facts.langs))})",  # type: ignore[attr-defined]
    )
