"""Percentile summaries of the measurement rows (probes, node samples, requests) per key and time window.

Raw rows are summarised by the database where it can (PostgreSQL's `percentile_cont`, which interpolates
between order statistics as numpy's default does) and in Python where it cannot (SQLite has no
percentile function); both give the same numbers, and tests check both against numpy. Hourly roll-ups
(`probe_hours`, `node_sample_hours`, `run_hours`) are summaries too: `combine` merges the parts of a
window, exactly for counts, sums, means, minima and maxima, and for percentiles as the count-weighted
mean of the parts' percentiles (exact when a window has one part; an approximation otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select, text

from orchestrator.store.tables import NodeSample, ProbeRow, RunRow

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Part:
    """The summary of some rows of one key in one window: counts, and statistics with their own counts."""

    key: tuple[Any, ...]
    start: datetime
    samples: int
    stats: dict[str, float | None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)     # rows behind each statistic (non-null values)
    first: datetime | None = None
    last: datetime | None = None


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between order statistics (None for no values)."""
    if not values:
        return None
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def window_start(t: datetime, window_s: float) -> datetime:
    epoch = t.timestamp()
    return datetime.fromtimestamp(epoch - epoch % window_s, tz=UTC)


def combine(parts: Sequence[Part]) -> Part:
    """One part from several of the same key and window (see the module's note on percentiles)."""
    if len(parts) == 1:
        return parts[0]
    out = Part(parts[0].key, min(p.start for p in parts), sum(p.samples for p in parts))
    for name in {n for p in parts for n in p.stats}:
        pairs = [(p.stats[name], p.counts.get(name, p.samples)) for p in parts if p.stats.get(name) is not None]
        n = sum(w for _, w in pairs)
        out.counts[name] = n
        if not pairs or n == 0:
            out.stats[name] = None
        elif name.startswith("min"):
            out.stats[name] = min(v for v, _ in pairs)
        elif name.startswith("max"):
            out.stats[name] = max(v for v, _ in pairs)
        else:  # means exactly, percentiles approximately
            out.stats[name] = sum(v * w for v, w in pairs) / n  # type: ignore[operator]
    firsts = [p.first for p in parts if p.first is not None]
    lasts = [p.last for p in parts if p.last is not None]
    out.first = min(firsts) if firsts else None
    out.last = max(lasts) if lasts else None
    return out


def merge(parts: Iterable[Part]) -> list[Part]:
    """Parts of the same key and window combined; ordered by window, then key."""
    groups: dict[tuple[Any, ...], list[Part]] = {}
    for p in parts:
        groups.setdefault((p.start, p.key), []).append(p)
    return [combine(ps) for _, ps in sorted(groups.items(), key=lambda kv: (kv[0][0], repr(kv[0][1])))]


def _is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _no_jit(conn: Connection) -> None:
    """JIT compilation off for this transaction: it cost ~0.3 s on these aggregates, more than it saved."""
    conn.execute(text("SET LOCAL jit = off"))


def _time_sql(column: str, since: datetime | None, until: datetime | None, params: dict[str, Any],
              after_id: int | None = None) -> str:
    """The WHERE clause for [since, until), and ids above `after_id` (rows written after a summary pass)."""
    where = []
    if after_id is not None:
        where.append("id > :after_id")
        params["after_id"] = after_id
    if since is not None:
        where.append(f"{column} >= :since")
        params["since"] = since
    if until is not None:
        where.append(f"{column} < :until")
        params["until"] = until
    return " AND ".join(where) or "TRUE"


def time_between(column: Any, since: datetime | None, until: datetime | None, after_id: int | None = None,
                 id_column: Any = None) -> list[Any]:
    out = [] if after_id is None else [id_column > after_id]
    if since is not None:
        out.append(column >= since)
    if until is not None:
        out.append(column < until)
    return out


# -- probes --------------------------------------------------------------------------------------------------
PROBE_STATS = ("bandwidth_mean_bps", "bandwidth_p10_bps", "bandwidth_p50_bps", "bandwidth_p90_bps",
               "latency_mean_s", "latency_p50_s", "latency_p90_s")


