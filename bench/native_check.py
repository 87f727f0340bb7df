"""The cost model against reality: native runs on networks of this machine's own class.

    python -m bench.native_check [--requests 20] [--models tiny-captioner,tiny-gpt2] [--quick]

Every node is of this machine's hardware class, so compute runs at native speed (no stretching to
the profile, no time dilation) and only the links are played (bandwidth and latency). The profile is
measured here first, with the runtime's overheads (`aiflow profile model --overheads`), so the
prediction L holds the profile, the transfer model and the runtime's own costs, and nothing of it is
enacted by a sleep. Per network point (phone-edge bandwidth x link latency; edge-cloud 100 Mbit/s)
and strategy (the optimal plan; a split pinned across all three nodes), the median of
measured / predicted over the requests is reported. Writes bench/results/native_check.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.results_io import write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BANDWIDTHS_MBIT = (1, 5, 20, 100)
LATENCIES_S = (0.002, 0.010)
NODES = ("phone", "edge", "cloud")
SPEED_RUNS = 5                          # in-process generations before and after each point: the host's speed


def network(hw: str, mbit: float, latency: float, pins: dict[str, list[str]] | None = None) -> Any:
    from orchestrator.network import parse_network
    doc: dict[str, Any] = {"format": "aiflow.network/v1", "source": "phone", "nodes": [
        {"name": n, "hardware": hw, "mem_bytes": 1e10} for n in NODES], "links": [
        {"a": "phone", "b": "edge", "bandwidth_bps": mbit * 1e6, "latency_s": latency},
        {"a": "edge", "b": "cloud", "bandwidth_bps": 1e8, "latency_s": latency}]}
    if pins:
        doc["constraints"] = {"pins": pins}
    return parse_network(doc)


def split_pins(profile: Any) -> dict[str, list[str]]:
    """First unit on the phone, a middle unit on the edge, the last on the cloud: a three-way split."""
    names = [u.name for u in profile.units]
    return {names[0]: ["phone"], names[len(names) // 2]: ["edge"], names[-1]: ["cloud"]}


PROMPT = "the quick brown fox jumps over the lazy dog and runs far away into the green hills beyond the river"


def prompt_of(adapter: Any, tokens: int) -> str:
    """A prompt that encodes to exactly `tokens` ids: the profile's request shape (a shorter prompt
    would make the prefill cheaper than profiled)."""
    text = adapter.decode_tokens(adapter.encode_text(PROMPT)[:tokens])
    if len(adapter.encode_text(text)) != tokens:
        raise SystemExit(f"native_check: no {tokens}-token prompt for {adapter.name}")
    return text


def inputs_for(adapter: Any, tmp: Path, n: int, prompt_tokens: int = 16) -> list[str]:
    from runtime.session import takes_images
    if not takes_images(adapter):
        return [prompt_of(adapter, prompt_tokens)] * n
    from orchestrator.demo import write_test_images
    return [str(i.path) for i in write_test_images(tmp, n)]


def host_speed(adapter: Any, sources: list[Any], profile: Any, hw: str) -> list[float]:
    """This host's speed now, as (the whole model's generation run in this process) / (its compute in the
    profile), once per source: 1.0 when the host runs as fast as when it was profiled. Measured beside
    every point, because this shared machine's speed drifts by tens of percent within minutes; it is
    the reference the workers' runs are not (one process, no runtime, no links)."""
    import time

    import torch

    from orchestrator.costmodel import evaluate, with_decode_steps
    from profiler.generate import greedy_generate

    single = network(hw, 100, 0.0)
    out = []
    for source in sources:
        with torch.inference_mode():
            t0 = time.perf_counter()
            steps = greedy_generate(adapter, source, new_tokens=16).steps
            took = time.perf_counter() - t0
        ev = evaluate(with_decode_steps(profile, steps), single, ["phone"] * len(profile.units))
        out.append(took / sum(ev.compute_s.values()))
    return out


def at_host_speed(profile: Any, net: Any, assignment: list[str], steps: int, speed: float) -> float:
    """L of the assignment with every term the host computes (units' compute, the runtime's overheads)
    taken at `speed` times its profiled time; links' terms unchanged."""
    from orchestrator.costmodel import evaluate, with_decode_steps

    ev = evaluate(with_decode_steps(profile, steps), net, assignment)
    return ev.latency_s + (speed - 1.0) * (sum(ev.compute_s.values()) + ev.overhead_s)


