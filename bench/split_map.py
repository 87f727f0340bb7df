"""Where splitting pays, as the planner predicts it: the optimal plan against the best single tier.

    python -m bench.split_map [--models tiny-captioner smollm2-135m] [--out bench/results]

The AI Flow experiment measures five strategies at a handful of network points; this map covers many
more points from the planner alone (no workers, seconds to run). On the shipped three-tier network it
varies the one-way link latencies (the shipped 10 ms / 25 ms, a LAN edge and metro cloud at 2 / 5 ms,
and 1 / 2 ms) and the phone-edge bandwidth, with edge-cloud at 100 Mbit/s, and reports per point the
optimal plan, its predicted latency, the best single tier's, and the gain; once with no constraint
and once with the raw input kept on the phone (`raw_input_stays_on_source`: only features may leave
it, so edge-only and cloud-only are ruled out). The profiles are the same cached ones the demo and the
experiment use (this machine measured, the three devices estimated).

Writes OUT/split_map.json and OUT/split_map.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.aiflow_experiment import md_cell
from bench.results_io import write_results
from orchestrator.demo import PHONE_NETWORK, cached_profile
from orchestrator.network import NetworkState, load_network
from orchestrator.strategies import describe_assignment, strategy_plans
from profiler.errors import InputError
from profiler.models import load_adapter

ROOT = Path(__file__).resolve().parent.parent
MBIT = 1e6
PHONE_EDGE_MBIT = (1.0, 5.0, 20.0, 100.0, 1000.0)
EDGE_CLOUD_MBIT = 100.0
# (label, phone-edge one-way latency s, edge-cloud one-way latency s); None keeps the network file's
LATENCIES: tuple[tuple[str, float | None, float | None], ...] = (
    ("shipped (10 / 25 ms)", None, None),
    ("2 / 5 ms", 0.002, 0.005),
    ("1 / 2 ms", 0.001, 0.002),
)
SINGLE_TIERS = ("device-only", "edge-only", "cloud-only")
CONSTRAINTS = (("none", False), ("raw input on the phone", True))


def network_at(base: NetworkState, pe_bps: float, pe_latency: float | None, ec_latency: float | None,
               raw_on_source: bool = False) -> NetworkState:
    if raw_on_source:
        base = base.with_constraints(raw_input_stays_on_source=True)
    net = base.with_link("phone", "edge", bandwidth_bps=pe_bps).with_link("edge", "cloud",
                                                                           bandwidth_bps=EDGE_CLOUD_MBIT * MBIT)
    if pe_latency is not None:
        net = net.with_link("phone", "edge", latency_s=pe_latency)
    if ec_latency is not None:
        net = net.with_link("edge", "cloud", latency_s=ec_latency)
    return net


def map_model(model: str, base: NetworkState) -> list[dict[str, Any]]:
    profile, path, cached = cached_profile(load_adapter(model), base)
    print(f"{model}: profile {'cached' if cached else 'measured'} {path.name}", flush=True)
    rows = []
    for (constraint, raw_on_source), (label, pe_lat, ec_lat) in itertools.product(CONSTRAINTS, LATENCIES):
        for mbit in PHONE_EDGE_MBIT:
            net = network_at(base, mbit * MBIT, pe_lat, ec_lat, raw_on_source)
            plans = {s.name: s.plan for s in strategy_plans(profile, net, names=(*SINGLE_TIERS, "optimal")) if s.plan}
            tier, tier_plan = min(((n, plans[n]) for n in SINGLE_TIERS if n in plans),
                                  key=lambda kv: kv[1].predicted_latency_s)
            best = plans["optimal"]
            rows.append({"model": model, "constraint": constraint, "latencies": label, "phone_edge_mbit": mbit,
                         "edge_cloud_mbit": EDGE_CLOUD_MBIT, "optimal": describe_assignment(best.assignment),
                         "optimal_ms": 1e3 * best.predicted_latency_s, "status": best.status,
                         "best_tier": tier, "best_tier_ms": 1e3 * tier_plan.predicted_latency_s,
                         "gain": 1 - best.predicted_latency_s / tier_plan.predicted_latency_s})
    return rows


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    out = ["# Where splitting pays (predicted by the planner)", "", f"Command: `{command}`  ",
           f"Edge-cloud {EDGE_CLOUD_MBIT:g} Mbit/s; latencies are one-way phone-edge / edge-cloud.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        out += [f"## {model}", "", "| constraint | latencies | phone-edge Mbit/s | optimal plan | optimal ms | "
                "best single tier | its ms | gain |", "|---|---|---:|---|---:|---|---:|---:|"]
        for r in rows:
            if r["model"] == model:
                out.append(f"| {r['constraint']} | {r['latencies']} | {r['phone_edge_mbit']:g} | "
                           f"{md_cell(r['optimal'])} | {r['optimal_ms']:.1f} | {r['best_tier']} | "
                           f"{r['best_tier_ms']:.1f} | {100 * r['gain']:.1f}% |")
        out.append("")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny-captioner", "smollm2-135m"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    base = load_network(PHONE_NETWORK)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for model in args.models:
        try:
            rows += map_model(model, base)
        except InputError as exc:           # e.g. the smollm2 extra is not installed
            print(f"{model}: skipped ({exc})", flush=True)
    command = "python -m bench.split_map " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(rows, command)
    write_results(args.out, "split_map", {"command": command, "rows": rows}, text)
    print(text)
    print(f"wrote {args.out / 'split_map'}.json, .md in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
