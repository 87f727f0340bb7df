"""How fast the planner proves an optimum, per back-end, on random instances shaped like real models.

    python -m bench.planner_speed [--quick] [--sizes 12x3,48x6] [--seeds 5] [--backends cbc,highs,cpsat]

Instances: half decoder-only LLMs (embedding, blocks, head; prefill + a decode loop of 16-32 tokens),
half encoder-decoders (a vision encoder, then a decoder whose cross-attention units all read the
encoder output: a shared edge). Nodes: one device (the source), edge boxes, cloud GPUs of two
kinds (some identical, as in a rack). Memory limits are set so the model does not fit the device
or any single GPU; the device gets the raw-input rule on half the instances and a pinned head on
some. Each instance is solved by the integer program (fast path off: it is what is measured), once
per back-end, plus the naive linearisation (`t >= x1 + x2 - 1`) under a time limit for scale.

Writes bench/results/planner_speed.json and .md; prints the table.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from bench.results_io import write_results
from orchestrator.network import NetworkState, parse_network
from orchestrator.planner import PlanOptions, solve_report
from profiler.profile import Profile, parse_profile

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = [(12, 3), (48, 6), (96, 8), (200, 16)]


def llm_profile(rnd: random.Random, n_units: int) -> Profile:
    """Embedding, n-2 transformer blocks, final norm + head; prefill of a prompt, then a decode loop."""
    d = rnd.choice([576, 768, 1024])
    prompt, new = rnd.choice([32, 64, 128]), rnd.choice([16, 24, 32])
    units = []
    for u in range(n_units):
        kind = "embed" if u == 0 else "head" if u == n_units - 1 else "block"
        params = {"embed": 49152 * d * 4, "head": 49152 * d * 4, "block": 12 * d * d * 4}[kind]
        kv = 2 * (prompt + new) * d * 4 if kind == "block" else 0
        base = {"embed": 0.2, "head": 3.0, "block": 1.0}[kind] * d * d / 576 ** 2 * rnd.uniform(0.9, 1.1)
        units.append(_unit(f"{kind}{u}", params, params + kv, base, prompt,
                           out={"prefill": 4.0 * d * (prompt if kind != "head" else 1),
                                "decode": 4.0 * d if kind != "head" else 4.0},
                           phases=("prefill", "decode"), rnd=rnd))
    phases = [{"name": "prefill", "first": 0, "last": n_units - 1, "repeat": 1, "input": "source",
               "in_bytes": 4 * prompt},
              {"name": "decode", "first": 0, "last": n_units - 1, "repeat": new, "input": "loop", "in_bytes": 8}]
    return parse_profile({"format": "aiflow.profile/v1", "model": f"llm-{n_units}", "units": units,
                          "phases": phases, "result_bytes": 4 * new})


def encdec_profile(rnd: random.Random, n_units: int) -> Profile:
    """A ViT encoder (a third of the units) and a GPT-2-like decoder with cross-attention in every block."""
    k = max(2, n_units // 3)
    d, patches, prompt, new = 768, 197, 8, rnd.choice([16, 24])
    units = []
    for u in range(n_units):
        enc = u < k
        params = 12 * d * d * 4 if 0 < u < n_units - 1 else 40_000 * d * 4
        kv = 0 if enc else 2 * (prompt + new + patches) * d * 4
        base = rnd.uniform(0.9, 1.1) * (1.5 if enc else 1.0)
        out = {"encode": 4.0 * d * patches} if enc else {"prefill": 4.0 * d * prompt, "decode": 4.0 * d}
        if u == n_units - 1:
            out = {"prefill": 4.0, "decode": 4.0}
        units.append(_unit(f"{'enc' if enc else 'dec'}{u}", params, params + kv, base, patches if enc else prompt,
                           out=out, phases=("encode",) if enc else ("prefill", "decode"), rnd=rnd))
    phases = [{"name": "encode", "first": 0, "last": k - 1, "repeat": 1, "input": "source", "in_bytes": 3 * 224 * 224},
              {"name": "prefill", "first": k, "last": n_units - 1, "repeat": 1, "input": "none", "in_bytes": 0},
              {"name": "decode", "first": k, "last": n_units - 1, "repeat": new, "input": "loop", "in_bytes": 8}]
    edges = [{"from": k - 1, "to": list(range(k + 1, n_units - 1)), "bytes": 4.0 * d * patches}]
    return parse_profile({"format": "aiflow.profile/v1", "model": f"encdec-{n_units}", "units": units,
                          "phases": phases, "edges": edges, "result_bytes": 4 * new})


def _unit(name: str, params: int, mem: int, base: float, tokens: int, *, out: dict, phases: tuple[str, ...],
          rnd: random.Random) -> dict:
    """Per-pass seconds on three hardware classes: a phone CPU, an edge CPU, a datacenter GPU."""
    speed = {"phone": 1.0, "edge-cpu": 0.3, "gpu": 0.01}
    lat = {}
    for hw, s in speed.items():
        per = {}
        for ph in phases:
            toks = tokens if ph in ("prefill", "encode") else 1
            work = 0.2 + toks ** 0.8 if hw != "gpu" else 1 + 0.05 * toks
            per[ph] = base * s * 1e-3 * work * rnd.uniform(0.95, 1.05)
        lat[hw] = per
    return {"name": name, "param_bytes": params, "mem_bytes": mem, "out_bytes": out, "latency_s": lat}


def network(rnd: random.Random, n_nodes: int, model_mem: float, pins_units: list[str], family: str) -> NetworkState:
    """`tiered`: the device and edge boxes hold part of the model, every cloud GPU all of it (memory binds
    at the edge of the network). `sharded`: every GPU holds 35-50% of the model, so it must be split
    across GPUs too (memory binds everywhere)."""
    n_edge = max(1, (n_nodes - 1) // 3)
    n_gpu = n_nodes - 1 - n_edge
    gpu_mem = (0.35, 0.5) if family == "sharded" else (1.2, 2.0)
    nodes = [{"name": "device", "hardware": "phone", "mem_bytes": 0.3 * model_mem, "tier": "device"}]
    links = []
    for e in range(n_edge):
        nodes.append({"name": f"edge{e}", "hardware": "edge-cpu", "mem_bytes": rnd.choice([0.4, 0.6]) * model_mem,
                      "slowdown": rnd.choice([1.0, 1.0, 1.5]), "tier": "edge"})
        links.append({"a": "device", "b": f"edge{e}", "bandwidth_bps": rnd.choice([2e7, 5e7, 1e8]),
                      "latency_s": rnd.choice([0.002, 0.005])})
    # Two racks of identical GPUs: same hardware, memory and links within a rack.
    racks = [(gpu_mem[0], 1e9, 0.02), (gpu_mem[1], 5e8, 0.03)]
    for g in range(n_gpu):
        frac, bw, lat = racks[g % 2]
        nodes.append({"name": f"gpu{g}", "hardware": "gpu", "mem_bytes": frac * model_mem, "tier": "cloud"})
        for e in range(n_edge):
            links.append({"a": f"edge{e}", "b": f"gpu{g}", "bandwidth_bps": bw, "latency_s": lat})
        links.append({"a": "device", "b": f"gpu{g}", "bandwidth_bps": 1e7, "latency_s": 0.05})
    for g in range(n_gpu):
        for h in range(g + 1, n_gpu):
            same = g % 2 == h % 2
            links.append({"a": f"gpu{g}", "b": f"gpu{h}", "bandwidth_bps": 1e11 if same else 1e10,
                          "latency_s": 1e-4 if same else 5e-4})
    constraints = {"raw_input_stays_on_source": rnd.random() < 0.5,
                   "pins": {u: ["device", "edge0"] for u in pins_units}}
    return parse_network({"format": "aiflow.network/v1", "source": "device", "nodes": nodes, "links": links,
                          "constraints": constraints})


def instance(seed: int, n_units: int, n_nodes: int, family: str = "sharded") -> tuple[Profile, NetworkState]:
    rnd = random.Random(seed * 1000 + n_units * 17 + n_nodes)
    profile = (llm_profile if seed % 2 == 0 else encdec_profile)(rnd, n_units)
    mem = sum(u.mem_bytes for u in profile.units)
    pins = [profile.units[-1].name] if rnd.random() < 0.5 else []
    return profile, network(rnd, n_nodes, mem, pins, family)


def run_one(profile: Profile, net: NetworkState, method: str, limit: float | None) -> dict:
    """method: a back-end name (the integer program alone), "naive" (CBC on the weak linearisation) or
    "planner" (what `aiflow plan` does: the exact DP where it applies, else CBC)."""
    solver = {"naive": "cbc", "planner": "cbc"}.get(method, method)
    opts = PlanOptions(solver=solver, fast_path=method == "planner", naive=method == "naive",
                       auto_warm_start=method != "naive", time_limit_s=limit, threads=2 if solver == "cpsat" else 1)
    t0 = time.perf_counter()
    try:
        rep = solve_report(profile, net, opts)
    except Exception as exc:  # noqa: BLE001 - a benchmark records failures, it does not stop
        return {"status": f"error: {type(exc).__name__}: {exc}"[:200], "time_s": time.perf_counter() - t0}
    return {"status": rep.plan.status, "time_s": time.perf_counter() - t0, "solver_time_s": rep.solver_time_s,
            "latency_s": rep.plan.predicted_latency_s, "gap": rep.plan.gap, "vars": rep.n_vars, "rows": rep.n_rows,
            "method": rep.method}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two sizes, three seeds: a smoke run")
    ap.add_argument("--sizes", default=None, help="e.g. 12x3,48x6")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--methods", default="planner,cbc,highs,cpsat,naive")
    ap.add_argument("--families", default="tiered,sharded")
    ap.add_argument("--naive-limit", type=float, default=20.0, help="time limit of the naive formulation (s)")
    ap.add_argument("--naive-max-units", type=int, default=96, help="skip the naive formulation above this size")
    ap.add_argument("--limit", type=float, default=30.0, help="time limit of every other solve (s)")
    ap.add_argument("--tag", default="", help="write planner_speed_TAG.json/.md instead")
    args = ap.parse_args(argv)

    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes.split(",")] if args.sizes else (
        SIZES[:2] if args.quick else SIZES)
    seeds = args.seeds or (3 if args.quick else 5)
    methods = args.methods.split(",")
    load_before = os.getloadavg()
    rows = []
    warm = instance(0, 12, 3)
    for m in methods:  # the first solve of a back-end pays its imports: keep that out of the table
        run_one(*warm, m, None)
    for family in args.families.split(","):
        for size in sizes:
            for method in methods:
                if method == "naive" and size[0] > args.naive_max_units:
                    continue
                limit = args.naive_limit if method == "naive" else args.limit
                runs = [run_one(*instance(s, *size, family), method, limit) for s in range(seeds)]
                rows.append(_row(family, size, method, runs))
                print(_fmt_row(rows[-1]), flush=True)
    _check_agreement(rows)
    meta = {"command": "python -m bench.planner_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seeds": seeds, "cpus": os.cpu_count(), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
            "python": platform.python_version(), "time_limit_s": args.limit, "naive_limit_s": args.naive_limit}
    stem = "planner_speed" + (f"_{args.tag}" if args.tag else "")
    write_results(RESULTS, stem, {"meta": meta, "rows": rows}, _markdown(rows, meta), indent=2)
    print(f"\nwrote {RESULTS / stem}.json and .md")


def _row(family: str, size: tuple[int, int], method: str, runs: list[dict]) -> dict:
    times = [r["time_s"] for r in runs]
    solved = [r for r in runs if r["status"] in ("optimal", "feasible")]
    return {"family": family, "size": f"{size[0]}x{size[1]}", "method": method,
            "median_s": statistics.median(times), "p90_s": _pct(times, 0.9),
            "median_solver_s": statistics.median([r.get("solver_time_s", math.nan) for r in runs]),
            "optimal": sum(r["status"] == "optimal" for r in runs), "runs": len(runs),
            "max_gap": max((r.get("gap") or 0.0) for r in solved) if solved else None,
            "vars": statistics.median([r.get("vars", 0) for r in runs]),
            "dp": sum(r.get("method") == "dp" for r in runs),
            "errors": [r["status"] for r in runs if r["status"].startswith("error")][:2],
            "latencies": [r.get("latency_s") for r in runs]}


def _check_agreement(rows: list[dict]) -> None:
    """Every back-end that proved optimality must report the same latency per instance."""
    by_size: dict[str, list[dict]] = {}
    for r in rows:
        by_size.setdefault(f"{r['family']} {r['size']}", []).append(r)
    for size, rs in by_size.items():
        proven = [r for r in rs if r["optimal"] == r["runs"]]
        for a in proven:
            for b in proven:
                for x, y in zip(a["latencies"], b["latencies"], strict=True):
                    if x is not None and y is not None and not math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6):
                        print(f"WARNING {size}: {a['method']} and {b['method']} disagree: {x} vs {y}")


def _fmt_row(r: dict) -> str:
    gap = "" if r["max_gap"] is None else f"{100 * r['max_gap']:.2f}%"
    return (f"{r['family']:>8} {r['size']:>7} {r['method']:<8} median {r['median_s']:8.3f} s  p90 {r['p90_s']:8.3f} s  "
            f"optimal {r['optimal']}/{r['runs']}  max gap {gap:>6}  vars {int(r['vars'])}"
            + (f"  errors {r['errors']}" if r["errors"] else ""))


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Command: `{meta['command']}` ({meta['seeds']} instances per size; {meta['cpus']} CPUs; load average "
             f"before the run {', '.join(f'{x:.2f}' for x in meta['load_avg_before'])}; time limit "
             f"{meta['time_limit_s']} s, naive {meta['naive_limit_s']} s; load average after "
             f"{', '.join(f'{x:.2f}' for x in meta['load_avg_after'])}).", "",
             "| family | units x nodes | method | median s | p90 s | proven optimal | max gap | variables |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        gap = "" if r["max_gap"] is None else f"{100 * r['max_gap']:.2f}%"
        method = r["method"] + (f" (DP on {r['dp']})" if r["dp"] else "")
        lines.append(f"| {r['family']} | {r['size']} | {method} | {r['median_s']:.3f} | {r['p90_s']:.3f} | "
                     f"{r['optimal']}/{r['runs']} | {gap} | {int(r['vars']) or '-'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