def run_model(model: str, requests: int, quick: bool, threads: int) -> list[dict[str, Any]]:
    import tempfile

    import torch

    from orchestrator.costmodel import latency_for_steps
    from orchestrator.planner import PlanOptions, solve
    from profiler.adapters.base import InputSpec
    from profiler.build import build_profile
    from profiler.hardware import hardware_class
    from profiler.models import load_adapter
    from runtime.local import LocalWorkers
    from runtime.overheads import measure_overheads, with_overheads
    from runtime.session import prepare_input, run_on_network

    torch.set_num_threads(threads)          # profile and overheads at the workers' thread count
    adapter = load_adapter(model)
    hw = hardware_class(threads=threads)
    print(f"profiling {model} on {hw} (with the runtime's overheads)", file=sys.stderr, flush=True)
    profile = with_overheads(build_profile(adapter, InputSpec(), repeats=20), measure_overheads())
    rows = []
    points = [(m, lat) for m in BANDWIDTHS_MBIT for lat in LATENCIES_S]
    if quick:
        points = points[::3]
    # one pool of workers for every point: no worker starts or stops beside the host-speed runs
    with tempfile.TemporaryDirectory() as tmp, LocalWorkers(model, NODES, threads=threads) as pool:
        items = inputs_for(adapter, Path(tmp), requests + 1, int(profile.input.get("prompt_tokens", 16)))
        sources = [prepare_input(adapter, item) for item in items[:SPEED_RUNS]]
        for mbit, lat in points:
            for strategy in ("optimal", "three-way split"):
                pins = split_pins(profile) if strategy != "optimal" else None
                net = network(hw, mbit, lat, pins)
                plan = solve(profile, net, PlanOptions())
                before = host_speed(adapter, sources, profile, hw)
                results = run_on_network(model, net, plan, items, max_new_tokens=16, emulate=True, profile=profile,
                                         dilation=1.0, adapter=adapter, native_hardware=hw,
                                         threads=threads, pool=pool)
                speed = statistics.median(before + host_speed(adapter, sources, profile, hw))
                ratios, at_speed, measured = [], [], []
                for r in results[1:]:                   # the first request warms the workers up
                    predicted = latency_for_steps(profile, net, plan.assignment, r.result.steps)
                    ratios.append(r.result.measured_s / predicted)
                    at_speed.append(r.result.measured_s / at_host_speed(profile, net, plan.assignment,
                                                                         r.result.steps, speed))
                    measured.append(r.result.measured_s)
                row = {"model": model, "phone_edge_mbit": mbit, "latency_s": lat, "strategy": strategy,
                       "assignment": plan.assignment, "predicted_s": plan.predicted_latency_s,
                       "measured_median_s": statistics.median(measured), "ratio_median": statistics.median(ratios),
                       "host_speed": speed, "ratio_at_host_speed": statistics.median(at_speed),
                       "requests": len(ratios)}
                rows.append(row)
                print(f"  {mbit:>4} Mbit/s {lat * 1e3:>3.0f} ms {strategy:<16} ratio {row['ratio_median']:.3f} "
                      f"(host at {speed:.2f}x its profiled time: {row['ratio_at_host_speed']:.3f})",
                      file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    from orchestrator.strategies import describe_assignment
    out = ["### Native runs: measured / predicted (median per point)", "",
           "| model | phone-edge | latency | strategy | plan | predicted | measured | ratio | host speed | "
           "ratio at host speed |",
           "|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        speed = f"{r['host_speed']:.2f} | {r['ratio_at_host_speed']:.3f}" if "host_speed" in r else "| "
        out.append(f"| {r['model']} | {r['phone_edge_mbit']} Mbit/s | {r['latency_s'] * 1e3:.0f} ms | "
                   f"{r['strategy']} | {describe_assignment(r['assignment'])} | {r['predicted_s'] * 1e3:.1f} ms | "
                   f"{r['measured_median_s'] * 1e3:.1f} ms | {r['ratio_median']:.3f} | {speed} |")
    inside = sum(1 for r in rows if 0.9 <= r["ratio_median"] <= 1.1)
    at_speed = sum(1 for r in rows if 0.9 <= r.get("ratio_at_host_speed", 0.0) <= 1.1)
    out += ["", f"{inside} of {len(rows)} points within 0.90-1.10 against the profile as measured; "
                f"{at_speed} of {len(rows)} at the host's speed measured beside each point.",
            "", "Host speed: the whole model's generation run in the benchmark's own process, 5 times before and "
                "5 after each point, over its compute in the profile (median; 1.00 = as fast as when profiled). "
                "At the host's speed, every term the host computes (units, runtime overheads) is scaled by it; "
                "the links' terms are not."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--models", default="tiny-captioner,tiny-gpt2")
    ap.add_argument("--quick", action="store_true", help="every third network point")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per worker, and for the profile (default 1: three workers share this "
                         "machine's cores, and a worker's event loop must not preempt its own compute threads)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    rows = [r for m in a.models.split(",") for r in run_model(m.strip(), a.requests, a.quick, a.threads)]
    md = markdown(rows)
    write_results(a.out, "native_check", rows, md, indent=2)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
