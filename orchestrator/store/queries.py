"""History queries: SQL over the store's rows, returning plain rows (dicts of JSON-ready values).

Every query lists the newest rows first. The CLI (`aiflow history ...`) prints them as a table,
JSON or CSV; other code (the daemon, benchmarks) can call them directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import Connection, Select, func, or_, select
from sqlalchemy.orm import aliased

from orchestrator.store.coverage import plan_reads, read_mark
from orchestrator.store.rollup import node_part, probe_part, run_part
from orchestrator.store.summaries import (
    EPOCH,
    Part,
    combine,
    merge,
    node_parts,
    probe_parts,
    quantile,
    request_parts,
    time_between,
    window_start,
)
from orchestrator.store.tables import (
    DecisionRow,
    HardwareClass,
    Model,
    NetworkRow,
    NodeSampleHour,
    PlanApplication,
    PlanRow,
    ProbeHour,
    ProbeRow,
    ProfileHardware,
    ProfileRow,
    ProfileUnit,
    RunHour,
    RunRow,
)
from profiler.errors import InputError

HistoryKind = Literal["profiles", "plans", "solves", "runs", "probes", "decisions", "migrations"]
HISTORY_KINDS: tuple[str, ...] = get_args(HistoryKind)
Row = dict[str, Any]

# The columns each query returns, in order (also the CSV header of an empty result).
COLUMNS: dict[str, tuple[str, ...]] = {
    "profiles": ("id", "created_at", "model", "hardware", "units", "param_bytes", "mem_bytes", "weights"),
    "plans": ("id", "version", "applied_at", "until", "lasted_s", "model", "placement", "mode", "k",
              "predicted_latency_s",
              "replaced", "predicted_gain_s", "trigger", "reason", "network_id", "plan_id", "requests"),
    "solves": ("id", "created_at", "model", "profile_id", "network_id", "objective", "solver", "status",
               "solve_time_s", "gap", "predicted_latency_s", "placement", "mode", "k", "trigger", "applied", "why"),
    "runs": ("id", "created_at", "model", "plan_id", "plan_version", "strategy", "measured_s", "predicted_s", "ratio",
             "output"),
    "probes": ("id", "measured_at", "link", "bandwidth_bps", "latency_s", "kind"),
    "decisions": ("id", "created_at", "model", "trigger", "applied", "reason", "current_s", "candidate_s", "gain_s",
                  "migration_s", "placement", "mode", "k"),
    "migrations": ("id", "applied_at", "model", "version", "placement", "previous", "finished_at", "duration_s",
                   "outcome", "runs_during"),
}


@dataclass(frozen=True)
class Filters:
    """What every named query can be narrowed by (None: no filter). `plan` is the daemon's plan version;
    `node` keeps rows whose plan places a unit on that node (or, for links, whose link touches it)."""

    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None
    node: str | None = None
    plan: int | None = None


def _ordered(kind: str, row: Row) -> Row:
    return {k: row[k] for k in COLUMNS[kind]}


def _limited(q: Select, limit: int | None) -> Select:
    return q if limit is None else q.limit(limit)


def _take(rows: list[Row], limit: int | None) -> list[Row]:
    return rows if limit is None else rows[:limit]


def _uses(document: dict[str, Any] | None, node: str | None) -> bool:
    return node is None or (document is not None and node in document.get("assignment", []))


def link_nodes(link: str) -> list[str]:
    """The two ends of a link named "a~b" (either way) or "a->b" (one way)."""
    for sep in ("~", "->"):
        if sep in link:
            return link.split(sep, 1)
    return [link]


def profiles(conn: Connection, *, limit: int | None = 20, f: Filters = Filters()) -> list[Row]:
    """Stored profiles: model, hardware classes, unit count and total parameter and memory bytes."""
    if f.node is not None or f.plan is not None:
        raise InputError("--node/--plan: profiles belong to models, not to nodes or plans; use --model")
    totals = (select(ProfileUnit.profile_id, func.sum(ProfileUnit.param_bytes).label("param_bytes"),
                     func.sum(ProfileUnit.mem_bytes).label("mem_bytes"))
              .group_by(ProfileUnit.profile_id).subquery())
    q = (select(ProfileRow.id, ProfileRow.created_at, Model.name.label("model"), ProfileRow.n_units.label("units"),
                totals.c.param_bytes, totals.c.mem_bytes, Model.weights)
         .join(Model, Model.id == ProfileRow.model_id)
         .outerjoin(totals, totals.c.profile_id == ProfileRow.id)
         .where(*time_between(ProfileRow.created_at, f.since, f.until))
         .order_by(ProfileRow.id.desc()))
    if f.model is not None:
        q = q.where(Model.name == f.model)
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


def plans(conn: Connection, *, limit: int | None = 20, f: Filters = Filters()) -> list[Row]:
    """Each plan in force over time (newest first): when it was applied and until when, why (the decision's
    trigger and reason, the snapshot it was solved for, the predicted gain over the plan it replaced), and
    the requests served on it."""
    previous = aliased(PlanRow)
    q = (select(PlanApplication.id, PlanApplication.version, PlanApplication.applied_at, PlanApplication.plan_id,
                Model.name.label("model"), PlanRow.document, PlanRow.predicted_latency_s, PlanRow.mode, PlanRow.k,
                PlanRow.network_id.label("plan_network_id"), previous.document.label("previous_document"),
                DecisionRow.gain_s, DecisionRow.trigger, DecisionRow.reason,
                DecisionRow.network_id.label("decision_network_id"))
         .join(PlanRow, PlanRow.id == PlanApplication.plan_id)
         .join(Model, Model.id == PlanRow.model_id)
         .outerjoin(previous, previous.id == PlanApplication.previous_plan_id)
         .outerjoin(DecisionRow, DecisionRow.id == PlanApplication.decision_id)
         .order_by(PlanApplication.applied_at, PlanApplication.id))
    if f.model is not None:
        q = q.where(Model.name == f.model)
    if f.until is not None:
        q = q.where(PlanApplication.applied_at < f.until)
    apps = [dict(r._mapping) for r in conn.execute(q)]
    # A plan is in force until the next one of its model is applied.
    following: dict[str, datetime | None] = {}
    for a in reversed(apps):
        a["until"] = following.get(a["model"])
        following[a["model"]] = a["applied_at"]
    out = []
    for a in reversed(apps):
        if f.since is not None and a["until"] is not None and a["until"] <= f.since:
            continue
        if (f.plan is not None and a["version"] != f.plan) or not _uses(a["document"], f.node):
            continue
        prev = a.pop("previous_document")
        a["replaced"] = placement_summary(prev.get("assignment", [])) if prev else None
        a["placement"] = placement_summary(a.pop("document").get("assignment", []))
        a["lasted_s"] = (a["until"] - a["applied_at"]).total_seconds() if a["until"] is not None else None
        a["predicted_gain_s"] = a.pop("gain_s")
        a["network_id"] = a.pop("decision_network_id") or a.pop("plan_network_id")
        out.append(a)
        if limit is not None and len(out) == limit:
            break
    for a in out:
        a["requests"] = _requests_on(conn, a)
    return [_ordered("plans", a) for a in out]


def _requests_on(conn: Connection, app: Row) -> int:
    """Requests served on one application of a plan: its version's rows (the daemon's), or the plan's rows in
    the time it was in force (runs recorded without a version); raw rows and hourly summaries (store/coverage.py)."""
    raw_where = [RunRow.plan_id == app["plan_id"]]
    hour_where = [RunHour.plan_id == app["plan_id"]]
    since = until = None
    if app["version"] is not None:
        raw_where.append(RunRow.plan_version == app["version"])
        hour_where.append(RunHour.plan_version == app["version"])
    else:
        since, until = app["applied_at"], app["until"]
    reads = plan_reads(read_mark(conn, "runs"), since, until, whole_hours=True)
    ranges = [(lo, hi, None) for lo, hi in reads.raw]
    if reads.late is not None:
        ranges.append((*reads.late[1], reads.late[0]))
    n = 0
    for lo, hi, after in ranges:
        q = select(func.count()).select_from(RunRow).where(*raw_where, *time_between(RunRow.created_at, lo, hi))
        n += int(conn.execute(q if after is None else q.where(RunRow.id > after)).scalar() or 0)
    if reads.summaries is not None:
        n += int(conn.execute(select(func.coalesce(func.sum(RunHour.requests), 0))
                              .where(*hour_where, *time_between(RunHour.hour, *reads.summaries))).scalar() or 0)
    return n


def solves(conn: Connection, *, limit: int | None = 20, f: Filters = Filters()) -> list[Row]:
    """Every solver run: status, solve time, objective, gap, where it put the units, and whether it was applied
    (and why not: the decision's reason)."""
    applied = select(PlanApplication.plan_id).where(PlanApplication.plan_id == PlanRow.id).exists()
    q = (select(PlanRow.id, PlanRow.created_at, Model.name.label("model"), PlanRow.profile_id, PlanRow.network_id,
                PlanRow.objective, PlanRow.solver, PlanRow.status, PlanRow.solve_time_s, PlanRow.gap,
                PlanRow.predicted_latency_s, PlanRow.mode, PlanRow.k, PlanRow.document, DecisionRow.trigger,
                DecisionRow.reason, applied.label("was_applied"))
         .join(Model, Model.id == PlanRow.model_id)
         .outerjoin(DecisionRow, DecisionRow.candidate_plan_id == PlanRow.id)
         .where(*time_between(PlanRow.created_at, f.since, f.until))
         .order_by(PlanRow.id.desc()))
    if f.model is not None:
        q = q.where(Model.name == f.model)
    if f.plan is not None:
        q = q.where(PlanRow.id.in_(select(PlanApplication.plan_id).where(PlanApplication.version == f.plan)))
    out = []
    for r in conn.execute(q if f.node is not None else _limited(q, limit)):
        row = dict(r._mapping)
        doc = row.pop("document")
        if not _uses(doc, f.node):
            continue
        row["placement"] = placement_summary(doc.get("assignment", []))
        # applied: put into service (a plan_applications row); a decision to apply whose switch failed is not
        row["applied"] = bool(row.pop("was_applied"))
        row["why"] = row.pop("reason")
        out.append(_ordered("solves", row))
    return _take(out, limit)


def _plans_using(conn: Connection, node: str) -> list[int]:
    return [pid for pid, doc in conn.execute(select(PlanRow.id, PlanRow.document)) if _uses(doc, node)]


def runs(conn: Connection, *, limit: int | None = 20, f: Filters = Filters()) -> list[Row]:
    """Executed requests: measured against predicted latency, and what came out."""
    q = (select(RunRow.id, RunRow.created_at, Model.name.label("model"), RunRow.plan_id, RunRow.plan_version,
                RunRow.strategy, RunRow.measured_s, RunRow.predicted_s, RunRow.output)
         .outerjoin(Model, Model.id == RunRow.model_id)
         .where(*time_between(RunRow.created_at, f.since, f.until))
         .order_by(RunRow.id.desc()))
    if f.model is not None:
        q = q.where(Model.name == f.model)
    if f.plan is not None:
        q = q.where(RunRow.plan_version == f.plan)
    if f.node is not None:
        q = q.where(RunRow.plan_id.in_(_plans_using(conn, f.node)))
    out = []
    for r in conn.execute(_limited(q, limit)):
        row = dict(r._mapping)
        pred = row["predicted_s"]
        row["ratio"] = row["measured_s"] / pred if pred else None
        out.append(_ordered("runs", row))
    return out


def probes(conn: Connection, *, limit: int | None = 20, f: Filters = Filters()) -> list[Row]:
    """Link measurements, newest first."""
    if f.model is not None or f.plan is not None:
        raise InputError("--model/--plan: probes measure links, not models or plans; use --node or --since")
    q = (select(ProbeRow.id, ProbeRow.measured_at, ProbeRow.link, ProbeRow.bandwidth_bps, ProbeRow.latency_s,
                ProbeRow.kind)
         .where(*time_between(ProbeRow.measured_at, f.since, f.until))
         .order_by(ProbeRow.measured_at.desc(), ProbeRow.id.desc()))
    if f.node is not None:
        # Patterns, not a list of distinct links: that would scan every probe row (8 s at 52 M rows). Walking the
        # time index newest first, the first matches come at once.
        node = f.node.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(or_(*(ProbeRow.link.like(pattern, escape="\\") for pattern in (
            f"{node}~%", f"%~{node}", f"{node}->%", f"%->{node}"))))
    return [_ordered("probes", dict(r._mapping)) for r in conn.execute(_limited(q, limit))]


def decisions(conn: Connection, *, limit: int | None = 20, f: Filters = Filters()) -> list[Row]:
    """The daemon's decisions: each candidate plan weighed against the plan in force, applied or not, and why."""
    q = (select(DecisionRow.id, DecisionRow.created_at, Model.name.label("model"), DecisionRow.trigger,
                DecisionRow.applied, DecisionRow.reason, DecisionRow.current_s, DecisionRow.candidate_s,
                DecisionRow.gain_s, DecisionRow.migration_s, PlanRow.mode, PlanRow.k, PlanRow.document)
         .join(PlanRow, PlanRow.id == DecisionRow.candidate_plan_id)
         .join(Model, Model.id == PlanRow.model_id)
         .where(*time_between(DecisionRow.created_at, f.since, f.until))
         .order_by(DecisionRow.id.desc()))
    if f.model is not None:
        q = q.where(Model.name == f.model)
    if f.plan is not None:
        q = q.where(DecisionRow.id.in_(select(PlanApplication.decision_id).where(PlanApplication.version == f.plan)))
    out = []
    for r in conn.execute(q if f.node is not None else _limited(q, limit)):
        row = dict(r._mapping)
        doc = row.pop("document")
        if not _uses(doc, f.node):
            continue
        row["placement"] = placement_summary(doc.get("assignment", []))
        row["applied"] = bool(row["applied"])
        out.append(_ordered("decisions", row))
    return _take(out, limit)


def migrations(conn: Connection, *, limit: int | None = 20, f: Filters = Filters()) -> list[Row]:
    """Each plan switch: the versions, how long the old one lived on (until its last request finished and
    it was freed), the outcome, and the requests served in that time."""
    previous = aliased(PlanRow)
    q = (select(PlanApplication.id, PlanApplication.applied_at, Model.name.label("model"), PlanApplication.version,
                PlanRow.document, previous.document.label("previous_document"), PlanApplication.finished_at,
                PlanApplication.outcome)
         .join(PlanRow, PlanRow.id == PlanApplication.plan_id)
         .outerjoin(previous, previous.id == PlanApplication.previous_plan_id)
         .join(Model, Model.id == PlanRow.model_id)
         .where(*time_between(PlanApplication.applied_at, f.since, f.until))
         .order_by(PlanApplication.applied_at.desc(), PlanApplication.id.desc()))
    if f.model is not None:
        q = q.where(Model.name == f.model)
    if f.plan is not None:
        q = q.where(PlanApplication.version == f.plan)
    out = []
    for r in conn.execute(q if f.node is not None else _limited(q, limit)):
        row = dict(r._mapping)
        doc, prev = row.pop("document"), row.pop("previous_document")
        if not (_uses(doc, f.node) or (prev is not None and _uses(prev, f.node))):
            continue
        row["placement"] = placement_summary(doc.get("assignment", []))
        row["previous"] = placement_summary(prev.get("assignment", [])) if prev else None
        start, end = row["applied_at"], row["finished_at"]
        row["duration_s"] = (end - start).total_seconds() if end is not None else None
        row["runs_during"] = int(conn.execute(
            select(func.count()).select_from(RunRow)
            .where(RunRow.created_at >= start, RunRow.created_at <= end)).scalar() or 0) if end is not None else None
        out.append(_ordered("migrations", row))
    return _take(out, limit)


# -- aggregates over time: raw rows and hourly roll-ups, summarised in store/summaries.py --------------------
AGGREGATE_COLUMNS: dict[str, tuple[str, ...]] = {
    "requests": ("model", "plan_version", "placement", "requests", "p50_s", "p90_s", "p99_s", "mean_s",
                 "ratio_median", "first", "last"),
    "links": ("link", "window_start", "samples", "bandwidth_p10_bps", "bandwidth_p50_bps", "bandwidth_p90_bps",
              "latency_p50_s", "latency_p90_s"),
    "nodes": ("node", "window_start", "samples", "down_share", "slowdown_p50", "slowdown_p90"),
}


def _window_parts(conn: Connection, raw_table: str, window_s: float | None, since: datetime | None,
                  until: datetime | None, raw: Callable[..., list[Part]], summaries: Callable[[Any, Any], Select],
                  part_of: Callable[[Any], Part]) -> list[Part]:
    """The parts of [since, until): hourly summaries where they hold, raw rows elsewhere (store/coverage.py).
    `raw(since=, until=, after_id=)` summarises raw rows; `summaries(lo, hi)` selects summary rows by hour."""
    whole = window_s is None or (window_s >= 3600 and window_s % 3600 == 0)
    reads = plan_reads(read_mark(conn, raw_table), since, until, whole_hours=whole)
    parts = [p for lo, hi in reads.raw for p in raw(since=lo, until=hi)]
    if reads.late is not None:
        after, (lo, hi) = reads.late
        parts += raw(since=lo, until=hi, after_id=after)
    if reads.summaries is not None:
        for h in conn.execute(summaries(*reads.summaries)):
            p = part_of(h)
            p.start = EPOCH if window_s is None else window_start(p.start, window_s)
            parts.append(p)
    return parts


def requests_summary(conn: Connection, *, model: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, plan: int | None = None, node: str | None = None) -> list[Row]:
    """Request latency percentiles per plan version (and placement), with the prediction error."""
    model_id = None
    if model is not None:
        model_id = conn.execute(select(Model.id).where(Model.name == model)).scalar()
        if model_id is None:
            return []
    def run_hours(lo: Any, hi: Any) -> Select:
        q = select(RunHour).where(*time_between(RunHour.hour, lo, hi))
        if plan is not None:
            q = q.where(RunHour.plan_version == plan)
        return q if model_id is None else q.where(RunHour.model_id == model_id)

    parts = _window_parts(conn, "runs", None, since, until,
                          lambda **kw: request_parts(conn, None, plan_version=plan, model_id=model_id, **kw),
                          run_hours, run_part)
    plan_ids = {p.key[1] for p in parts if p.key[1] is not None}
    docs = {i: d for i, d in conn.execute(select(PlanRow.id, PlanRow.document).where(PlanRow.id.in_(plan_ids)))}
    names = {i: n for i, n in conn.execute(select(Model.id, Model.name))}
    groups: dict[tuple[Any, ...], list[Part]] = {}
    for p in parts:
        model_id_, plan_id, version, _ = p.key
        doc = docs.get(plan_id)
        if not _uses(doc, node):
            continue
        where = placement_summary(doc.get("assignment", [])) if doc else None
        groups.setdefault((names.get(model_id_), version, where), []).append(p)
    out = []
    for (name, version, where), ps in groups.items():
        c = combine(ps)
        out.append({"model": name, "plan_version": version, "placement": where, "requests": c.samples,
                    "p50_s": c.stats["p50_s"], "p90_s": c.stats["p90_s"], "p99_s": c.stats["p99_s"],
                    "mean_s": c.stats["mean_s"], "ratio_median": c.stats["ratio_median"],
                    "first": c.first, "last": c.last})
    return sorted(out, key=lambda r: r["first"])


def links_summary(conn: Connection, *, window_s: float = 3600.0, link: str | None = None,
                  since: datetime | None = None, until: datetime | None = None,
                  node: str | None = None) -> list[Row]:
    """Measured bandwidth and latency per link and time window, as percentiles."""
    def probe_hours(lo: Any, hi: Any) -> Select:
        q = select(ProbeHour).where(*time_between(ProbeHour.hour, lo, hi))
        return q if link is None else q.where(ProbeHour.link == link)

    parts = _window_parts(conn, "probes", window_s, since, until,
                          lambda **kw: probe_parts(conn, window_s, link=link, **kw), probe_hours, probe_part)
    out = []
    for p in merge(parts):
        if node is not None and node not in link_nodes(p.key[0]):
            continue
        out.append({"link": p.key[0], "window_start": p.start, "samples": p.samples,
                    **{k: p.stats[k] for k in AGGREGATE_COLUMNS["links"][3:]}})
    return out


def nodes_summary(conn: Connection, *, window_s: float = 3600.0, node: str | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> list[Row]:
    """Each node's state and estimated slowdown per time window."""
    def node_hours(lo: Any, hi: Any) -> Select:
        q = select(NodeSampleHour).where(*time_between(NodeSampleHour.hour, lo, hi))
        return q if node is None else q.where(NodeSampleHour.node == node)

    parts = _window_parts(conn, "node_samples", window_s, since, until,
                          lambda **kw: node_parts(conn, window_s, node=node, **kw), node_hours, node_part)
    return [{"node": p.key[0], "window_start": p.start, "samples": p.samples, "down_share": p.stats["down_share"],
             "slowdown_p50": p.stats["slowdown_p50"], "slowdown_p90": p.stats["slowdown_p90"]} for p in merge(parts)]


QUERIES: dict[str, Callable[..., list[Row]]] = {
    "profiles": profiles, "plans": plans, "solves": solves, "runs": runs, "probes": probes,
    "decisions": decisions, "migrations": migrations,
}


def history(conn: Connection, kind: str, *, limit: int | None = 20, model: str | None = None,
            filters: Filters | None = None) -> list[Row]:
    """Rows of one history kind (see HISTORY_KINDS), narrowed by `filters` (and `model`, kept for callers that
    only filter by model)."""
    try:
        query = QUERIES[kind]
    except KeyError:
        raise InputError(f"history kind {kind!r}: expected one of {', '.join(HISTORY_KINDS)}") from None
    if limit is not None and limit < 1:
        raise InputError(f"--limit: must be at least 1, got {limit}")
    f = filters or Filters()
    if model is not None:
        f = replace(f, model=model)
    return query(conn, limit=limit, f=f)


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
