"""An exact dynamic programme for the latency objective when the problem is (almost) a chain.

L is a sum of unary terms and pairwise terms. When every pairwise term joins consecutive units
(u, u+1), minimising L is a shortest path through a layered graph (one layer per unit, one vertex
per allowed node): O(U N^2). Pairwise terms that skip ahead (the decode loop last -> first, a shared
edge with one receiver) are handled exactly by fixing the node of their earlier unit and running
the chain once per combination; that is cheap while those units are few.

Pins and the raw-input rule only shrink domains, so they keep the DP exact. Two things do not:
shared edges with several receivers (the cost depends on the set of receiving nodes) and memory
limits (a knapsack over all units). Memory is handled by checking the DP's answer: the optimum
without memory limits that happens to satisfy them is the optimum with them. Otherwise the fast
path declines and the integer program decides.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from orchestrator.planner.problem import Instance

MAX_WORK = 20_000_000  # combinations x units x nodes^2 the fast path may spend


def applicable(inst: Instance) -> bool:
    """Whether the DP is exact in structure (memory is checked on its answer)."""
    return not inst.edges and _work(inst) <= MAX_WORK


def _heads(inst: Instance) -> list[int]:
    return sorted({p.a for p in inst.pairs if p.b != p.a + 1})


def _work(inst: Instance) -> int:
    combos = math.prod(len(inst.allowed[h]) for h in _heads(inst))
    return combos * inst.n_units * inst.n_nodes ** 2


def solve_chain(inst: Instance) -> tuple[list[int], float] | None:
    """The assignment minimising L without memory limits, with its L; None if there is none."""
    if not applicable(inst):
        return None
    U, N = inst.n_units, inst.n_nodes
    heads = _heads(inst)
    chain = {p.b: np.array(p.cost, dtype=float) for p in inst.pairs if p.b == p.a + 1}
    skips = [p for p in inst.pairs if p.b != p.a + 1]
    base = np.array(inst.unary, dtype=float)  # inf outside every domain already
    best: tuple[list[int], float] | None = None
    for combo in itertools.product(*(inst.allowed[h] for h in heads)):
        fixed = dict(zip(heads, combo, strict=True))
        unary = base.copy()
        for h, n in fixed.items():
            keep = unary[h, n]
            unary[h, :] = np.inf
            unary[h, n] = keep
        for p in skips:  # the earlier unit's node is fixed: the term is unary on the later one
            unary[p.b, :] += np.asarray(p.cost[fixed[p.a]], dtype=float)
        assign, value = _chain_dp(unary, chain, U, N)
        if assign is not None and (best is None or value < best[1]):
            best = (assign, value)
    return best


def _chain_dp(unary: np.ndarray, chain: dict[int, np.ndarray], U: int, N: int) -> tuple[list[int] | None, float]:
    f = unary[0].copy()
    back: list[np.ndarray] = []
    for u in range(1, U):
        if u in chain:
            tot = f[:, None] + chain[u]          # [i, j]: arrive at node j of unit u from node i of u-1
            arg = np.argmin(tot, axis=0)
            f = tot[arg, np.arange(N)] + unary[u]
        else:
            arg = np.full(N, int(np.argmin(f)))
            f = f[arg] + unary[u]
        back.append(arg)
    last = int(np.argmin(f))
    if not math.isfinite(f[last]):
        return None, math.inf
    assign = [last]
    for arg in reversed(back):
        assign.append(int(arg[assign[-1]]))
    assign.reverse()
    return assign, float(f[last])
