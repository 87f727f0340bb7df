"""`aiflow history`: what the system did, as SQL over the history store's rows."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()

app = typer.Typer(help="History queries over the store: profiles, plans, solves, runs, probes.",
                  no_args_is_help=True)


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


LIMIT = typer.Option(20, "--limit", "-n", min=1, help="Show at most N rows, newest first.")
MODEL = typer.Option(None, "--model", "-m", help="Only rows of this model.", show_default=False)
FORMAT = typer.Option(Format.table, "--format", "-f", help="table (Rich), json or csv.")
URL = typer.Option(None, "--url", help="Database URL (default: $AIFLOW_DATABASE_URL, else the per-user "
                   "SQLite file).", show_default=False)


def _show(kind: str, limit: int, model: str | None, fmt: Format, url: str | None) -> None:
    from orchestrator.store import Store
    from orchestrator.store.queries import history

    with Store.open(url) as store, store.engine.connect() as conn:
        rows = history(conn, kind, limit=limit, model=model)
    if fmt is Format.json:
        print(json.dumps([{k: _json_value(v) for k, v in r.items()} for r in rows], indent=2))
    elif fmt is Format.csv:
        print(_csv(kind, rows), end="")
    else:
        console.print(_table(kind, rows, model))


def _json_value(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def _csv(kind: str, rows: list[dict[str, Any]]) -> str:
    from orchestrator.store.queries import COLUMNS

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS[kind]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _json_value(v) for k, v in r.items()})
    return buf.getvalue()


def _cell(column: str, v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, float):
        if column.endswith("_bps"):
            return f"{v / 1e6:.3g} Mbit/s"
        if column == "gap":
            return f"{v:.2%}"
        if column == "ratio":
            return f"{v:.3f}"
        if column.endswith("_s"):
            return f"{v * 1000:.3f} ms" if v < 1 else f"{v:.3f} s"
        return f"{v:.4g}"
    if isinstance(v, int) and column.endswith("_bytes"):
        return f"{v / 1e6:.2f} MB"
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _table(kind: str, rows: list[dict[str, Any]], model: str | None) -> Table:
    title = f"{kind}" + (f" of {model}" if model else "") + f" ({len(rows)} row{'s' if len(rows) != 1 else ''})"
    table = Table(title=title, title_justify="left")
    from orchestrator.store.queries import COLUMNS

    columns = COLUMNS[kind]
    for c in columns:
        numeric = c in ("id", "units", "runs", "plan_id", "profile_id", "network_id") or c.endswith(("_s", "_bytes",
                                                                                                   "_bps", "ratio"))
        table.add_column(c, justify="right" if numeric or c == "gap" else "left", overflow="fold")
    for r in rows:
        table.add_row(*(_cell(c, r[c]) for c in columns))
    return table


@app.command("profiles")
def profiles_(limit: int = LIMIT, model: str | None = MODEL, fmt: Format = FORMAT, url: str | None = URL) -> None:
    """Stored profiles: model, hardware classes, units, total parameter and memory bytes."""
    _show("profiles", limit, model, fmt, url)


@app.command("plans")
def plans_(limit: int = LIMIT, model: str | None = MODEL, fmt: Format = FORMAT, url: str | None = URL) -> None:
    """Stored plans: placement, predicted latency, when applied, how many requests ran on each."""
    _show("plans", limit, model, fmt, url)


@app.command("solves")
def solves_(limit: int = LIMIT, model: str | None = MODEL, fmt: Format = FORMAT, url: str | None = URL) -> None:
    """Every solve: solver, status, solve time, gap, and the profile and network it used."""
    _show("solves", limit, model, fmt, url)


@app.command("runs")
def runs_(limit: int = LIMIT, model: str | None = MODEL, fmt: Format = FORMAT, url: str | None = URL) -> None:
    """Executed requests: measured vs predicted latency (ratio = measured / predicted) and output."""
    _show("runs", limit, model, fmt, url)


@app.command("probes")
def probes_(limit: int = LIMIT, fmt: Format = FORMAT, url: str | None = URL) -> None:
    """Link measurements: bandwidth and latency, newest first."""
    _show("probes", limit, None, fmt, url)
