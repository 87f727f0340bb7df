"""Where the history database is, how to connect to it, and bringing its schema up to date.

The URL is the argument, else `$AIFLOW_DATABASE_URL`, else a SQLite file in the per-user data folder
(`$XDG_DATA_HOME/aiflow/history.db`, or `~/.local/share/aiflow/history.db`). Schema changes are
Alembic revisions only (the `migrations` package); the Alembic configuration is built here in code,
so it works from an installed package and from any working directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from profiler.errors import InputError

ENV_VAR = "AIFLOW_DATABASE_URL"
SQLITE_BUSY_TIMEOUT_S = 30.0
POSTGRES_CONNECT_TIMEOUT_S = 5
# Any fixed number: the key of the PostgreSQL advisory lock that serialises concurrent migrations.
_PG_MIGRATION_LOCK = 0x0A1F_0DB0


def default_sqlite_path() -> Path:
    """The per-user history file: $XDG_DATA_HOME/aiflow/history.db, else ~/.local/share/aiflow/history.db."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "aiflow" / "history.db"


def resolve_url(url: str | None = None) -> str:
    """The database URL to use: the argument, else $AIFLOW_DATABASE_URL, else the per-user SQLite file."""
    if url:
        return url
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    return f"sqlite:///{default_sqlite_path()}"


def display_url(url: str) -> str:
    """The URL with any password masked, for messages and `aiflow db url`."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InputError(f"database URL {url!r}: not a valid SQLAlchemy URL (e.g. sqlite:///path/history.db)") from None
    # Plain postgresql:// means psycopg2 to SQLAlchemy; this project ships psycopg 3.
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_file(parsed: URL) -> Path | None:
    db = parsed.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser()


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url` (resolved as in `resolve_url`), configured for several writing processes.

    Connects to nothing yet; bad URLs and missing drivers are InputErrors.
    """
    raw = resolve_url(url)
    parsed = _parse(raw)
    backend = parsed.get_backend_name()
    connect_args: dict[str, object] = {}
    if backend == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"database {display_url(raw)}: cannot create folder {path.parent}: "
                                 f"{exc.strerror}") from None
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_S
    elif backend == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    try:
        engine = create_engine(parsed, connect_args=connect_args)
    except ArgumentError as exc:
        raise InputError(f"database {display_url(raw)}: {exc}") from None
    except ImportError as exc:
        raise InputError(f"database {display_url(raw)}: the driver is not installed ({exc.name or exc})") from None
    if backend == "sqlite":
        _configure_sqlite(engine, in_memory=_sqlite_file(parsed) is None)
    return engine


def _configure_sqlite(engine: Engine, *, in_memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API objects
        # SQLAlchemy, not the sqlite3 module, emits BEGIN (see _on_begin): the module's legacy mode
        # would run DDL outside transactions, so a migration could be half applied.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if not in_memory:
            # WAL: readers never block the writer and the writer never blocks readers.
            cur.execute("PRAGMA journal_mode = WAL")
            # With WAL, NORMAL never corrupts the file; a power cut may lose the last commits only.
            # It saves an fsync per commit, which is most of a small write's cost.
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front and waits (busy_timeout) for it. A deferred
        # transaction that reads and then writes fails at once with "database is locked" when
        # another process committed in between, which is what several aiflow processes would do.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# -- Alembic -------------------------------------------------------------------------------------


def migrations_folder() -> Path:
    """The folder of the `migrations` package, wherever the project is installed."""
    import migrations

    # An editable install made before migrations/__init__.py existed imports it as a namespace
    # package (no __file__): take the folder on its path that holds env.py.
    candidates = [Path(migrations.__file__).parent] if migrations.__file__ else []
    candidates += [Path(p) for p in getattr(migrations, "__path__", [])]
    for folder in candidates:
        if (folder / "env.py").is_file():
            return folder.resolve()
    raise RuntimeError("the migrations package has no env.py; the aiflow installation is incomplete")


def alembic_config() -> Config:
    """The Alembic configuration, built in code: no alembic.ini and no working directory needed."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_folder()))
    return cfg


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = _script().get_current_head()
    assert head is not None, "the migrations package has no revisions"
    return head


def known_revisions() -> list[str]:
    """Every revision this code knows, oldest first."""
    return [r.revision for r in reversed(list(_script().walk_revisions()))]


def _connect(engine: Engine) -> Connection:
    try:
        return engine.connect()
    except (OperationalError, DBAPIError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise InputError(f"database {display_url(str(engine.url))}: cannot connect: {reason}") from None


def _current(conn: Connection) -> str | None:
    try:
        heads = MigrationContext.configure(conn).get_current_heads()
    except DBAPIError as exc:
        # Connected, but not to a database we can read (a SQLite path holding some other file, a
        # PostgreSQL role without rights).
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise InputError(f"database {display_url(str(conn.engine.url))}: cannot read: {reason}") from None
    return heads[0] if heads else None


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None: no aiflow schema yet)."""
    with _connect(engine) as conn:
        rev = _current(conn)
        conn.rollback()
        return rev


def _check_known(engine: Engine, rev: str | None) -> None:
    if rev is not None and rev not in known_revisions():
        raise InputError(
            f"database {display_url(str(engine.url))}: schema revision {rev!r} is newer than this aiflow "
            f"(it knows up to {head_revision()!r}); upgrade aiflow, or use another AIFLOW_DATABASE_URL")


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for a whole migration, holding a lock so concurrent first uses run it once."""
    with _connect(engine) as conn, conn.begin():
        # SQLite: the BEGIN IMMEDIATE above is the lock. PostgreSQL: an advisory lock, freed at commit.
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        yield conn


def _run(engine: Engine, action: str, revision: str) -> None:
    cfg = alembic_config()
    with _migration_transaction(engine) as conn:
        _check_known(engine, _current(conn))
        cfg.attributes["connection"] = conn
        try:
            getattr(command, action)(cfg, revision)
        except CommandError as exc:
            raise InputError(f"revision {revision!r}: {exc}") from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the schema up to `revision` (Alembic syntax: "head", "0001", "+1")."""
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the schema down to `revision` ("base" removes every aiflow table)."""
    _run(engine, "downgrade", revision)


def ensure_schema(engine: Engine) -> None:
    """Upgrade to head when the database is behind; a database newer than the code is an InputError."""
    rev = current_revision(engine)
    _check_known(engine, rev)
    if rev != head_revision():
        upgrade(engine, "head")
