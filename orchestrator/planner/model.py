"""The integer program of the planning model, as plain data that any back-end can load.

Variables (all in [0, 1]; only x is declared integer, the rest are integral whenever x is):

    x[u,n]     unit u runs on node n                       (binary)
    y[k,i,j]   pair k = (a, b): a on i and b on j          (flow: sum_j y = x[a,i], sum_i y = x[b,j])
    z[e,m]     node m hosts a receiver of shared edge e    (z >= x[t,m] for each receiver t)
    w[e,s,m]   e's sender on s and m receives              (sum_s w = z[e,m], w <= x[src,s])
    T          throughput objective only: the busiest resource's busy time per request

Times are in microseconds inside the model (TIME_SCALE); SolverResult converts back to seconds.

The consecutive-pair flow is the marginal-polytope linearisation: on a chain of units it is exact
(integral LP), unlike the naive `y >= x1 + x2 - 1` kept here only to benchmark against (`naive=True`).
For shared edges, `sum_s w[e,s,m] = z[e,m]` is the assignment row sum_s x[src,s] = 1 multiplied by
z[e,m] (reformulation-linearisation), so the LP pays for a fractional receiver from the cheapest
fractional senders instead of the weak McCormick bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.planner.problem import Instance

Sense = Literal["<=", ">=", "=="]
TIME_SCALE = 1e6  # microseconds


@dataclass
class Row:
    idx: list[int]
    coef: list[float]
    sense: Sense
    rhs: float
    # True when the coefficients are times (throughput rows): CP-SAT must scale them to integers.
    timed: bool = False
    # Memory rows are stored divided by the node's capacity (coefficients <= 1: bytes of 1e9 beside
    # 0/1 flows make LP solvers derive invalid cuts); coef * int_scale gives back the integer bytes.
    int_scale: float | None = None


@dataclass
class LinearModel:
    """min obj . v + obj_const subject to rows, lb <= v <= ub, v[i] integer where integer[i]."""

    objective: Literal["latency", "throughput"]
    names: list[str] = field(default_factory=list)
    lb: list[float] = field(default_factory=list)
    ub: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    obj: list[float] = field(default_factory=list)
    obj_const: float = 0.0
    rows: list[Row] = field(default_factory=list)
    x: dict[tuple[int, int], int] = field(default_factory=dict)
    y: dict[tuple[int, int, int], int] = field(default_factory=dict)
    z: dict[tuple[int, int], int] = field(default_factory=dict)
    w: dict[tuple[int, int, int], int] = field(default_factory=dict)
    t_var: int | None = None
    symmetry_classes: list[list[int]] = field(default_factory=list)
    # Model time unit: seconds * time_scale. Costs are microseconds here, so that solver tolerances
    # (absolute, 1e-6 to 1e-9) sit far below any real difference: in seconds, the reduced costs of GPU
    # layers (~1e-5) drown in them and CBC "proves" plans 0.3% worse than the optimum.
    time_scale: float = TIME_SCALE

    @property
    def n_vars(self) -> int:
        return len(self.names)

    def var(self, name: str, *, integer: bool = False, lb: float = 0.0, ub: float = 1.0, obj: float = 0.0) -> int:
        self.names.append(name)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(integer)
        self.obj.append(obj)
        return len(self.names) - 1

    def row(self, idx: list[int], coef: list[float], sense: Sense, rhs: float, *, timed: bool = False,
            int_scale: float | None = None) -> None:
        self.rows.append(Row(idx, coef, sense, rhs, timed, int_scale))

    def assignment(self, values: list[float], n_units: int) -> list[int]:
        """Node index of every unit from a solution vector (x is integral up to solver tolerance)."""
        best: list[tuple[float, int]] = [(-1.0, -1)] * n_units
        for (u, n), i in self.x.items():
            if values[i] > best[u][0]:
                best[u] = (values[i], n)
        return [n for _, n in best]

    def start_values(self, inst: Instance, assign: list[int]) -> list[float]:
        """A full solution vector for an assignment (warm start): y, z, w and T follow from x."""
        v = [0.0] * self.n_vars
        for (u, n), i in self.x.items():
            v[i] = 1.0 if assign[u] == n else 0.0
        for (k, i, j), idx in self.y.items():
            p = inst.pairs[k]
            v[idx] = 1.0 if (assign[p.a], assign[p.b]) == (i, j) else 0.0
        for (e, m), idx in self.z.items():
            v[idx] = 1.0 if any(assign[t] == m for t in inst.edges[e].dsts) else 0.0
        for (e, s, m), idx in self.w.items():
            hosts = any(assign[t] == m for t in inst.edges[e].dsts)
            v[idx] = 1.0 if assign[inst.edges[e].src] == s and hosts else 0.0
        if self.t_var is not None:
            busy = 0.0
            for r in self.rows:
                if r.timed:  # T - load >= 0
                    busy = max(busy, -sum(c * v[i] for i, c in zip(r.idx, r.coef, strict=True) if i != self.t_var))
            v[self.t_var] = busy
        return v


def build_model(inst: Instance, objective: Literal["latency", "throughput"] = "latency", *,
                naive: bool = False, symmetry: bool = True, window_cuts: bool = True,
                mem_margin: float = 0.0) -> LinearModel:
    """The integer program of `inst`. `naive` swaps the flow linearisation for `y >= x1 + x2 - 1`."""
    m = LinearModel(objective)
    latency = objective == "latency"
    U, N = inst.n_units, inst.n_nodes
    allowed = inst.allowed
    fixed = [a[0] if len(a) == 1 else None for a in allowed]
    # Throughput: per resource, (variable, seconds) contributions.
    load: dict[str, list[tuple[int, float]]] = {}
    node_const = [0.0] * N
    link_const: dict[str, float] = {}

    def add_load(res: str, var: int | None, s: float) -> None:
        if latency or s == 0.0:
            return
        if var is None:
            if res in inst.nodes:
                node_const[inst.nodes.index(res)] += s
            else:
                link_const[res] = link_const.get(res, 0.0) + s
        else:
            load.setdefault(res, []).append((var, s))

    for u in range(U):
        for n in allowed[u]:
            m.x[(u, n)] = m.var(f"x_{u}_{n}", integer=True, obj=inst.unary[u][n] if latency else 0.0)
            add_load(inst.nodes[n], m.x[(u, n)], inst.node_load[u][n])
            for res, s in inst.unary_loads[u].get(n, {}).items():
                add_load(res, m.x[(u, n)], s)
        m.row([m.x[(u, n)] for n in allowed[u]], [1.0] * len(allowed[u]), "==", 1.0)

    # Pairs. A pair with a fixed side is unary in the other; both fixed is a constant.
    for k, p in enumerate(inst.pairs):
        fa, fb = fixed[p.a], fixed[p.b]
        if fa is not None or fb is not None:
            for i in allowed[p.a]:
                for j in allowed[p.b]:
                    c = p.cost[i][j]
                    if not math.isfinite(c):
                        continue  # arc consistency left at least one finite partner
                    var = m.x[(p.b, j)] if fa is not None else m.x[(p.a, i)]
                    if fa is not None and fb is not None:
                        m.obj_const += c if latency else 0.0
                        var = None
                    elif latency:
                        m.obj[var] += c
                    for res, s in p.loads.get((i, j), {}).items():
                        add_load(res, var, s)
            continue
        rows_i: dict[int, list[int]] = {i: [] for i in allowed[p.a]}
        rows_j: dict[int, list[int]] = {j: [] for j in allowed[p.b]}
        for i in allowed[p.a]:
            for j in allowed[p.b]:
                c = p.cost[i][j]
                if not math.isfinite(c):
                    continue
                idx = m.y[(k, i, j)] = m.var(f"y_{k}_{i}_{j}", obj=c if latency else 0.0)
                rows_i[i].append(idx)
                rows_j[j].append(idx)
                for res, s in p.loads.get((i, j), {}).items():
                    add_load(res, idx, s)
                if naive:
                    m.row([idx, m.x[(p.a, i)], m.x[(p.b, j)]], [1.0, -1.0, -1.0], ">=", -1.0)
        if not naive:
            for i, ys in rows_i.items():
                m.row([*ys, m.x[(p.a, i)]], [1.0] * len(ys) + [-1.0], "==", 0.0)
            for j, ys in rows_j.items():
                m.row([*ys, m.x[(p.b, j)]], [1.0] * len(ys) + [-1.0], "==", 0.0)
        else:
            # Without the flow rows something must still forbid an infeasible pair of nodes.
            for i in allowed[p.a]:
                for j in allowed[p.b]:
                    if not math.isfinite(p.cost[i][j]):
                        m.row([m.x[(p.a, i)], m.x[(p.b, j)]], [1.0, 1.0], "<=", 1.0)

    # Shared edges with several receivers.
    for e, se in enumerate(inst.edges):
        receivers = sorted({n for t in se.dsts for n in allowed[t]})
        for mm in receivers:
            forced = any(fixed[t] == mm for t in se.dsts)
            zi = m.z[(e, mm)] = m.var(f"z_{e}_{mm}", lb=1.0 if forced else 0.0)
            for t in se.dsts:
                if (t, mm) in m.x:
                    m.row([zi, m.x[(t, mm)]], [1.0, -1.0], ">=", 0.0)
            ws = []
            for s in allowed[se.src]:
                c = se.tau[s][mm] if s != mm else 0.0
                if not math.isfinite(c):
                    continue
                wi = m.w[(e, s, mm)] = m.var(f"w_{e}_{s}_{mm}", obj=c if latency else 0.0)
                ws.append(wi)
                for res, sec in se.loads.get((s, mm), {}).items():
                    add_load(res, wi, sec)
                if naive:
                    m.row([wi, m.x[(se.src, s)], zi], [1.0, -1.0, -1.0], ">=", -1.0)
                else:
                    m.row([wi, m.x[(se.src, s)]], [1.0, -1.0], "<=", 0.0)
            if naive:
                for s in allowed[se.src]:
                    if s != mm and not math.isfinite(se.tau[s][mm]):
                        m.row([m.x[(se.src, s)], zi], [1.0, 1.0], "<=", 1.0)
            else:
                m.row([*ws, zi], [1.0] * len(ws) + [-1.0], "==", 0.0)

    # Memory, only where it can bind.
    for n in range(N):
        units = [u for u in range(U) if (u, n) in m.x]
        if sum(inst.mem[u] for u in units) > inst.cap[n]:
            # Divided by the capacity. Unit memory is whole bytes, so floor(cap) + 0.5 admits exactly the
            # sums <= cap; `mem_margin` (fraction of the capacity) guards against a solver's feasibility
            # tolerance when a solve must be repeated (see solve.py).
            cap = inst.cap[n]
            rhs = (math.floor(cap) + 0.5) / cap - mem_margin
            m.row([m.x[(u, n)] for u in units], [inst.mem[u] / cap for u in units], "<=", rhs, int_scale=cap)

    if not naive and window_cuts:
        _memory_window_cuts(m, inst)

    if symmetry and latency:
        m.symmetry_classes = identical_nodes(inst)
        for cls in m.symmetry_classes:
            # Relabel interchangeable nodes by their first unit: node cls[k] hosts unit u only if cls[k-1]
            # hosts some earlier unit.
            for prev, cur in zip(cls, cls[1:], strict=False):
                for u in range(U):
                    if (u, cur) not in m.x:
                        continue
                    earlier = [m.x[(v, prev)] for v in range(u) if (v, prev) in m.x]
                    m.row([m.x[(u, cur)], *earlier], [1.0] + [-1.0] * len(earlier), "<=", 0.0)

    m.obj = [c * m.time_scale for c in m.obj]
    m.obj_const *= m.time_scale
    if not latency:
        m.t_var = m.var("T", lb=0.0, ub=math.inf, obj=1.0)
        for n in range(N):
            terms = load.get(inst.nodes[n], [])
            _load_row(m, terms, node_const[n])
        for res in sorted(set(load) | set(link_const)):
            if res not in inst.nodes:
                _load_row(m, load.get(res, []), link_const.get(res, 0.0))
    return m


def _memory_window_cuts(m: LinearModel, inst: Instance) -> None:
    """A run of consecutive units whose memory exceeds node n's cannot all sit on n: a chain that is on n
    at the run's first unit must leave n before its last (and one on n at its last must have entered).

        x[a,n] <= sum_{u=a..b-1} (x[u,n] - y[u,n,n])        (leave)
        x[b,n] <= sum_{u=a..b-1} (x[u+1,n] - y[u,n,n])      (enter)

    for the shortest run a..b with mem > cap(n). Without them the LP mixes single-node chains that each
    break a memory limit but average under it, and pays for no cut at all.
    """
    stay: dict[tuple[int, int], int] = {}
    for (k, i, j), idx in m.y.items():
        p = inst.pairs[k]
        if i == j and p.b == p.a + 1:
            stay[(p.a, i)] = idx
    U = inst.n_units
    for n in range(inst.n_nodes):
        cap = inst.cap[n]
        for a in range(U):
            if (a, n) not in stay:
                continue
            used, b = inst.mem[a], a
            while used <= cap and b + 1 < U and (b, n) in stay and (b + 1, n) in m.x:
                b += 1
                used += inst.mem[b]
            if used <= cap or b == a:
                continue  # the run fits, or it is cut short by a unit that cannot be on n anyway
            leave_idx, leave_coef = [m.x[(a, n)]], [1.0]
            enter_idx, enter_coef = [m.x[(b, n)]], [1.0]
            for u in range(a, b):
                leave_idx += [m.x[(u, n)], stay[(u, n)]]
                leave_coef += [-1.0, 1.0]
                enter_idx += [m.x[(u + 1, n)], stay[(u, n)]]
                enter_coef += [-1.0, 1.0]
            m.row(*_merge(leave_idx, leave_coef), "<=", 0.0)
            m.row(*_merge(enter_idx, enter_coef), "<=", 0.0)


def _merge(idx: list[int], coef: list[float]) -> tuple[list[int], list[float]]:
    out: dict[int, float] = {}
    for i, c in zip(idx, coef, strict=True):
        out[i] = out.get(i, 0.0) + c
    keep = [(i, c) for i, c in out.items() if c != 0.0]
    return [i for i, _ in keep], [c for _, c in keep]


def _load_row(m: LinearModel, terms: list[tuple[int, float]], const: float) -> None:
    """T >= const + sum(s * var)."""
    assert m.t_var is not None
    merged: dict[int, float] = {}
    for var, s in terms:
        merged[var] = merged.get(var, 0.0) + s
    k = m.time_scale
    m.row([m.t_var, *merged], [1.0] + [-s * k for s in merged.values()], ">=", const * k, timed=True)


def identical_nodes(inst: Instance, rel_tol: float = 1e-12) -> list[list[int]]:
    """Classes of nodes that swapping leaves every cost, domain and capacity unchanged (an automorphism
    of the instance): only then may the solver consider one labelling of them."""
    N = inst.n_nodes
    src, sink = inst.net.index(inst.net.source), inst.net.index(inst.net.sink_node)

    def close(a: float, b: float) -> bool:
        return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel_tol * max(abs(a), abs(b)))

    def swap_ok(p: int, q: int) -> bool:
        if p in (src, sink) or q in (src, sink) or inst.cap[p] != inst.cap[q]:
            return False
        for u in range(inst.n_units):
            if not close(inst.unary[u][p], inst.unary[u][q]):
                return False

        def perm(k: int) -> int:
            return q if k == p else p if k == q else k

        mats = [pp.cost for pp in inst.pairs] + [e.tau for e in inst.edges]
        for c in mats:
            for i in range(N):
                for j in range(N):
                    if not close(c[i][j], c[perm(i)][perm(j)]):
                        return False
        return True

    classes: list[list[int]] = []
    for n in range(N):
        for cls in classes:
            if swap_ok(cls[0], n):
                cls.append(n)
                break
        else:
            classes.append([n])
    return [c for c in classes if len(c) > 1]
