"""Token reduction at the split point: a plan with `reductions` merges the encoder output before it
crosses a link (profiler.token_merge, docs/runtime.md "Token reduction").

The worker that runs the edge's source unit merges the encoder output once and sends the packed
[B, k, D + 1] tensor (tokens and log sizes) as the `edge` frame; every node that reads the edge,
the sender's own included, installs it the same way, so the split run equals the unsplit model with
the same reduction applied (`profiler.generate.greedy_generate(..., reduction=...)`). The stage plan
carries the choice in `extra["reduction"]` = {"edge": FROM_UNIT, "method": ..., "keep": ...}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from profiler.token_merge import Reduction, install, reduce_packed
from runtime.stages import StagePlan


def plan_reduction(plan: StagePlan, src_unit: int) -> Reduction | None:
    """The reduction the stage plan applies to the edge made by `src_unit`, or None."""
    spec = plan.extra.get("reduction")
    if not spec or int(spec.get("edge", -1)) != src_unit:
        return None
    return Reduction(str(spec["method"]), int(spec["keep"]))


def reduce_edge(plan: StagePlan, src_unit: int, out: torch.Tensor) -> torch.Tensor:
    """What the edge made by `src_unit` carries: `out` merged and packed, or `out` itself."""
    r = plan_reduction(plan, src_unit)
    return out if r is None else reduce_packed(out, r)


def install_edge(state: Any, plan: StagePlan, src_unit: int, tensor: torch.Tensor) -> None:
    """Give a RequestState the edge value as `reduce_edge` made it."""
    if plan_reduction(plan, src_unit) is None:
        state.encoder_out = tensor
    else:
        install(state, tensor)


def stage_extra(plan: Any, edge_sources: Sequence[int] | None = None) -> dict[str, Any]:
    """The stage plan's `extra` entry for a Plan's `reductions` (empty when it reduces nothing);
    with `edge_sources` (the model's edges' source units) the reduced edge must be one of them."""
    chosen = [r for r in (getattr(plan, "reductions", None) or []) if r.get("method") not in (None, "none")]
    if not chosen:
        return {}
    if len(chosen) > 1:
        raise ValueError("plan: reductions: the runtime reduces one edge, the plan names several")
    r = chosen[0]
    Reduction(str(r["method"]), int(r["keep"]))          # one-line error on a bad method or keep
    if edge_sources is not None and int(r["edge"]) not in edge_sources:
        raise ValueError(f"plan: reductions: the model has no edge from unit {r['edge']}")
    return {"reduction": {"edge": int(r["edge"]), "method": str(r["method"]), "keep": int(r["keep"])}}