def probe_parts(conn: Connection, window_s: float, *, link: str | None = None, since: datetime | None = None,
                until: datetime | None = None, after_id: int | None = None) -> list[Part]:
    """Raw probe rows summarised per (link, window)."""
    if _is_postgres(conn):
        params: dict[str, Any] = {"w": window_s}
        _no_jit(conn)
        where = _time_sql("measured_at", since, until, params, after_id)
        if link is not None:
            where += " AND link = :link"
            params["link"] = link
        rows = conn.execute(text(f"""
            SELECT link, date_bin(make_interval(secs => :w), measured_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS s,
                   count(*) AS n, count(bandwidth_bps) AS bw_n, count(latency_s) AS lat_n,
                   avg(bandwidth_bps) AS bw_mean,
                   percentile_cont(ARRAY[0.1, 0.5, 0.9]) WITHIN GROUP (ORDER BY bandwidth_bps) AS bw_q,
                   avg(latency_s) AS lat_mean,
                   percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY latency_s) AS lat_q
            FROM probes WHERE {where} GROUP BY 1, 2"""), params)
        out = []
        for r in rows:
            bw_q = r.bw_q if r.bw_n else [None] * 3
            lat_q = r.lat_q if r.lat_n else [None] * 2
            out.append(_probe_part(r.link, r.s, r.n, r.bw_n, r.lat_n, r.bw_mean, bw_q, r.lat_mean, lat_q))
        return out
    q = (select(ProbeRow.link, ProbeRow.measured_at, ProbeRow.bandwidth_bps, ProbeRow.latency_s)
         .where(*time_between(ProbeRow.measured_at, since, until, after_id, ProbeRow.id)))
    if link is not None:
        q = q.where(ProbeRow.link == link)
    groups: dict[tuple[str, datetime], list[Any]] = {}
    for r in conn.execute(q):
        groups.setdefault((r.link, window_start(r.measured_at, window_s)), []).append(r)
    out = []
    for (name, start), rs in groups.items():
        bw = [r.bandwidth_bps for r in rs if r.bandwidth_bps is not None]
        lat = [r.latency_s for r in rs if r.latency_s is not None]
        out.append(_probe_part(name, start, len(rs), len(bw), len(lat), sum(bw) / len(bw) if bw else None,
                               [quantile(bw, q) for q in (0.1, 0.5, 0.9)], sum(lat) / len(lat) if lat else None,
                               [quantile(lat, q) for q in (0.5, 0.9)]))
    return out


def _probe_part(link: str, start: datetime, n: int, bw_n: int, lat_n: int, bw_mean: float | None,
                bw_q: Sequence[float | None], lat_mean: float | None, lat_q: Sequence[float | None]) -> Part:
    stats = dict(zip(PROBE_STATS, (bw_mean, *bw_q, lat_mean, *lat_q), strict=True))
    counts = {k: (bw_n if k.startswith("bandwidth") else lat_n) for k in PROBE_STATS}
    return Part((link,), _utc(start), n, stats, counts)


# -- node samples --------------------------------------------------------------------------------------------
def node_parts(conn: Connection, window_s: float, *, node: str | None = None, since: datetime | None = None,
               until: datetime | None = None, after_id: int | None = None) -> list[Part]:
    """Raw node samples summarised per (node, window): down samples, slowdown percentiles."""
    if _is_postgres(conn):
        params: dict[str, Any] = {"w": window_s}
        _no_jit(conn)
        where = _time_sql("measured_at", since, until, params, after_id)
        if node is not None:
            where += " AND node = :node"
            params["node"] = node
        rows = conn.execute(text(f"""
            SELECT node, date_bin(make_interval(secs => :w), measured_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS s,
                   count(*) AS n, count(*) FILTER (WHERE state = 'down') AS down, count(slowdown) AS slow_n,
                   percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY slowdown) AS slow_q
            FROM node_samples WHERE {where} GROUP BY 1, 2"""), params)
        return [_node_part(r.node, r.s, r.n, r.down, r.slow_n, r.slow_q if r.slow_n else [None, None]) for r in rows]
    q = (select(NodeSample.node, NodeSample.measured_at, NodeSample.state, NodeSample.slowdown)
         .where(*time_between(NodeSample.measured_at, since, until, after_id, NodeSample.id)))
    if node is not None:
        q = q.where(NodeSample.node == node)
    groups: dict[tuple[str, datetime], list[Any]] = {}
    for r in conn.execute(q):
        groups.setdefault((r.node, window_start(r.measured_at, window_s)), []).append(r)
    out = []
    for (name, start), rs in groups.items():
        slow = [r.slowdown for r in rs if r.slowdown is not None]
        out.append(_node_part(name, start, len(rs), sum(r.state == "down" for r in rs), len(slow),
                              [quantile(slow, 0.5), quantile(slow, 0.9)]))
    return out


