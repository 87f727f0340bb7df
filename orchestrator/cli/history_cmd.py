"""`aiflow history`: what the system did, as SQL over the history store's rows."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from profiler.errors import InputError


def _console() -> Console:
    # Piped to a file or a pager, a table should not wrap at Rich's default of 80 columns.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=160 if wide else None)

app = typer.Typer(help="History queries over the store: profiles, plans, solves, runs, probes, decisions, "
                  "migrations; sql for anything else (read-only).",
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


JSON = typer.Option(False, "--json", help="Same as --format json.")
CSV = typer.Option(False, "--csv", help="Same as --format csv.")
SINCE = typer.Option(None, "--since", help="From this time: ISO 8601 (UTC if no zone) or an age such as 30m, "
                     "2h, 7d.", show_default=False)
UNTIL = typer.Option(None, "--until", help="Before this time (same forms as --since).", show_default=False)
NODE = typer.Option(None, "--node", help="Only rows whose plan places units on this node (links: that touch it).",
                    show_default=False)
PLAN = typer.Option(None, "--plan", help="Only this plan version (the daemon's).", show_default=False)


def _format(fmt: Format, as_json: bool, as_csv: bool) -> Format:
    if as_json and as_csv:
        raise InputError("--json and --csv: choose one")
    return Format.json if as_json else Format.csv if as_csv else fmt


def _filters(since: str | None, until: str | None, model: str | None, node: str | None, plan: int | None) -> Any:
    from orchestrator.store.queries import Filters

    return Filters(since=parse_time(since, "--since"), until=parse_time(until, "--until"), model=model, node=node,
                   plan=plan)


def _show(kind: str, limit: int, fmt: Format, url: str | None, *, since: str | None = None,
          until: str | None = None, model: str | None = None, node: str | None = None, plan: int | None = None,
          as_json: bool = False, as_csv: bool = False) -> None:
    from orchestrator.store import Store
    from orchestrator.store.queries import history

    fmt = _format(fmt, as_json, as_csv)
    filters = _filters(since, until, model, node, plan)
    with Store.open(url) as store, store.engine.connect() as conn:
        rows = history(conn, kind, limit=limit, filters=filters)
    if fmt is Format.json:
        print(json.dumps([{k: _json_value(v) for k, v in r.items()} for r in rows], indent=2))
    elif fmt is Format.csv:
        from orchestrator.store.queries import COLUMNS
        print(_csv(COLUMNS[kind], ([r[c] for c in COLUMNS[kind]] for r in rows)), end="")
    else:
        _console().print(_table(kind, rows, model))


def _json_value(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def _csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A header line and one line per row (values in column order; times in ISO 8601)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_json_value(v) for v in r] for r in rows)
    return buf.getvalue()


# Short headers for the Rich table; JSON and CSV keep the column names.
HEADERS = {
    "created_at": "created", "measured_at": "measured", "applied_at": "applied", "param_bytes": "params",
    "mem_bytes": "memory", "predicted_latency_s": "predicted", "solve_time_s": "solve time", "profile_id": "profile",
    "network_id": "network", "plan_id": "plan", "measured_s": "measured", "predicted_s": "predicted",
    "bandwidth_bps": "bandwidth", "latency_s": "latency", "predicted_gain_s": "gain", "lasted_s": "lasted",
}
TABLE_OMITS = {"plans": ("model", "until", "network_id", "plan_id", "replaced"),
               "solves": ("model", "profile_id", "network_id", "objective")}
NUMERIC = ("id", "units", "runs", "version", "requests", "applied", "plan_id", "profile_id", "network_id", "gap",
           "ratio")


def _cell(column: str, v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, float):
        if column.endswith("_bps"):
            return f"{v / 1e6:.4g} Mbit/s"
        if column == "gap":
            return f"{v:.2%}"
        if column == "ratio":
            return f"{v:.3f}"
        if column.endswith("_s"):
            return f"{v * 1000:.4g} ms" if v < 1 else f"{v:.4g} s"
        return f"{v:.4g}"
    if isinstance(v, int) and column.endswith("_bytes"):
        return f"{v / 1e6:.3g} MB"
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _table(kind: str, rows: list[dict[str, Any]], model: str | None) -> Table:
    from orchestrator.store.queries import COLUMNS

    title = f"{kind}" + (f" of {model}" if model else "") + f" ({len(rows)} row{'s' if len(rows) != 1 else ''})"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    # The terminal table leaves out ids and inputs (JSON and CSV keep every column).
    columns = [c for c in COLUMNS[kind] if c not in TABLE_OMITS.get(kind, ())]
    for c in columns:
        numeric = c in NUMERIC or c.endswith(("_s", "_bytes", "_bps"))
        prose = c in ("reason", "why", "output")  # only free text wraps; times, numbers and placements stay whole
        table.add_column(HEADERS.get(c, c), justify="right" if numeric else "left", overflow="fold",
                         no_wrap=not prose, min_width=24 if prose else None)
    for r in rows:
        table.add_row(*(_cell(c, r[c]) for c in columns))
    return table


def _named(kind: str, doc: str) -> None:
    """Register `aiflow history KIND` with the filters and formats every named query takes."""

    def command(limit: int = LIMIT, since: str | None = SINCE, until: str | None = UNTIL,
                model: str | None = MODEL, node: str | None = NODE, plan: int | None = PLAN,
                fmt: Format = FORMAT, as_json: bool = JSON, as_csv: bool = CSV, url: str | None = URL) -> None:
        _show(kind, limit, fmt, url, since=since, until=until, model=model, node=node, plan=plan,
              as_json=as_json, as_csv=as_csv)

    command.__doc__ = doc
    command.__name__ = f"{kind}_"
    app.command(kind)(command)


_named("profiles", "Stored profiles: model, hardware classes, units, total parameter and memory bytes.")
_named("plans", "Each plan in force over time: when applied and until when, why (trigger, reason, snapshot, "
       "predicted gain over the plan it replaced), requests served on it.")
_named("solves", "Every solver run: status, solve time, objective, gap, placement, and whether it was applied "
       "(and why not).")
_named("runs", "Executed requests, one row each: measured vs predicted latency (ratio = measured / predicted).")
_named("probes", "Link measurements: bandwidth and latency, newest first (--node: links that touch it).")
_named("decisions", "The daemon's decisions: trigger, applied or not and why, both plans' latency, gain, "
       "migration cost.")
_named("migrations", "Each plan switch: version, placement before and after, how long it took, outcome, "
       "requests meanwhile.")


@app.command("sql")
def sql_(statement: str = typer.Argument(..., help="One SELECT statement.", show_default=False),
         limit: int = typer.Option(1000, "--limit", "-n", min=1, help="Show at most N rows."),
         fmt: Format = FORMAT, as_json: bool = JSON, as_csv: bool = CSV, url: str | None = URL) -> None:
    """Run one read-only query (the database refuses writes: a read-only file or transaction)."""
    from orchestrator.store import Store
    from orchestrator.store.readonly import read_only_query

    fmt = _format(fmt, as_json, as_csv)
    with Store.open(url) as store:
        columns, rows = read_only_query(store.engine, statement, limit=limit)
    records = [dict(zip(columns, r, strict=True)) for r in rows]
    if fmt is Format.json:
        print(json.dumps([{k: _json_value(v) for k, v in r.items()} for r in records], indent=2, default=str))
    elif fmt is Format.csv:
        print(_csv(columns, rows), end="")
    else:
        table = Table(title=f"{len(rows)} row{'s' if len(rows) != 1 else ''}", title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for c in columns:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*("-" if v is None else str(v) for v in r))
        _console().print(table)


# -- aggregates over time ------------------------------------------------------------------------------
WINDOW = typer.Option("1h", "--window", help="Width of each time window: 30s, 15m, 1h, 1d.")


def parse_time(value: str | None, option: str, now: datetime | None = None) -> datetime | None:
    """An ISO 8601 time (UTC when it has no zone) or an age before now ("90s", "30m", "2h", "7d")."""
    if value is None:
        return None
    from datetime import UTC, timedelta

    now = now or datetime.now(UTC)
    age = parse_seconds(value, option, quiet=True)
    if age is not None:
        return now - timedelta(seconds=age)
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{option}: expected an ISO 8601 time or an age such as 30m, got {value!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def parse_seconds(value: str, option: str, quiet: bool = False) -> float | None:
    """"90s", "30m", "2h", "7d" (or a plain number of seconds) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        if quiet:
            return None
        raise InputError(f"{option}: expected a duration such as 30s, 15m, 1h or 1d, got {value!r}") from None
    if not seconds > 0:
        raise InputError(f"{option}: must be positive, got {value!r}")
    return seconds


