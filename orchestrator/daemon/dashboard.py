"""The live dashboard: a static page at `/` (shipped in the package, no network needed), its state as
JSON (`GET /v1/dashboard`), live updates as server-sent events (`GET /v1/events`) and a link's stored
history (`GET /v1/history/links`).

The page itself holds no data and is always served; everything it reads goes through the API's read
check, so with `--private-reads` it needs the token (the page asks for it once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from orchestrator.daemon.events import sse
from orchestrator.daemon.service import Daemon
from orchestrator.daemon.snapshot import link_key
from orchestrator.daemon.view import finite, plan_view

STATIC = Path(__file__).resolve().parent / "static"
KEEPALIVE_S = 15.0
# The page loads nothing from elsewhere and runs no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def dashboard_state(daemon: Daemon, *, with_requests: bool = True) -> dict[str, Any]:
    """Everything the page draws, now: the topology as configured with measured links and node states, the
    plan in force with its units per node and bytes per link, the last decisions and plan switches, and (for
    a whole state) the recent requests. Times are Unix seconds."""
    cur = daemon.current
    plan = None
    if cur is not None:
        # bytes and routes as the plan was solved for (a node down since would hide its part of the picture)
        view = plan_view(daemon.profile, cur.snapshot, cur.plan.assignment)
        plan = {"version": cur.number, "assignment": list(cur.plan.assignment),
                "predicted_latency_s": cur.plan.predicted_latency_s, "applied_at": cur.applied_at.timestamp(),
                "nodes": view["nodes"], "links": view["links"]}
    played = {}
    if daemon.truth is not None:
        played = {link_key(lk.a, lk.b): {"bandwidth_bps": lk.bandwidth_bps, "latency_s": lk.latency_s,
                                         "trace": lk.trace is not None} for lk in daemon.truth.links}
    links = []
    for lk in daemon.base.links:
        key = link_key(lk.a, lk.b)
        est = daemon.links.get(key)
        links.append({"key": key, "a": lk.a, "b": lk.b, "configured_bandwidth_bps": lk.bandwidth_bps,
                      "configured_latency_s": lk.latency_s,
                      "bandwidth_bps": est.bandwidth_bps if est else None, "latency_s": est.latency_s if est else None,
                      "samples": est.samples if est else 0, "method": est.method if est else None,
                      "played": played.get(key)})
    nodes = []
    for n in daemon.base.nodes:
        st = daemon.nodes.get(n.name)
        nodes.append({"name": n.name, "tier": n.tier, "hardware": n.hardware, "mem_bytes": n.mem_bytes,
                      "state": st.state if st else "unknown", "slowdown": daemon.slowdown.get(n.name, n.slowdown),
                      "source": n.name == daemon.base.source, "sink": n.name == daemon.base.sink_node})
    state: dict[str, Any] = {
        "now": time.time(), "model": daemon.model, "emulated": daemon.emulated, "dilation": daemon.dilation,
        "accepting": daemon.accepting, "open_requests": daemon.open_requests,
        "probe_interval_s": daemon.settings.probe_interval_s, "history": daemon.store is not None,
        "nodes": nodes, "links": links, "plan": plan,
        "decisions": [_decision(d) for d in list(daemon.decisions)[-12:]],
        "switches": list(daemon.switches),
    }
    if with_requests:
        state["requests"] = list(daemon.request_log)
    return finite(state)


def _decision(d: dict[str, Any]) -> dict[str, Any]:
    at = datetime.fromisoformat(d["at"]).timestamp()
    keep = ("trigger", "apply", "reason", "current_s", "candidate_s", "gain_s", "migration_s", "assignment")
    if not d.get("apply"):
        outcome = "kept"
    elif "switched_to" not in d:
        outcome = "switching"            # decided; the two-phase switch is under way
    else:
        outcome = "switched" if d["switched_to"] is not None else "failed"
    return {"at": at, **{k: d.get(k) for k in keep}, "switched_to": d.get("switched_to"), "outcome": outcome}


def add_dashboard(app: FastAPI, daemon: Daemon, check_read: Callable[[Request], None]) -> None:
    """Serve the page and the endpoints it reads on `app`."""
    app.mount("/dashboard", StaticFiles(directory=STATIC), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

    @app.get("/v1/dashboard", dependencies=[Depends(check_read)])
    async def state() -> dict[str, Any]:
        """The dashboard's state now (the first message of /v1/events)."""
        return dashboard_state(daemon)

    @app.get("/v1/events", dependencies=[Depends(check_read)])
    async def events() -> StreamingResponse:
        """Server-sent events: `state` (the whole dashboard state, first and after every change: a probe round,
        a decision, a switch, an emulation change) and `request` (one served request), within moments of the
        change. Ends when the daemon stops."""
        return StreamingResponse(_stream(daemon), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/history/links", dependencies=[Depends(check_read)])
    async def link_history(link: str = Query(description="a link as the daemon names it, \"a~b\""),
                           since_s: float = Query(1800.0, gt=0, le=30 * 86400,
                                                  description="how far back, in seconds"),
                           window_s: float | None = Query(None, gt=0, le=86400,
                                                          description="summary window (default: since_s / 60)"),
                           ) -> dict[str, Any]:
        """A link's measured bandwidth and latency over time from the history database: percentiles per
        window (raw rows and hourly roll-ups alike, as `aiflow history links`)."""
        known = {link_key(lk.a, lk.b) for lk in daemon.base.links}
        if link not in known:
            raise HTTPException(404, f"link: no link {link!r} (links: {', '.join(sorted(known))})")
        if daemon.store is None:
            raise HTTPException(404, "history: this daemon keeps no history database")
        window = window_s or max(daemon.settings.probe_interval_s, since_s / 60.0)
        since = datetime.now(UTC) - timedelta(seconds=since_s)
        rows = await asyncio.to_thread(_link_rows, daemon, link, since, window)
        return {"link": link, "since": since.timestamp(), "window_s": window, "rows": rows}


def _link_rows(daemon: Daemon, link: str, since: datetime, window_s: float) -> list[dict[str, Any]]:
    from orchestrator.store.queries import links_summary

    with daemon.store.engine.connect() as conn:
        rows = links_summary(conn, window_s=window_s, link=link, since=since)
    out = []
    for r in sorted(rows, key=lambda r: r["window_start"]):
        start = r["window_start"]
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        out.append(finite({**r, "window_start": start.timestamp()}))
    return out


async def _stream(daemon: Daemon) -> AsyncIterator[str]:
    sub = daemon.events.subscribe()
    try:
        yield "retry: 1000\n" + sse("state", dashboard_state(daemon))
        while True:
            items = await sub.next(KEEPALIVE_S)
            if items is None:
                return
            if not items:
                yield ": keepalive\n\n"          # a dead client shows up as a failed write
                continue
            whole = sub.resync
            sub.resync = False
            for kind, data in items:
                if kind != "state":
                    yield sse(kind, finite(data))
            if whole or any(kind == "state" for kind, _ in items):
                yield sse("state", dashboard_state(daemon, with_requests=whole))
    finally:
        daemon.events.unsubscribe(sub)
