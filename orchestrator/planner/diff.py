"""What changes between two plans of one model: the units that move, what each node loads and unloads,
and the latency change (re-evaluated when the profile and network are given)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from orchestrator.costmodel import evaluate
from orchestrator.network import NetworkState
from orchestrator.plan import Plan
from profiler.errors import InputError
from profiler.profile import Profile


@dataclass
class Move:
    unit: int
    name: str
    src: str
    dst: str


@dataclass
class PlanDiff:
    moves: list[Move]
    load: dict[str, list[str]] = field(default_factory=dict)     # node -> units it must load
    unload: dict[str, list[str]] = field(default_factory=dict)   # node -> units it can drop
    latency_a_s: float = 0.0
    latency_b_s: float = 0.0

    @property
    def delta_s(self) -> float:
        return self.latency_b_s - self.latency_a_s

    def to_dict(self) -> dict:
        return {**asdict(self), "delta_s": self.delta_s}


def diff_plans(a: Plan, b: Plan, profile: Profile | None = None, net: NetworkState | None = None) -> PlanDiff:
    if len(a.assignment) != len(b.assignment):
        raise InputError(f"plans: field assignment: {len(a.assignment)} units against {len(b.assignment)}")
    if a.model != b.model:
        raise InputError(f"plans: field model: {a.model!r} against {b.model!r}")
    if profile is not None and len(profile.units) != len(a.assignment):
        raise InputError(f"plans: field assignment: {len(a.assignment)} units, the profile has {len(profile.units)}")
    names = [u.name for u in profile.units] if profile else [f"unit {i}" for i in range(len(a.assignment))]
    moves = [Move(u, names[u], x, y) for u, (x, y) in enumerate(zip(a.assignment, b.assignment, strict=True)) if x != y]
    load: dict[str, list[str]] = {}
    unload: dict[str, list[str]] = {}
    for m in moves:
        load.setdefault(m.dst, []).append(m.name)
        unload.setdefault(m.src, []).append(m.name)
    if profile is not None and net is not None:
        la, lb = evaluate(profile, net, a.assignment).latency_s, evaluate(profile, net, b.assignment).latency_s
    else:
        la, lb = a.predicted_latency_s, b.predicted_latency_s
    return PlanDiff(moves, load, unload, la, lb)
