"""History queries: SQL over the store's rows, returning plain rows (dicts of JSON-ready values).

Every query lists the newest rows first. The CLI (`aiflow history ...`) prints them as a table,
JSON or CSV; other code (the daemon, benchmarks) can call them directly.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import Connection, Select, func, select
from sqlalchemy.orm import aliased

from orchestrator.store.tables import (
    DecisionRow,
    HardwareClass,
    Model,
    NetworkRow,
    NodeSample,
    PlanApplication,
    PlanRow,
    ProbeRow,
    ProfileHardware,
    ProfileRow,
    ProfileUnit,
    RunRow,
)
from profiler.errors import InputError

HistoryKind = Literal["profiles", "plans", "solves", "runs", "probes", "decisions", "migrations"]
HISTORY_KINDS: tuple[str, ...] = get_args(HistoryKind)
Row = dict[str, Any]

# The columns each query returns, in order (also the CSV header of an empty result).
COLUMNS: dict[str, tuple[str, ...]] = {
    "profiles": ("id", "created_at", "model", "hardware", "units", "param_bytes", "mem_bytes", "weights"),
    "plans": ("id", "created_at", "model", "objective", "status", "predicted_latency_s", "placement", "applied_at",
              "runs"),
    "solves": ("id", "created_at", "model", "profile_id", "network_id", "objective", "solver", "status",
               "solve_time_s", "gap", "predicted_latency_s"),
    "runs": ("id", "created_at", "model", "plan_id", "strategy", "measured_s", "predicted_s", "ratio", "output"),
    "probes": ("id", "measured_at", "link", "bandwidth_bps", "latency_s"),
    "decisions": ("id", "created_at", "model", "trigger", "applied", "reason", "current_s", "candidate_s", "gain_s",
                  "migration_s", "placement"),
    "migrations": ("id", "applied_at", "model", "version", "placement", "previous", "finished_at", "duration_s",
                   "outcome", "runs_during"),
}


def _ordered(kind: str, row: Row) -> Row:
    return {k: row[k] for k in COLUMNS[kind]}


def _limited(q: Select, limit: int | None) -> Select:
    return q if limit is None else q.limit(limit)


def profiles(conn: Connection, *, limit: int | None = 20, model: str | None = None) -> list[Row]:
    """Stored profiles: model, hardware classes, unit count and total parameter and memory bytes."""
    totals = (select(ProfileUnit.profile_id, func.sum(ProfileUnit.param_bytes).label("param_bytes"),
                     func.sum(ProfileUnit.mem_bytes).label("mem_bytes"))
              .group_by(ProfileUnit.profile_id).subquery())
    q = (select(ProfileRow.id, ProfileRow.created_at, Model.name.label("model"), ProfileRow.n_units.label("units"),
                totals.c.param_bytes, totals.c.mem_bytes, Model.weights)
         .join(Model, Model.id == ProfileRow.model_id)
         .outerjoin(totals, totals.c.profile_id == ProfileRow.id)
         .order_by(ProfileRow.id.desc()))
    if model is not None:
        q = q.where(Model.name == model)
    rows = [dict(r._mapping) for r in conn.execute(_limited(q, limit))]
    hw_q = (select(ProfileHardware.profile_id, HardwareClass.name)
            .join(HardwareClass, HardwareClass.id == ProfileHardware.hardware_class_id)
            .where(ProfileHardware.profile_id.in_([r["id"] for r in rows])).order_by(HardwareClass.name))
    hardware: dict[int, list[str]] = {}
    for pid, name in conn.execute(hw_q):
        hardware.setdefault(pid, []).append(name)
    for r in rows:
        r["hardware"] = ",".join(hardware.get(r["id"], []))
        r["param_bytes"] = int(r["param_bytes"] or 0)
        r["mem_bytes"] = int(r["mem_bytes"] or 0)
    return [_ordered("profiles", r) for r in rows]


def plans(conn: Connection, *, limit: int | None = 20, model: str | None = None) -> list[Row]:
    """Stored plans: where the units went, the predicted latency, when applied and how often run."""
    applied = (select(PlanApplication.plan_id, func.max(PlanApplication.applied_at).label("applied_at"))
               .group_by(PlanApplication.plan_id).subquery())
    runs = select(RunRow.plan_id, func.count().label("runs")).group_by(RunRow.plan_id).subquery()
    q = (select(PlanRow.id, PlanRow.created_at, Model.name.label("model"), PlanRow.objective, PlanRow.status,
                PlanRow.predicted_latency_s, PlanRow.document, applied.c.applied_at, runs.c.runs)
         .join(Model, Model.id == PlanRow.model_id)
         .outerjoin(applied, applied.c.plan_id == PlanRow.id)
         .outerjoin(runs, runs.c.plan_id == PlanRow.id)
         .order_by(PlanRow.id.desc()))
    if model is not None:
        q = q.where(Model.name == model)
    out = []
    for r in conn.execute(_limited(q, limit)):
        row = dict(r._mapping)
        row["placement"] = placement_summary(row.pop("document").get("assignment", []))
        row["runs"] = int(row["runs"] or 0)
        out.append(_ordered("plans", row))
    return out


def solves(conn: Connection, *, limit: int | None = 20, model: str | None = None) -> list[Row]:
    """Every solve: solver, status, solve time and gap, with the profile and network it used."""
    q = (select(PlanRow.id, PlanRow.created_at, Model.name.label("model"), PlanRow.profile_id, PlanRow.network_id,
                PlanRow.objective, PlanRow.solver, PlanRow.status, PlanRow.solve_time_s, PlanRow.gap,
                PlanRow.predicted_latency_s)
         .join(Model, Model.id == PlanRow.model_id).order_by(PlanRow.id.desc()))
    if model is not None:
        q = q.where(Model.name == model)
    return [_ordered("solves", dict(r._mapping)) for r in conn.execute(_limited(q, limit))]


def runs(conn: Connection, *, limit: int | None = 20, model: str | None = None) -> list[Row]:
    """Executed requests: measured against predicted latency, and what came out."""
    q = (select(RunRow.id, RunRow.created_at, Model.name.label("model"), RunRow.plan_id, RunRow.strategy,
                RunRow.measured_s, RunRow.predicted_s, RunRow.output)
         .outerjoin(Model, Model.id == RunRow.model_id).order_by(RunRow.id.desc()))
    if model is not None:
        q = q.where(Model.name == model)
    out = []
    for r in conn.execute(_limited(q, limit)):
        row = dict(r._mapping)
        pred = row["predicted_s"]
        row["ratio"] = row["measured_s"] / pred if pred else None
        out.append(_ordered("runs", row))
    return out


def probes(conn: Connection, *, limit: int | None = 20, model: str | None = None) -> list[Row]:
    """Link measurements, newest first."""
    if model is not None:
        raise InputError("--model: probes measure links, not models; leave --model out for probes")
    q = (select(ProbeRow.id, ProbeRow.measured_at, ProbeRow.link, ProbeRow.bandwidth_bps, ProbeRow.latency_s)
         .order_by(ProbeRow.measured_at.desc(), ProbeRow.id.desc()))
    return [_ordered("probes", dict(r._mapping)) for r in conn.execute(_limited(q, limit))]


def decisions(conn: Connection, *, limit: int | None = 20, model: str | None = None) -> list[Row]:
    """The daemon's decisions: each candidate plan weighed against the plan in force, applied or not, and why."""
    q = (select(DecisionRow.id, DecisionRow.created_at, Model.name.label("model"), DecisionRow.trigger,
                DecisionRow.applied, DecisionRow.reason, DecisionRow.current_s, DecisionRow.candidate_s,
                DecisionRow.gain_s, DecisionRow.migration_s, PlanRow.document)
         .join(PlanRow, PlanRow.id == DecisionRow.candidate_plan_id)
         .join(Model, Model.id == PlanRow.model_id).order_by(DecisionRow.id.desc()))
    if model is not None:
        q = q.where(Model.name == model)
    out = []
    for r in conn.execute(_limited(q, limit)):
        row = dict(r._mapping)
        row["placement"] = placement_summary(row.pop("document").get("assignment", []))
        row["applied"] = bool(row["applied"])
        out.append(_ordered("decisions", row))
    return out


