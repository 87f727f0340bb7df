"""The Plan: where every unit runs, in the `aiflow.plan/v1` format."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat

from profiler.fileio import dump_json, load_document, parse_document

PLAN_FORMAT = "aiflow.plan/v1"

# optimal: proven by a solver or an exact algorithm; feasible: a solver's best when stopped early
# (see `gap`); heuristic: a baseline or greedy rule with no optimality claim.
PlanStatus = Literal["optimal", "feasible", "heuristic"]
Objective = Literal["latency", "throughput"]


class Breakdown(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    compute_s: dict[str, float] = Field(default_factory=dict)
    transfer_s: dict[str, float] = Field(default_factory=dict)


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    format: Literal["aiflow.plan/v1"] = PLAN_FORMAT
    model: str
    assignment: list[str] = Field(min_length=1)
    objective: Objective = "latency"
    predicted_latency_s: NonNegativeFloat
    status: PlanStatus
    solver: str
    solve_time_s: NonNegativeFloat = 0.0
    breakdown: Breakdown = Field(default_factory=Breakdown)
    # Relative gap between the plan and the solver's bound when it stopped before proving optimality.
    gap: float | None = None
    # The throughput objective's value: the busiest node's or link's seconds per request.
    bottleneck_s: float | None = None
    # Per-hop activation compression the runtime applies ("fp16", "int8"); absent means none.
    compression: str | None = None
    # Cooperative (speculative) plans: `assignment` places the target, `draft_assignment` the draft
    # (docs/planner.md, "Cooperative mode"); absent on the split plans of one model.
    mode: Literal["split", "cooperative"] | None = None
    draft_model: str | None = None
    draft_assignment: list[str] | None = None
    k: int | None = Field(default=None, ge=1)
    # Token reduction of encoder-output edges the runtime applies (docs/planner.md, "Token reduction"):
    # [] when the planner chose none, absent when it was not asked.
    reductions: list[dict[str, Any]] | None = None


def load_plan(path: str | Path) -> Plan:
    return load_document(Plan, path, PLAN_FORMAT)


def parse_plan(data: dict, source: str = "plan") -> Plan:
    return parse_document(Plan, data, PLAN_FORMAT, source)


def save_plan(plan: Plan, path: str | Path) -> None:
    dump_json(plan, path)
