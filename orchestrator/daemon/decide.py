"""Whether a candidate plan replaces the plan in force: a pure function of the two plans, the profiles,
the latest snapshot and the settings, so it is tested without workers.

Both plans are evaluated on the same snapshot (the plan in force was solved for an older one), each in
its own mode: L for a split plan (its token reduction applied), L_coop for a cooperative plan
(orchestrator.candidate.plan_latency), so a move between modes, or to another k, is weighed like any
other. The candidate wins when
- the plan in force cannot run on the snapshot any more (a node it uses is down), or
- it is faster by at least `threshold` (relative), AND the time it saves over the horizon's requests
  repays the migration: the weights each node must load at `load_bytes_per_s`, plus `switch_s`.
The threshold is the hysteresis that keeps measurement noise from making the plan (or k) flap.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.candidate import plan_latency, same_plan
from orchestrator.daemon.settings import DaemonSettings
from orchestrator.network import NetworkState
from orchestrator.plan import Plan
from profiler.profile import Profile


@dataclass(frozen=True)
class Decision:
    apply: bool
    reason: str
    current_s: float | None           # the plan in force on the snapshot (None: no plan yet; inf: cannot run)
    candidate_s: float
    gain_s: float                     # current - candidate (0 when there is no plan in force)
    migration_s: float
    load_bytes: dict[str, int]        # node -> weight bytes it must load

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["current_s"] is not None and not math.isfinite(d["current_s"]):
            d["current_s"] = None                # JSON has no infinity: "cannot run" is said in `reason`
        return d


def load_bytes(profile: Profile, current: Sequence[str] | None, candidate: Sequence[str]) -> dict[str, int]:
    """Per node, the parameter bytes of units it runs under `candidate` and not under `current`."""
    out: dict[str, int] = {}
    for u, node in enumerate(candidate):
        if current is None or current[u] != node:
            out[node] = out.get(node, 0) + int(profile.units[u].param_bytes)
    return out


def plan_load_bytes(profile: Profile, current: Plan | None, candidate: Plan,
                    draft: Profile | None = None) -> dict[str, int]:
    """load_bytes of the target's placement, plus the draft's weights on the nodes that gain its units
    (a cooperative candidate after a split plan, or a draft that moves)."""
    out = load_bytes(profile, current.assignment if current else None, candidate.assignment)
    if candidate.mode == "cooperative" and draft is not None and candidate.draft_assignment:
        before = current.draft_assignment if current is not None and current.mode == "cooperative" else None
        for node, b in load_bytes(draft, before, candidate.draft_assignment).items():
            out[node] = out.get(node, 0) + b
    return out


def _describe(plan: Plan) -> str:
    return f"cooperative k={plan.k}" if plan.mode == "cooperative" else "split"


def decide(current: Plan | None, candidate: Plan, profile: Profile, snapshot: NetworkState,
           settings: DaemonSettings, request_rate_hz: float, draft: Profile | None = None, *,
           no_verifier: Collection[str] = ()) -> Decision:
    """Whether `candidate` replaces `current` (module docstring); `draft` is the draft's profile when
    either plan is cooperative; `no_verifier`: nodes where no verifier answers now."""
    cand = plan_latency(candidate, profile, snapshot, draft)
    loads = plan_load_bytes(profile, current, candidate, draft)
    migration = settings.switch_s + sum(loads.values()) / settings.load_bytes_per_s
    if current is None:
        return Decision(True, "first plan", None, cand.latency_s, 0.0, migration, loads)
    if same_plan(current, candidate):
        return Decision(False, "the candidate is the plan in force", None, cand.latency_s, 0.0, 0.0, {})
    used = set(current.assignment) | set(current.draft_assignment or [])
    gone = sorted(used - set(snapshot.node_names))
    if gone:
        return Decision(True, f"the plan in force uses {', '.join(gone)}, which is down", math.inf, cand.latency_s,
                        math.inf, migration, loads)
    # a cooperative plan's decoder runs on its verifier, the last node of its assignment
    if current.mode == "cooperative" and current.assignment and current.assignment[-1] in no_verifier:
        return Decision(True, f"the plan in force verifies on {current.assignment[-1]}, where no verifier answers",
                        math.inf, cand.latency_s, math.inf, migration, loads)
    cur = plan_latency(current, profile, snapshot, draft)
    if not cur.feasible:
        why = cur.problem or "a node it uses is unreachable"
        return Decision(True, f"the plan in force cannot run on the snapshot: {why}", math.inf, cand.latency_s,
                        math.inf, migration, loads)
    gain = cur.latency_s - cand.latency_s
    rel = gain / cur.latency_s if cur.latency_s > 0 else 0.0
    if rel < settings.threshold:
        return Decision(False, f"gain {rel:.1%} is below the threshold {settings.threshold:.0%}", cur.latency_s,
                        cand.latency_s, gain, migration, loads)
    requests = max(request_rate_hz, settings.min_request_rate_hz) * settings.horizon_s
    saved = gain * requests
    if saved < migration:
        return Decision(False, f"saves {saved:.3f} s over {requests:.0f} requests in {settings.horizon_s:g} s, "
                               f"less than the migration's {migration:.3f} s", cur.latency_s, cand.latency_s, gain,
                        migration, loads)
    modes = "" if _describe(current) == _describe(candidate) else f"; {_describe(current)} -> {_describe(candidate)}"
    return Decision(True, f"{rel:.1%} faster ({cur.latency_s * 1e3:.1f} -> {cand.latency_s * 1e3:.1f} ms); saves "
                          f"{saved:.2f} s over the horizon against {migration:.3f} s of migration{modes}",
                    cur.latency_s, cand.latency_s, gain, migration, loads)
