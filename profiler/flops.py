"""FLOPs of one unit in one phase, counted by fvcore on the unit's real input.

Conventions (the profile format's): a multiply-add is two FLOPs. fvcore counts one per multiply-add,
so its totals are doubled here. fvcore skips `aten::scaled_dot_product_attention` (the default
attention of transformers 5), which would leave the QK^T and AV products out; `count_unit` registers
a handle for it, so the count is the same whether the model was built with "sdpa" or "eager"
attention. Like fvcore's own handles it counts the full L x S score matrix (what the kernels
compute; a causal mask hides half of it but does not skip it). Element-wise operations (adds,
activations, softmax) are not counted, as in fvcore.

Each unit is counted separately through a wrapper module that runs exactly that unit with
`adapter.run`, so per-unit counts are exact and nothing is attributed by module-name guessing.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():
    # fvcore's import path touches torch.jit.script, which torch 2.13 reports as deprecated.
    warnings.simplefilter("ignore", DeprecationWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

from profiler.adapters.base import ModelAdapter, RequestState

SDPA_OP = "aten::scaled_dot_product_attention"


def sdpa_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of scaled-dot-product attention: Q K^T then weights x V.

    q: [..., L, E], k: [..., S, E], v: [..., S, Ev]; grouped-query attention repeats k/v over the
    query heads, so the query's leading dimensions give the number of products.
    """
    q, k, v = (get_shape(t) for t in inputs[:3])
    lead_and_l = math.prod(q[:-1])          # batch x heads x L
    s = k[-2]
    return lead_and_l * s * q[-1] + lead_and_l * s * v[-1]


class UnitRunner(nn.Module):
    """Runs one unit (or a range) of an adapter, so a tracer sees exactly that unit's operations."""

    def __init__(self, adapter: ModelAdapter, first: int, last: int, *, phase: str, position: int,
                 state: RequestState) -> None:
        super().__init__()
        self.model = adapter.model          # registered so the tracer knows the parameters
        self._adapter = adapter
        self.first, self.last = first, last
        self.phase, self.position = phase, position
        self.state = state

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        return self._adapter.run(self.first, self.last, x[0] if x else None, phase=self.phase,
                                 position=self.position, state=self.state)


def count_flops(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """FLOPs (multiply-add = 2) of one call of `module` on `inputs`, attention included."""
    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle(SDPA_OP, sdpa_flop_handle)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    fvcore_log = logging.getLogger("fvcore")
    level = fvcore_log.level
    fvcore_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # The tracer warns about Python branches on tensor values; one trace of one call is all
            # a count needs, so those warnings say nothing here.
            warnings.simplefilter("ignore")
            with torch.no_grad():
                macs = analysis.total()
    finally:
        fvcore_log.setLevel(level)
    return 2.0 * float(macs)


def count_unit(adapter: ModelAdapter, index: int, x: torch.Tensor | None, *, phase: str, position: int,
               state: RequestState) -> float:
    """FLOPs of unit `index` in `phase` on input `x`; `state` is copied first and left untouched."""
    runner = UnitRunner(adapter, index, index, phase=phase, position=position, state=copy.deepcopy(state))
    return count_flops(runner, () if x is None else (x,))