def migrations(conn: Connection, *, limit: int | None = 20, model: str | None = None) -> list[Row]:
    """Each plan switch: the versions, how long the old one lived on (until its last request finished and
    it was freed), the outcome, and the requests served in that time."""
    previous = aliased(PlanRow)
    q = (select(PlanApplication.id, PlanApplication.applied_at, Model.name.label("model"), PlanApplication.version,
                PlanRow.document, previous.document.label("previous_document"), PlanApplication.finished_at,
                PlanApplication.outcome)
         .join(PlanRow, PlanRow.id == PlanApplication.plan_id)
         .outerjoin(previous, previous.id == PlanApplication.previous_plan_id)
         .join(Model, Model.id == PlanRow.model_id)
         .order_by(PlanApplication.applied_at.desc(), PlanApplication.id.desc()))
    if model is not None:
        q = q.where(Model.name == model)
    out = []
    for r in conn.execute(_limited(q, limit)):
        row = dict(r._mapping)
        row["placement"] = placement_summary(row.pop("document").get("assignment", []))
        prev = row.pop("previous_document")
        row["previous"] = placement_summary(prev.get("assignment", [])) if prev else None
        start, end = row["applied_at"], row["finished_at"]
        row["duration_s"] = (end - start).total_seconds() if end is not None else None
        row["runs_during"] = int(conn.execute(
            select(func.count()).select_from(RunRow)
            .where(RunRow.created_at >= start, RunRow.created_at <= end)).scalar() or 0) if end is not None else None
        out.append(_ordered("migrations", row))
    return out


