"""The captioner family on the network map: draft-only, target-only, best split and best cooperative,
predicted and measured, with caption quality.

    python -m bench.cooperative [--images 8] [--points all|NAME,...] [--quick] [--out bench/results]
                                [--target-profile F] [--draft-profile F] [--predict-only]

For each network point (the shipped three-tier network with the phone-edge link varied, and the
low-latency variant of the experiment), the planner's answer (`mode`), the predicted latency of each
strategy, and, unless --predict-only, each strategy run on held-out test images through local
processes under emulation (links shaped in the transport, compute stretched to the profiles, one
dilation K): draft-only on the phone (the draft's own captions), target-only on the phone, the edge
and the cloud, the best split of the target (the planner's optimum) and the best cooperative plan
(the draft on the phone, the target verifying). Per strategy: median measured latency (wall time / K),
median prediction (each request's own decoder passes or rounds), scene accuracy on the true scenes,
and agreement with the target's own greedy captions.

Writes OUT/cooperative.json (every request) and OUT/cooperative.md (the tables).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.results_io import write_results
from orchestrator.cooperative import latency_for_rounds
from orchestrator.costmodel import latency_for_steps
from orchestrator.demo import PHONE_NETWORK, input_key, unsplit_captions, write_test_images
from orchestrator.network import NetworkState, load_network
from orchestrator.plan import Plan
from orchestrator.planner import PlanOptions, solve
from orchestrator.planner.baselines import BaselineInfeasible, single_node
from orchestrator.planner.cooperative import choose_plan, coop_plan
from profiler.captioner.parse import try_parse
from profiler.models import load_adapter
from profiler.profile import Profile, load_profile

ROOT = Path(__file__).resolve().parent.parent
TARGET, DRAFT = "captioner-target", "captioner-draft"
TARGET_PROFILE = ROOT / "examples" / "captioner-target.profile.json"
DRAFT_PROFILE = ROOT / "examples" / "captioner-draft.profile.json"
MAX_NEW_TOKENS = 32
MBIT = 1e6


@dataclass(frozen=True)
class Point:
    name: str
    phone_edge_bps: float
    phone_edge_s: float
    edge_cloud_s: float
    phone_mem_bytes: float | None = None     # memory the phone lends the models (None: the file's 8 GB)


SMALL = 16e6      # holds the draft (3.9 MB) and the target's encoder, not the whole target (21.6 MB)
POINTS = (
    Point("shipped (20 Mbit/s, 10 ms / 25 ms)", 20 * MBIT, 0.010, 0.025),
    Point("5 Mbit/s, 10 ms / 25 ms", 5 * MBIT, 0.010, 0.025),
    Point("100 Mbit/s, 2 ms / 5 ms", 100 * MBIT, 0.002, 0.005),
    Point("phone lends 16 MB; 20 Mbit/s, 10 ms / 25 ms", 20 * MBIT, 0.010, 0.025, SMALL),
    Point("phone lends 16 MB; 100 Mbit/s, 2 ms / 5 ms", 100 * MBIT, 0.002, 0.005, SMALL),
    Point("phone lends 16 MB; 100 Mbit/s, 2 ms / 25 ms", 100 * MBIT, 0.002, 0.025, SMALL),
    Point("phone lends 16 MB; 20 Mbit/s, 2 ms / 25 ms", 20 * MBIT, 0.002, 0.025, SMALL),
)


def network_at(base: NetworkState, p: Point) -> NetworkState:
    net = base.with_link("phone", "edge", bandwidth_bps=p.phone_edge_bps, latency_s=p.phone_edge_s)
    net = net.with_link("edge", "cloud", latency_s=p.edge_cloud_s)
    return net if p.phone_mem_bytes is None else net.with_node("phone", mem_bytes=p.phone_mem_bytes)


@dataclass
class Row:
    strategy: str
    model: str
    plan: Plan | None
    predicted_s: float | None
    why_not: str | None = None
    requests: list[dict] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        vals = [r[key] for r in self.requests if r.get(key) is not None]
        return statistics.median(vals) if vals else None


def strategies(target: Profile, draft: Profile, net: NetworkState, device: str = "phone") -> tuple[list[Row], str]:
    """Draft-only on `device`, the target alone on each of `device`, edge and cloud, the best split and the
    best cooperative plan; and the planner's answer (`split` or `cooperative`)."""
    rows: list[Row] = []

    def single(prof: Profile, node: str, label: str) -> None:
        try:
            plan = single_node(prof, net, node)
            rows.append(Row(label, prof.model, plan, plan.predicted_latency_s))
        except BaselineInfeasible as exc:
            rows.append(Row(label, prof.model, None, None, "; ".join(exc.reasons)))

    single(draft, device, f"draft-only ({device})")
    for node in (device, "edge", "cloud"):
        single(target, node, f"target-only ({node})")
    split = solve(target, net, PlanOptions())
    rows.append(Row("best split", target.model, split, split.predicted_latency_s))
    chosen, search = choose_plan(split, target, draft, net)
    if search.best is not None:
        plan = coop_plan(target, draft, search.best)
        rows.append(Row(f"best cooperative (k={plan.k}, {search.best.evaluation.verifier})", target.model, plan,
                        plan.predicted_latency_s))
    else:
        rows.append(Row("best cooperative", target.model, None, None, "; ".join(search.skipped) or "none"))
    return rows, chosen.mode or "split"