def _node_part(node: str, start: datetime, n: int, down: int, slow_n: int, slow_q: Sequence[float | None]) -> Part:
    return Part((node,), _utc(start), n, {"down_share": down / n, "slowdown_p50": slow_q[0], "slowdown_p90": slow_q[1]},
                {"down_share": n, "slowdown_p50": slow_n, "slowdown_p90": slow_n})


# -- requests ------------------------------------------------------------------------------------------------
REQUEST_STATS = ("mean_s", "p50_s", "p90_s", "p99_s", "ratio_median")


def request_parts(conn: Connection, window_s: float | None, *, since: datetime | None = None,
                  until: datetime | None = None, plan_version: int | None = None,
                  model_id: int | None = None, after_id: int | None = None) -> list[Part]:
    """Raw request rows summarised per (model_id, plan_id, plan_version, strategy) and window (one window for
    the whole range when window_s is None)."""
    if _is_postgres(conn):
        params: dict[str, Any] = {"w": window_s or 1.0}
        _no_jit(conn)
        where = _time_sql("created_at", since, until, params, after_id)
        if plan_version is not None:
            where += " AND plan_version = :v"
            params["v"] = plan_version
        if model_id is not None:
            where += " AND model_id = :m"
            params["m"] = model_id
        start = ("date_bin(make_interval(secs => :w), created_at, TIMESTAMPTZ '1970-01-01 00:00:00+00')"
                 if window_s else "TIMESTAMPTZ '1970-01-01 00:00:00+00'")
        rows = conn.execute(text(f"""
            SELECT model_id, plan_id, plan_version, strategy, {start} AS s, count(*) AS n,
                   avg(measured_s) AS mean, min(created_at) AS first, max(created_at) AS last,
                   percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY measured_s) AS q,
                   count(measured_s / NULLIF(predicted_s, 0)) AS ratio_n,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY measured_s / NULLIF(predicted_s, 0)) AS ratio
            FROM runs WHERE {where} GROUP BY 1, 2, 3, 4, 5"""), params)
        return [_request_part((r.model_id, r.plan_id, r.plan_version, r.strategy), r.s, r.n, r.mean, r.q,
                              r.ratio_n, r.ratio, r.first, r.last) for r in rows]
    q = (select(RunRow.model_id, RunRow.plan_id, RunRow.plan_version, RunRow.strategy, RunRow.created_at,
                RunRow.measured_s, RunRow.predicted_s)
         .where(*time_between(RunRow.created_at, since, until, after_id, RunRow.id)))
    if plan_version is not None:
        q = q.where(RunRow.plan_version == plan_version)
    if model_id is not None:
        q = q.where(RunRow.model_id == model_id)
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for r in conn.execute(q):
        start = window_start(r.created_at, window_s) if window_s else EPOCH
        groups.setdefault((r.model_id, r.plan_id, r.plan_version, r.strategy, start), []).append(r)
    out = []
    for (*key, start), rs in groups.items():
        lat = [r.measured_s for r in rs]
        ratios = [r.measured_s / r.predicted_s for r in rs if r.predicted_s]
        out.append(_request_part(tuple(key), start, len(rs), sum(lat) / len(lat),
                                 [quantile(lat, q) for q in (0.5, 0.9, 0.99)], len(ratios), quantile(ratios, 0.5),
                                 min(r.created_at for r in rs), max(r.created_at for r in rs)))
    return out


def _request_part(key: tuple[Any, ...], start: datetime, n: int, mean: float, q: Sequence[float | None],
                  ratio_n: int, ratio: float | None, first: datetime, last: datetime) -> Part:
    stats = {"mean_s": mean, "p50_s": q[0], "p90_s": q[1], "p99_s": q[2], "ratio_median": ratio}
    counts = {k: n for k in REQUEST_STATS} | {"ratio_median": ratio_n}
    return Part(key, _utc(start), n, stats, counts, _utc(first), _utc(last))


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