# -- aggregates over time (computed here, so they are the same on SQLite and PostgreSQL) -------------------
AGGREGATE_COLUMNS: dict[str, tuple[str, ...]] = {
    "requests": ("model", "plan_version", "placement", "requests", "p50_s", "p90_s", "p99_s", "mean_s",
                 "ratio_median", "first", "last"),
    "links": ("link", "window_start", "samples", "bandwidth_p10_bps", "bandwidth_p50_bps", "bandwidth_p90_bps",
              "latency_p50_s", "latency_p90_s"),
    "nodes": ("node", "window_start", "samples", "down_share", "slowdown_p50", "slowdown_p90"),
}


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between order statistics (None for no values)."""
    if not values:
        return None
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _window_start(t: datetime, window_s: float) -> datetime:
    epoch = t.timestamp()
    return datetime.fromtimestamp(epoch - epoch % window_s, tz=UTC)


def _by_window(rows: Any, name: str, at: str, window_s: float) -> list[tuple[tuple[str, datetime], list[Any]]]:
    """Rows grouped by (their `name` column, the window their `at` time falls in), in time order."""
    groups: dict[tuple[str, datetime], list[Any]] = {}
    for r in rows:
        groups.setdefault((getattr(r, name), _window_start(getattr(r, at), window_s)), []).append(r)
    return sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))


def _between(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    out = []
    if since is not None:
        out.append(column >= since)
    if until is not None:
        out.append(column < until)
    return out


def requests_summary(conn: Connection, *, model: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, plan: int | None = None) -> list[Row]:
    """Request latency percentiles per plan version (and placement), with the prediction error."""
    q = (select(RunRow.created_at, RunRow.measured_s, RunRow.predicted_s, RunRow.plan_version,
                Model.name.label("model"), PlanRow.document)
         .outerjoin(Model, Model.id == RunRow.model_id).outerjoin(PlanRow, PlanRow.id == RunRow.plan_id)
         .where(*_between(RunRow.created_at, since, until)))
    if model is not None:
        q = q.where(Model.name == model)
    if plan is not None:
        q = q.where(RunRow.plan_version == plan)
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for r in conn.execute(q):
        where = placement_summary(r.document.get("assignment", [])) if r.document else None
        groups.setdefault((r.model, r.plan_version, where), []).append(r)
    out = []
    for (name, version, where), rs in sorted(groups.items(), key=lambda kv: min(r.created_at for r in kv[1])):
        lat = [r.measured_s for r in rs]
        ratios = [r.measured_s / r.predicted_s for r in rs if r.predicted_s]
        out.append({"model": name, "plan_version": version, "placement": where, "requests": len(rs),
                    "p50_s": quantile(lat, 0.5), "p90_s": quantile(lat, 0.9), "p99_s": quantile(lat, 0.99),
                    "mean_s": sum(lat) / len(lat), "ratio_median": quantile(ratios, 0.5),
                    "first": min(r.created_at for r in rs), "last": max(r.created_at for r in rs)})
    return out


def links_summary(conn: Connection, *, window_s: float = 3600.0, link: str | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> list[Row]:
    """Measured bandwidth and latency per link and time window, as percentiles."""
    q = (select(ProbeRow.link, ProbeRow.measured_at, ProbeRow.bandwidth_bps, ProbeRow.latency_s)
         .where(*_between(ProbeRow.measured_at, since, until)).order_by(ProbeRow.measured_at))
    if link is not None:
        q = q.where(ProbeRow.link == link)
    out = []
    for (name, start), rs in _by_window(conn.execute(q), "link", "measured_at", window_s):
        bw = [r.bandwidth_bps for r in rs if r.bandwidth_bps is not None]
        lat = [r.latency_s for r in rs if r.latency_s is not None]
        out.append({"link": name, "window_start": start, "samples": len(rs),
                    "bandwidth_p10_bps": quantile(bw, 0.1), "bandwidth_p50_bps": quantile(bw, 0.5),
                    "bandwidth_p90_bps": quantile(bw, 0.9), "latency_p50_s": quantile(lat, 0.5),
                    "latency_p90_s": quantile(lat, 0.9)})
    return out


def nodes_summary(conn: Connection, *, window_s: float = 3600.0, node: str | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> list[Row]:
    """Each node's state and estimated slowdown per time window."""
    q = (select(NodeSample.node, NodeSample.measured_at, NodeSample.state, NodeSample.slowdown)
         .where(*_between(NodeSample.measured_at, since, until)).order_by(NodeSample.measured_at))
    if node is not None:
        q = q.where(NodeSample.node == node)
    out = []
    for (name, start), rs in _by_window(conn.execute(q), "node", "measured_at", window_s):
        slow = [r.slowdown for r in rs if r.slowdown is not None]
        out.append({"node": name, "window_start": start, "samples": len(rs),
                    "down_share": sum(r.state == "down" for r in rs) / len(rs),
                    "slowdown_p50": quantile(slow, 0.5), "slowdown_p90": quantile(slow, 0.9)})
    return out


