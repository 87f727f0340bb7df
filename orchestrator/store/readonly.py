"""`aiflow history sql`: a query the named ones do not cover, on a connection that cannot write.

Read-only is enforced by the database, not by reading the statement's text:
- SQLite: the file is opened read-only (`mode=ro`), an authorizer lets through only reading actions
  (so no ATTACH, VACUUM INTO or PRAGMA, which could write elsewhere), one statement per call (the
  driver refuses more), and a progress handler stops a query that runs past its time.
- PostgreSQL: the transaction is `READ ONLY` before the statement runs (a read-only transaction
  cannot be made read-write once it has run a query), the statement runs as a server-side cursor
  (`DECLARE ... CURSOR FOR`, which takes a single SELECT or VALUES, without data-modifying WITH),
  under a `statement_timeout`, and the transaction is rolled back.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, StatementError

from profiler.errors import InputError

TIMEOUT_S = 30.0
# SQLite authorizer actions a read-only query may take (anything else is denied by the engine)
SQLITE_READING = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                            getattr(sqlite3, "SQLITE_RECURSIVE", 33)})


def read_only_query(engine: Engine, sql: str, *, limit: int = 1000,
                    timeout_s: float = TIMEOUT_S) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, at most `limit` rows) of `sql`, run where nothing can be written."""
    if not sql.strip():
        raise InputError("history sql: the statement is empty")
    backend = engine.url.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite(engine, sql, limit, timeout_s)
        if backend == "postgresql":
            return _postgres(engine, sql, limit, timeout_s)
    except (DBAPIError, StatementError, sqlite3.Error) as exc:
        cause = getattr(exc, "orig", None) or exc
        message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if "authoriz" in message:
            message += " (this connection only reads)"
        raise InputError(f"history sql: the database refused the statement: {message}") from None
    raise InputError(f"history sql: read-only queries are not supported on {backend}")


def _sqlite(engine: Engine, sql: str, limit: int, timeout_s: float) -> tuple[list[str], list[tuple[Any, ...]]]:
    path = engine.url.database
    if not path or path == ":memory:":
        raise InputError("history sql: needs a database file (an in-memory database has no history)")
    deadline = time.monotonic() + timeout_s
    conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True, timeout=5.0)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(lambda action, *_: sqlite3.SQLITE_OK if action in SQLITE_READING else sqlite3.SQLITE_DENY)
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
        cur = conn.execute(sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        rows = [tuple(r) for r in cur.fetchmany(limit)] if cur.description else []
        conn.rollback()
    finally:
        conn.close()
    return columns, rows


def _postgres(engine: Engine, sql: str, limit: int, timeout_s: float) -> tuple[list[str], list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        try:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
            result = conn.execution_options(stream_results=True, max_row_buffer=limit).exec_driver_sql(sql)
            columns = list(result.keys())
            rows = [tuple(r) for r in result.fetchmany(limit)]
            result.close()
        finally:
            conn.rollback()
    return columns, rows
