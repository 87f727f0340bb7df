"""`aiflow db`: where the history database is and which schema revision it is at; migrate it."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()

app = typer.Typer(help="The history database: its URL and schema migrations (Alembic).", no_args_is_help=True)

URL_OPTION = typer.Option(None, "--url", help="Database URL (default: $AIFLOW_DATABASE_URL, else the per-user "
                          "SQLite file).", show_default=False)


@app.command()
def upgrade(
    revision: str = typer.Argument("head", help="Target revision (\"head\", \"0001\", \"+1\")."),
    url: str | None = URL_OPTION,
) -> None:
    """Migrate the schema up to REVISION (every aiflow command does this to head on first use)."""
    from orchestrator.store import engine as db

    eng = db.make_engine(url)
    try:
        before = db.current_revision(eng)
        db.upgrade(eng, revision)
        after = db.current_revision(eng)
    finally:
        eng.dispose()
    console.print(f"{db.display_url(str(eng.url))}: {before or 'empty'} -> {after or 'empty'}", highlight=False)


@app.command()
def downgrade(
    revision: str = typer.Argument(..., help="Target revision (\"base\" drops every aiflow table, \"-1\").",
                                   show_default=False),
    url: str | None = URL_OPTION,
) -> None:
    """Migrate the schema down to REVISION. Data in the tables it drops is lost."""
    from orchestrator.store import engine as db

    eng = db.make_engine(url)
    try:
        before = db.current_revision(eng)
        db.downgrade(eng, revision)
        after = db.current_revision(eng)
    finally:
        eng.dispose()
    console.print(f"{db.display_url(str(eng.url))}: {before or 'empty'} -> {after or 'empty'}", highlight=False)


@app.command()
def current(url: str | None = URL_OPTION) -> None:
    """Print the schema revision the database is at, and the newest this aiflow knows."""
    from orchestrator.store import engine as db

    eng = db.make_engine(url)
    try:
        rev = db.current_revision(eng)
    finally:
        eng.dispose()
    head = db.head_revision()
    state = "up to date" if rev == head else ("empty: no aiflow tables yet" if rev is None else f"behind head {head}")
    if rev is not None and rev not in db.known_revisions():
        state = f"newer than this aiflow (head {head})"
    console.print(f"{rev or 'none'} ({state})", highlight=False)


@app.command()
def rollup(
    older_than: str | None = typer.Option(None, "--older-than", help="Delete raw rows older than this age (30m, "
                                          "12h, 7d) or ISO 8601 time; without it nothing is deleted.",
                                          show_default=False),
    url: str | None = URL_OPTION,
) -> None:
    """Summaries and retention by hand (the daemon runs them hourly): probe, node-sample and request rows of
    every finished hour are summarised into one row per hour and key (the time-window queries read those);
    raw rows before the --older-than cutoff are then deleted."""
    from orchestrator.cli.history_cmd import parse_time
    from orchestrator.store import Store
    from orchestrator.store.rollup import roll_up

    before = parse_time(older_than, "--older-than") if older_than is not None else None
    with Store.open(url) as store:
        result = roll_up(store.engine, before,
                         progress=lambda line: console.print(line, highlight=False, soft_wrap=True))
    console.print(result.line(), highlight=False, soft_wrap=True)


@app.command("url")
def show_url(url: str | None = URL_OPTION) -> None:
    """Print the database URL aiflow uses (password masked) and where it comes from."""
    import os

    from orchestrator.store import engine as db

    where = "--url" if url else ("$" + db.ENV_VAR if os.environ.get(db.ENV_VAR, "").strip() else "default")
    console.print(f"{db.display_url(db.resolve_url(url))} ({where})", highlight=False, soft_wrap=True)