QUERIES: dict[str, Callable[..., list[Row]]] = {
    "profiles": profiles, "plans": plans, "solves": solves, "runs": runs, "probes": probes,
    "decisions": decisions, "migrations": migrations,
}


def history(conn: Connection, kind: str, *, limit: int | None = 20, model: str | None = None) -> list[Row]:
    """Rows of one history kind (see HISTORY_KINDS)."""
    try:
        query = QUERIES[kind]
    except KeyError:
        raise InputError(f"history kind {kind!r}: expected one of {', '.join(HISTORY_KINDS)}") from None
    if limit is not None and limit < 1:
        raise InputError(f"--limit: must be at least 1, got {limit}")
    return query(conn, limit=limit, model=model)


def placement_summary(assignment: list[str]) -> str:
    """Runs of consecutive units on one node: "phone[0-3] edge[4-9] cloud[10-11]"."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(assignment) + 1):
        if i == len(assignment) or assignment[i] != assignment[start]:
            span = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
            parts.append(f"{assignment[start]}[{span}]")
            start = i
    return " ".join(parts)


def state_at(conn: Connection, at: datetime, *, recent_s: float = 300.0) -> Row:
    """The system at one moment: the newest network snapshot, the plan in force and the requests of the
    `recent_s` seconds before it."""
    from datetime import timedelta

    net = conn.execute(select(NetworkRow.id, NetworkRow.created_at, NetworkRow.origin, NetworkRow.document)
                       .where(NetworkRow.created_at <= at)
                       .order_by(NetworkRow.created_at.desc(), NetworkRow.id.desc()).limit(1)).first()
    app = conn.execute(select(PlanApplication.id, PlanApplication.applied_at, PlanApplication.version,
                              PlanApplication.plan_id, PlanRow.document, PlanRow.predicted_latency_s)
                       .join(PlanRow, PlanRow.id == PlanApplication.plan_id)
                       .where(PlanApplication.applied_at <= at)
                       .order_by(PlanApplication.applied_at.desc(), PlanApplication.id.desc()).limit(1)).first()
    runs = conn.execute(select(RunRow.measured_s, RunRow.predicted_s)
                        .where(RunRow.created_at <= at, RunRow.created_at > at - timedelta(seconds=recent_s))).all()
    latency = [r.measured_s for r in runs]
    ratios = [r.measured_s / r.predicted_s for r in runs if r.predicted_s]
    return {
        "at": at,
        "network": None if net is None else {"id": net.id, "taken_at": net.created_at, "origin": net.origin,
                                             "nodes": net.document.get("nodes", []),
                                             "links": net.document.get("links", [])},
        "plan": None if app is None else {"plan_id": app.plan_id, "version": app.version, "applied_at": app.applied_at,
                                          "placement": placement_summary(app.document.get("assignment", [])),
                                          "predicted_latency_s": app.predicted_latency_s},
        "requests": {"window_s": recent_s, "count": len(runs), "p50_s": quantile(latency, 0.5),
                     "p90_s": quantile(latency, 0.9), "ratio_median": quantile(ratios, 0.5)},
    }
