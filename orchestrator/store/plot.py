"""`aiflow history plot`: link bandwidth or request latency over time, with plan switches marked (matplotlib)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, select

from orchestrator.store.tables import PlanApplication, ProbeRow, RunRow
from profiler.errors import InputError


def plot_history(conn: Connection, metric: str, out: Path, *, since: datetime | None = None,
                 until: datetime | None = None) -> int:
    """Write a PNG of `metric` ("links" or "requests"); returns how many points it drew."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("history plot: needs matplotlib (pip install 'aiflow[bench]')") from None

    def window(column: object) -> list[object]:
        return [c for c in ((column >= since) if since else None, (column < until) if until else None) if c is not None]

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    points = 0
    if metric == "links":
        rows = conn.execute(select(ProbeRow.link, ProbeRow.measured_at, ProbeRow.bandwidth_bps)
                            .where(ProbeRow.bandwidth_bps.is_not(None), *window(ProbeRow.measured_at))
                            .order_by(ProbeRow.measured_at)).all()
        for link in sorted({r.link for r in rows}):
            mine = [r for r in rows if r.link == link]
            ax.plot([r.measured_at for r in mine], [r.bandwidth_bps / 1e6 for r in mine], label=link, linewidth=1.2)
        ax.set_ylabel("bandwidth (Mbit/s)")
        ax.set_yscale("log")
        points = len(rows)
    else:
        rows = conn.execute(select(RunRow.created_at, RunRow.measured_s, RunRow.predicted_s)
                            .where(*window(RunRow.created_at)).order_by(RunRow.created_at)).all()
        ax.scatter([r.created_at for r in rows], [r.measured_s * 1e3 for r in rows], s=8, label="measured")
        ax.scatter([r.created_at for r in rows if r.predicted_s], [r.predicted_s * 1e3 for r in rows if r.predicted_s],
                   s=8, marker="x", label="predicted")
        ax.set_ylabel("request latency (ms)")
        points = len(rows)
    switches = conn.execute(select(PlanApplication.applied_at, PlanApplication.version)
                            .where(*window(PlanApplication.applied_at))).all()
    for i, s in enumerate(switches):
        ax.axvline(s.applied_at, color="0.3", linestyle="--", linewidth=0.9,
                   label="plan switch" if i == 0 else None)
        if s.version is not None:
            ax.annotate(f"v{s.version}", (s.applied_at, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                        ha="left", va="top")
    ax.set_xlabel("time (UTC)")
    ax.grid(True, alpha=0.3)
    if points or switches:
        ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return points