def run_row(row: Row, net: NetworkState, target: Profile, draft: Profile, images: list[Any], dilation: float,
            adapters: dict[str, Any], names: tuple[str, str] = (TARGET, DRAFT)) -> None:
    """Run `row`'s plan on `images` (after one untimed warm-up) and keep each request's figures;
    `names` are the target's and the draft's model names (adapters holds both)."""
    from runtime.cooperative_session import run_cooperative
    from runtime.session import run_on_network

    if row.plan is None:
        return
    inputs = [str(images[0].path)] + [str(im.path) for im in images]          # one untimed warm-up
    if row.plan.mode == "cooperative":
        results = run_cooperative(*names, net, row.plan, inputs, max_new_tokens=MAX_NEW_TOKENS,
                                  target_profile=target, draft_profile=draft, dilation=dilation, threads=1,
                                  adapters=(adapters[names[0]], adapters[names[1]]))
        for r in results[1:]:
            res = r.result
            pred = latency_for_rounds(target, draft, net, row.plan.assignment, row.plan.draft_assignment or [],
                                      row.plan.k or 1, res.rounds, res.draft_passes)
            row.requests.append({"image": input_key(r.input), "caption": r.text, "measured_s": res.scaled_s,
                                 "predicted_s": pred, "rounds": res.rounds, "draft_passes": res.draft_passes,
                                 "accepted": res.accepted, "bytes": sum(res.bytes_sent.values())})
        return
    prof = target if row.model == names[0] else draft
    results = run_on_network(row.model, net, row.plan, inputs, profile=prof, dilation=dilation,
                             adapter=adapters[row.model], threads=1, max_new_tokens=MAX_NEW_TOKENS)
    for r in results[1:]:
        res = r.result
        row.requests.append({"image": input_key(r.input), "caption": r.text or "", "measured_s": res.scaled_s,
                             "predicted_s": latency_for_steps(prof, net, row.plan.assignment, res.steps),
                             "passes": res.steps, "bytes": sum(res.breakdown(scale=True)["transfer_bytes"].values())})


def quality(row: Row, truth: dict[str, str], reference: dict[str, str]) -> tuple[float | None, float | None]:
    if not row.requests:
        return None, None
    n = len(row.requests)
    acc = sum((s := try_parse(r["caption"])) is not None and s.key() == truth[r["image"]] for r in row.requests) / n
    same = sum(r["caption"] == reference[r["image"]] for r in row.requests) / n
    return acc, same


def row_record(row: Row, truth: dict[str, str], reference: dict[str, str]) -> dict[str, Any]:
    """A strategy's results as the JSON files and `strategy_table` keep them (seconds, medians)."""
    acc, same = quality(row, truth, reference)
    return {"strategy": row.strategy, "model": row.model, "why_not": row.why_not,
            "plan_predicted_s": row.predicted_s, "measured_s": row.median("measured_s"),
            "predicted_s": row.median("predicted_s"), "scene_accuracy": acc, "same_as_target": same,
            "plan": row.plan.model_dump(mode="json", exclude_none=True) if row.plan else None,
            "requests": row.requests}


