"""A few cells of the split map run for real on the EMULATED runtime: measured vs predicted.

    python -m bench.map_measure [--cells pi0-png-kept-2ms ...] [--requests 3] [--out bench/results]
                                [--name map_measure]

bench.split_map predicts every cell from the cost model alone. Here a few chosen cells run their best
plan and device-only (and, where device-only is the answer, the best other tier) through local worker
processes, as `aiflow run` does: links shaped in the transport to the cell's bandwidth and latency,
each node's compute stretched to its profiled time, everything slowed by one time-dilation factor K
(the cloud GPU is played on this machine's CPU). These are EMULATED figures: the device, edge and
cloud are this machine's processes, and their speeds are the profile's (roofline estimates for the
device and edge classes, and for the h200, measured here for this machine's class). What the run does
check is the runtime against the cost model (transfers, hops, passes, the decode loop) and that every
plan gives the same output as the unsplit model run in this process (for the LLM: as device-only).

Per cell and strategy: the measured median latency (divided by K), the predicted latency for each
request's own number of decoder passes (median), their ratio, and the speedup over device-only,
measured and predicted.

Writes OUT/map_measure.json and OUT/map_measure.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.results_io import write_results
from bench.split_map import WORKLOADS, Workload, cell_network, md_escape, workload_profile
from orchestrator.demo import StrategyRun, local_dilation, run_strategy, unsplit_captions, write_test_images
from orchestrator.strategies import describe_assignment, strategy_plans
from profiler.errors import InputError
from profiler.models import load_adapter

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("The capital of France is", "Write a haiku about the sea.", "List three primary colours.")
LLM_NEW_TOKENS = 4       # short requests: the LLM's device-only plan is seconds per request under K
CAPTION_TOKENS = 16      # the random-init ViT-GPT-2 captioner never stops early: the profile's 16 tokens


@dataclass(frozen=True)
class Cell:
    key: str
    workload: str                 # a split_map workload key
    device: str
    access_mbit: float
    access_latency_s: float
    raw_on_device: bool
    why: str                      # what the cell is meant to show
    strategies: tuple[str, ...] = ("optimal", "device-only")
    # K = the smallest safe dilation x k_scale: slack for real compute slowed by other load on this
    # shared host (at x1 the tiny captioner's split measured 1.36x its prediction under load 6 on 2
    # cores, at x3 1.04x). SmolLM2's K is already ~44, so it gets less: every request costs K x its time.
    k_scale: float = 3.0
    in_default_run: bool = True   # the camera cells take 26 minutes: run them by name (--cells)


CELLS: tuple[Cell, ...] = (
    Cell("pi0-png-kept-2ms", "tiny-png", "pi-zero-2w", 31.6, 0.002, True,
         "low-end device, the image kept on it: the optimum decodes on the device and ships features"),
    Cell("pi0-png-kept-20ms", "tiny-png", "pi-zero-2w", 31.6, 0.020, True,
         "the same with 20 ms to the edge"),
    Cell("pi0-png-free-20ms", "tiny-png", "pi-zero-2w", 31.6, 0.020, False,
         "low-end device, no constraint: the optimum sends the PNG file to the cloud"),
    Cell("a78-png-free-2ms", "tiny-png", "phone-a78", 31.6, 0.002, False,
         "a flagship-class phone: device-only is the optimum", ("optimal", "device-only", "cloud-only")),
    Cell("sd695-smollm2-kept-2ms", "smollm2-text", "phone-sd695", 31.6, 0.002, True,
         "SmolLM2 prompt kept on a mid-range phone: tokenize there, the rest in the cloud", k_scale=1.5),
    # The ViT-B/16 + GPT-2 captioner: the h200 runs it ~100x faster than this CPU, so K is ~100 before
    # slack and every predicted second costs minutes; these cells run on a quiet host with little slack,
    # and the second leaves out device-only (predicted 7.8x slower than the optimum, 4.5x than cloud-only).
    Cell("a78-camera-free-20ms", "vit-gpt2-camera", "phone-a78", 31.6, 0.020, False,
         "a 12 MP photo, no constraint: the optimum decodes it on the phone and sends the cloud 224 px pixels",
         ("optimal", "cloud-only", "device-only"), k_scale=1.25, in_default_run=False),
    Cell("sd695-camera-free-2ms", "vit-gpt2-camera", "phone-sd695", 31.6, 0.002, False,
         "the same on a mid-range phone, 2 ms to the edge", ("optimal", "cloud-only"), k_scale=1.25,
         in_default_run=False),
)


def _workload(key: str) -> Workload:
    return next(w for w in WORKLOADS if w.key == key)


def _inputs(work: Workload, folder: Path, count: int) -> tuple[list[str], int]:
    """(request inputs, max new tokens): held-out test scenes as PNG files, or prompts."""
    if work.key == "smollm2-text":
        return [PROMPTS[i % len(PROMPTS)] for i in range(count)], LLM_NEW_TOKENS
    if work.key == "tiny-png":
        return [str(img.path) for img in write_test_images(folder, count)], 32
    if work.key == "vit-gpt2-camera":
        return camera_files(folder, count), CAPTION_TOKENS
    raise InputError(f"{work.key}: map_measure has no inputs for this workload")


def camera_files(folder: Path, count: int) -> list[str]:
    """`count` 12 MP JPEGs: the profiled camera photo as it is, mirrored, upside down and both (each
    a different picture of the same size, saved like the original)."""
    import io

    from PIL import Image

    from profiler.images import CAMERA_QUALITY, camera_photo_bytes

    turns = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)
    with Image.open(io.BytesIO(camera_photo_bytes())) as im:
        photo = im.convert("RGB")
    paths = []
    for i in range(count):
        path = folder / f"camera-{i}.jpeg"
        turn = turns[i % len(turns)]
        if turn is None:
            path.write_bytes(camera_photo_bytes())
        else:
            photo.transpose(turn).save(path, format="JPEG", quality=CAMERA_QUALITY)
        paths.append(str(path))
    return paths


def _row(cell: Cell, run: StrategyRun, K: float) -> dict[str, Any]:
    plan = run.strategy.plan
    assert plan is not None
    return {"cell": cell.key, "strategy": run.strategy.name, "placement": describe_assignment(plan.assignment),
            "dilation": K, "requests": len(run.requests),
            "measured_median_ms": 1e3 * run.median_s, "predicted_median_ms": 1e3 * run.predicted_median_s,
            "ratio": run.median_s / run.predicted_median_s,
            "outputs": [r.caption for r in run.requests]}


def measure_cell(cell: Cell, requests: int, k_scale: float | None = None) -> dict[str, Any]:
    """Run the cell's strategies on the emulated network; a dict with a row per strategy. `k_scale`
    (default: the cell's) multiplies the smallest safe K."""
    work = _workload(cell.workload)
    profile = workload_profile(work)
    adapter = load_adapter(work.model)
    net = cell_network(cell.device, cell.access_mbit, cell.access_latency_s, cell.raw_on_device)
    K = local_dilation(profile, net) * (cell.k_scale if k_scale is None else k_scale)
    rows = []
    with tempfile.TemporaryDirectory(prefix="map-measure-") as tmp:
        inputs, new_tokens = _inputs(work, Path(tmp), requests)
        # the oracle for an image workload: the whole model in this process (an LLM's: device-only)
        unsplit = (None if work.key == "smollm2-text"
                   else unsplit_captions(adapter, [Path(p) for p in inputs], max_new_tokens=new_tokens))
        for strategy in strategy_plans(profile, net, names=cell.strategies):
            if strategy.plan is None:
                rows.append({"cell": cell.key, "strategy": strategy.name, "why_not": strategy.why_not})
                continue
            t0 = time.perf_counter()
            run = run_strategy(strategy, work.model, net, profile, inputs, dilation=K, repeats=1, warmup=1,
                               adapter=adapter, max_new_tokens=new_tokens)
            row = _row(cell, run, K)
            print(f"  {cell.key} {strategy.name:12s} {row['placement']:28s} measured {row['measured_median_ms']:8.1f} "
                  f"ms  predicted {row['predicted_median_ms']:8.1f} ms  ratio {row['ratio']:.3f}  "
                  f"({time.perf_counter() - t0:.0f} s wall, K = {K:.2f})  EMULATED", flush=True)
            rows.append(row)
    done = {r["strategy"]: r for r in rows if "measured_median_ms" in r}
    dev = done.get("device-only")
    reference = unsplit if unsplit is not None else (dev["outputs"] if dev else None)
    for r in done.values():
        r["speedup_vs_device_measured"] = dev["measured_median_ms"] / r["measured_median_ms"] if dev else None
        r["speedup_vs_device_predicted"] = dev["predicted_median_ms"] / r["predicted_median_ms"] if dev else None
        # every plan must give the unsplit model's outputs (the same model, cut elsewhere)
        r["same_outputs_as"] = "unsplit" if unsplit is not None else "device-only"
        r["same_outputs"] = (r["outputs"] == reference) if reference is not None else None
    return {"cell": asdict(cell), "model": profile.model, "dilation": K, "rows": rows}


def markdown(cells: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = ["# Split map cells run on the EMULATED runtime", "",
           f"Command: `{meta['command']}`  ",
           f"Machine: {meta['machine']}; {meta['date']}; {meta['wall_s']:.0f} s.", "",
           "EMULATED: every node is a local worker process on this machine; links are shaped in the transport, "
           "each node's compute is stretched to its profiled time (roofline estimates for the device and edge "
           "classes and the h200) and everything runs K times slower, then is divided by K. Measured/predicted "
           "checks the runtime against the cost model, not the estimates against real devices. The oracle for the "
           "outputs is the unsplit model run in this process (SmolLM2's: its device-only plan).", "",
           "| cell | model | device | link | raw on device | strategy | placement | measured ms | predicted ms | "
           "measured/predicted | x device measured | x device predicted | same output as the oracle |",
           "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for c in cells:
        cell = c["cell"]
        link = f"{cell['access_mbit']:g} Mbit/s, {1e3 * cell['access_latency_s']:g} ms"
        for r in c["rows"]:
            head = (f"| {cell['key']} | {c['model']} | {cell['device']} | {link} | "
                    f"{'yes' if cell['raw_on_device'] else 'no'} | {r['strategy']} |")
            if "why_not" in r:
                out.append(f"{head} no plan: {md_escape(str(r['why_not']))} | | | | | | |")
                continue
            sm, sp = r["speedup_vs_device_measured"], r["speedup_vs_device_predicted"]
            same = r["same_outputs"]
            out.append(f"{head} {md_escape(r['placement'])} | {r['measured_median_ms']:.1f} | "
                       f"{r['predicted_median_ms']:.1f} | {r['ratio']:.3f} | "
                       f"{'n/a' if sm is None else f'{sm:.2f}'} | {'n/a' if sp is None else f'{sp:.2f}'} | "
                       f"{'n/a' if same is None else ('yes' if same else 'NO')} |")
    out += ["", "Why each cell: " + "; ".join(f"{c['cell']['key']}: {c['cell']['why']} (K = {c['dilation']:.2f})"
                                               for c in cells) + "."]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", nargs="+", default=[c.key for c in CELLS if c.in_default_run],
                    help="cells to run (default: all but the slow camera cells; known: "
                         f"{', '.join(c.key for c in CELLS)})")
    ap.add_argument("--requests", type=int, default=3, help="timed requests per strategy (after one warm-up)")
    ap.add_argument("--k-scale", type=float, default=None,
                    help="multiply the smallest safe time dilation K by this (>= 1; default: each cell's own)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="map_measure", help="results file name under --out (default map_measure)")
    args = ap.parse_args(argv)
    known = {c.key: c for c in CELLS}
    bad = [k for k in args.cells if k not in known]
    if bad or args.requests < 1 or (args.k_scale is not None and not args.k_scale >= 1):
        what = (f"unknown cells {', '.join(bad)} (known: {', '.join(known)})" if bad
                else "--requests must be >= 1 and --k-scale >= 1")
        print(f"map_measure: error: {what}", file=sys.stderr)
        return 2
    import platform

    import torch
    t0 = time.perf_counter()
    print("EMULATED runtime: local workers, shaped links, compute stretched to the profile, time dilation K",
          flush=True)
    try:
        cells = [measure_cell(known[k], args.requests, args.k_scale) for k in args.cells]
    except InputError as exc:
        print(f"map_measure: error: {exc}", file=sys.stderr)
        return 2
    meta = {"command": ("python -m bench.map_measure " + " ".join(sys.argv[1:] if argv is None else argv)).strip(),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)",
            "date": time.strftime("%Y-%m-%d"), "wall_s": time.perf_counter() - t0, "emulated": True,
            "requests_per_strategy": args.requests, "k_scale": args.k_scale}
    text = markdown(cells, meta)
    write_results(args.out, args.name, {"meta": meta, "cells": cells}, text)
    print(text)
    print(f"wrote {args.out / args.name}.json, .md in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