def _aggregate(kind: str, rows: list[dict[str, Any]], fmt: Format, title: str) -> None:
    from orchestrator.store.queries import AGGREGATE_COLUMNS

    columns = AGGREGATE_COLUMNS[kind]
    if fmt is Format.json:
        print(json.dumps([{k: _json_value(r[k]) for k in columns} for r in rows], indent=2))
        return
    if fmt is Format.csv:
        print(_csv(columns, ([r[c] for c in columns] for r in rows)), end="")
        return
    table = Table(title=f"{title} ({len(rows)} row{'s' if len(rows) != 1 else ''})", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for c in columns:
        numeric = c in NUMERIC or c.endswith(("_s", "_bps", "_share")) or c.startswith("slowdown") or c in (
            "requests", "samples", "plan_version")
        table.add_column(HEADERS.get(c, c), justify="right" if numeric else "left", overflow="fold")
    for r in rows:
        table.add_row(*(_cell(c, r[c]) for c in columns))
    _console().print(table)


@app.command("requests")
def requests_(model: str | None = MODEL, since: str | None = SINCE, until: str | None = UNTIL,
              plan: int | None = PLAN, node: str | None = NODE, fmt: Format = FORMAT, as_json: bool = JSON,
              as_csv: bool = CSV, url: str | None = URL) -> None:
    """Request latency percentiles per plan version, and the prediction error (median measured / predicted)."""
    from orchestrator.store import Store
    from orchestrator.store.queries import requests_summary

    lo, hi = parse_time(since, "--since"), parse_time(until, "--until")
    with Store.open(url) as store, store.engine.connect() as conn:
        rows = requests_summary(conn, model=model, since=lo, until=hi, plan=plan, node=node)
    _aggregate("requests", rows, _format(fmt, as_json, as_csv), "requests per plan version")


@app.command("links")
def links_(link: str | None = typer.Option(None, "--link", help="Only this link (e.g. edge~phone).",
                                           show_default=False),
           node: str | None = typer.Option(None, "--node", help="Only links that touch this node.",
                                           show_default=False),
           since: str | None = SINCE, until: str | None = UNTIL, window: str = WINDOW, fmt: Format = FORMAT,
           as_json: bool = JSON, as_csv: bool = CSV, url: str | None = URL) -> None:
    """Measured bandwidth and latency per link and time window (percentiles)."""
    from orchestrator.store import Store
    from orchestrator.store.queries import links_summary

    lo, hi, w = parse_time(since, "--since"), parse_time(until, "--until"), parse_seconds(window, "--window")
    with Store.open(url) as store, store.engine.connect() as conn:
        rows = links_summary(conn, window_s=w, link=link, since=lo, until=hi, node=node)
    _aggregate("links", rows, _format(fmt, as_json, as_csv), f"links per {window}")


@app.command("nodes")
def nodes_(node: str | None = typer.Option(None, "--node", help="Only this node.", show_default=False),
           since: str | None = SINCE, until: str | None = UNTIL, window: str = WINDOW, fmt: Format = FORMAT,
           as_json: bool = JSON, as_csv: bool = CSV, url: str | None = URL) -> None:
    """Each node's state (share of probes it was down) and estimated slowdown per time window."""
    from orchestrator.store import Store
    from orchestrator.store.queries import nodes_summary

    lo, hi, w = parse_time(since, "--since"), parse_time(until, "--until"), parse_seconds(window, "--window")
    with Store.open(url) as store, store.engine.connect() as conn:
        rows = nodes_summary(conn, window_s=w, node=node, since=lo, until=hi)
    _aggregate("nodes", rows, _format(fmt, as_json, as_csv), f"nodes per {window}")


@app.command("at")
def at_(time: str = typer.Argument(..., help="ISO 8601 (UTC if no zone) or an age such as 30m.", show_default=False),
        recent: str = typer.Option("5m", "--recent", help="How far back 'recent requests' reach."),
        fmt: Format = typer.Option(Format.table, "--format", "-f", help="table or json."),
        as_json: bool = JSON, url: str | None = URL) -> None:
    """The system at a moment: the network as last measured, the plan in force, the requests just before."""
    from orchestrator.store import Store
    from orchestrator.store.queries import state_at

    when = parse_time(time, "TIME")
    assert when is not None
    with Store.open(url) as store, store.engine.connect() as conn:
        state = state_at(conn, when, recent_s=parse_seconds(recent, "--recent"))
    if fmt is Format.json or as_json:
        print(json.dumps(state, indent=2, default=_json_value))
        return
    if fmt is Format.csv:
        raise InputError("--format: `history at` prints a table or json, not csv")
    console = _console()
    console.print(f"[bold]at {when.isoformat()}[/]", highlight=False)
    plan = state["plan"]
    console.print("plan in force: " + ("none" if plan is None else
                                       f"v{plan['version']} (plan {plan['plan_id']}, applied "
                                       f"{plan['applied_at']:%Y-%m-%d %H:%M:%S}): {plan['placement']}, predicted "
                                       f"{_cell('predicted_latency_s', plan['predicted_latency_s'])}"),
                  highlight=False)
    net = state["network"]
    if net is None:
        console.print("network: no snapshot before this time")
    else:
        t = Table(title=f"network snapshot {net['id']} ({net['origin']}, {net['taken_at']:%H:%M:%S})",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for c in ("link", "bandwidth", "latency"):
            t.add_column(c, justify="left" if c == "link" else "right")
        for lk in net["links"]:
            t.add_row(f"{lk['a']}~{lk['b']}", _cell("bandwidth_bps", float(lk["bandwidth_bps"])),
                      _cell("latency_s", float(lk.get("latency_s", 0.0))))
        console.print(t)
        console.print("nodes: " + ", ".join(f"{n['name']} ({n['hardware']}, slowdown {n.get('slowdown', 1.0):.2f})"
                                            for n in net["nodes"]), highlight=False)
    r = state["requests"]
    console.print(f"requests in the {recent} before: {r['count']}" + (
        f", p50 {_cell('p50_s', r['p50_s'])}, p90 {_cell('p90_s', r['p90_s'])}, measured / predicted "
        f"{r['ratio_median']:.3f}" if r["count"] and r["ratio_median"] is not None else ""), highlight=False)


@app.command("plot")
def plot_(metric: str = typer.Argument(..., help="links (bandwidth per link) or requests (latency per request)."),
          out: Path = typer.Option(..., "--out", help="PNG file to write."),
          since: str | None = SINCE, until: str | None = UNTIL, url: str | None = URL) -> None:
    """Draw on one time axis what people would rather look at than read: link bandwidth or request latency,
    with every plan switch marked."""
    from orchestrator.store import Store
    from orchestrator.store.plot import plot_history

    if metric not in ("links", "requests"):
        raise InputError(f"METRIC: expected links or requests, got {metric!r}")
    lo, hi = parse_time(since, "--since"), parse_time(until, "--until")
    with Store.open(url) as store, store.engine.connect() as conn:
        n = plot_history(conn, metric, out, since=lo, until=hi)
    print(f"{out}: {n} points, plan switches marked")