def strategy_table(records: list[dict[str, Any]]) -> list[str]:
    """The markdown table of `row_record`s: predicted for the plan and per request, measured, quality."""
    lines = ["| strategy | model | predicted (plan) | measured | predicted | scene accuracy | same as target |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        if r["why_not"]:
            lines.append(f"| {r['strategy']} | {r['model']} | infeasible: {r['why_not']} | | | | |")
            continue
        acc = "-" if r["scene_accuracy"] is None else f"{r['scene_accuracy']:.0%}"
        same = "-" if r["same_as_target"] is None else f"{r['same_as_target']:.0%}"
        lines.append(f"| {r['strategy']} | {r['model']} | {_ms(r['plan_predicted_s'])} | "
                     f"{_ms(r['measured_s'])} | {_ms(r['predicted_s'])} | {acc} | {same} |")
    return lines


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.1f}"


def report(points: list[dict], meta: dict) -> str:
    lines = ["# The captioner family: split against cooperative", "",
             f"Command: `{meta['command']}` ({meta['images']} held-out test images per strategy, after one "
             f"untimed warm-up; dilation K = {meta['dilation']:.3g}; measured = wall time / K; load average "
             f"before {meta['load_before']}, after {meta['load_after']}).", "",
             "Latency: median over the requests, ms; predicted: median of each request's own prediction "
             "(its decoder passes, or its rounds and draft passes). Quality: scene accuracy on the true "
             "scenes; 'same' = caption identical to the target's own greedy caption.", ""]
    for p in points:
        lines += [f"## {p['point']}: the planner answers `{p['mode']}`", "", *strategy_table(p["rows"]), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.cooperative")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--points", default="all", help="all, or a comma list of point numbers (1-based)")
    ap.add_argument("--quick", action="store_true", help="2 images, the first and last points")
    ap.add_argument("--predict-only", action="store_true", help="plans and predictions, no runs")
    ap.add_argument("--target-profile", type=Path, default=TARGET_PROFILE)
    ap.add_argument("--draft-profile", type=Path, default=DRAFT_PROFILE)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="cooperative")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    points = list(POINTS)
    if a.quick:
        points, a.images = [POINTS[0], POINTS[-1]], 2
    elif a.points != "all":
        points = [POINTS[int(i) - 1] for i in a.points.split(",")]
    target, draft = load_profile(a.target_profile), load_profile(a.draft_profile)
    base = load_network(PHONE_NETWORK)
    from orchestrator.demo import local_dilation

    dilation = max(local_dilation(target, base), local_dilation(draft, base))
    adapters = {TARGET: load_adapter(TARGET), DRAFT: load_adapter(DRAFT)}
    load_before = ", ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        images = write_test_images(Path(tmp), a.images)
        truth = {im.path.name: im.truth for im in images}
        own = unsplit_captions(adapters[TARGET], [im.path for im in images], MAX_NEW_TOKENS)
        reference = dict(zip([im.path.name for im in images], own, strict=True))
        out_points = []
        for p in points:
            net = network_at(base, p)
            rows, mode = strategies(target, draft, net)
            for row in rows:
                t0 = time.perf_counter()
                if not a.predict_only:
                    run_row(row, net, target, draft, images, dilation, adapters)
                print(f"{p.name}: {row.strategy}: predicted {_ms(row.predicted_s)} ms, measured "
                      f"{_ms(row.median('measured_s'))} ms ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                      flush=True)
            out_points.append({"point": p.name, "mode": mode,
                               "rows": [row_record(row, truth, reference) for row in rows]})
    meta = {"command": "python -m bench.cooperative " + " ".join(argv if argv is not None else sys.argv[1:]),
            "images": a.images, "dilation": dilation, "load_before": load_before,
            "load_after": ", ".join(f"{x:.2f}" for x in __import__("os").getloadavg()),
            "python": platform.python_version(), "torch": torch.__version__}
    path = write_results(a.out, a.name, {"meta": meta, "points": out_points}, report(out_points, meta))
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
