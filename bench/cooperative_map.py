"""The captioner family across the experiment's network map: where cooperative decoding pays.

    python -m bench.cooperative_map [--devices pi-zero-2w phone-sd695 phone-a78] [--out bench/results]

The cells are bench.split_map's (a low-end device, a jetson-orin-nano edge box, an h200 cloud; the
access link at 1..1000 Mbit/s and 2 or 20 ms; raw input free or kept on the device) with two more
axes that decide whether a draft on the device can pay: the memory the device lends the models (its
datasheet figure, or 16 MB: the draft fits, the target does not) and how far the cloud is beyond the
edge (5 ms as in the map, or 25 ms: a regional data centre). The family takes its input as the PNG
file (`captioner-target+png`, `captioner-draft+png`: a first unit decodes it), as the map's workloads
do. Per cell, PREDICTED by the cost model: draft-only on the device, the target alone on each node,
the best split of the target, the best cooperative plan (draft placement, verifier, k), and which of
the target's plans wins. Cooperative plans give exactly the target's captions (tested with
torch.equal in tests/profiler/test_speculative.py and tests/runtime/test_cooperative_runtime.py), so
quality is the target's wherever they win; draft-only gives the draft's.

The draft's acceptance rates are the shipped draft profile's, measured against the target on pixel
inputs: the PNG decode unit hands the same pixels on, so the tokens, and the acceptance, are the same.
`--measure DEVICE,MBIT,LATENCY_MS,LENT_MB,EDGE_CLOUD_MS` (repeatable) also runs one cell's strategies
on the EMULATED runtime (local worker processes, links shaped, compute stretched to the profiles'
estimates for the cell's classes, one dilation K), on held-out test images after one untimed warm-up,
and reports measured latency, scene accuracy and agreement with the target's own captions.
Writes OUT/cooperative_map.json and OUT/cooperative_map.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.results_io import write_results
from bench.split_map import ACCESS_LATENCY_S, ACCESS_MBIT, DEVICES, all_classes_network, cell_network
from orchestrator.demo import cached_profile
from orchestrator.network import NetworkState
from orchestrator.planner import PlanOptions, solve
from orchestrator.planner.baselines import BaselineInfeasible, single_node
from orchestrator.planner.cooperative import search_cooperative
from orchestrator.strategies import describe_assignment
from profiler.models import load_adapter
from profiler.profile import Profile, load_profile

ROOT = Path(__file__).resolve().parent.parent
TARGET, DRAFT = "captioner-target+png", "captioner-draft+png"
MAX_NEW_TOKENS = 32
SHIPPED_DRAFT = ROOT / "examples" / "captioner-draft.profile.json"
LENT_BYTES = (None, 16e6)              # the device's datasheet memory, or 16 MB: the draft fits, the target not
EDGE_CLOUD_S = (0.005, 0.025)


def family_profiles() -> tuple[Profile, Profile]:
    """The PNG-input target and draft, measured here (cached) with estimates for every map class;
    the draft carries the shipped acceptance rates, re-addressed to the PNG target."""
    target, _, _ = cached_profile(load_adapter(TARGET), all_classes_network())
    draft, _, _ = cached_profile(load_adapter(DRAFT), all_classes_network())
    spec = load_profile(SHIPPED_DRAFT).speculative
    if spec is None:
        raise SystemExit(f"{SHIPPED_DRAFT.name}: no `speculative` section")
    return target, draft.model_copy(update={"speculative": spec.model_copy(update={"target": target.model})})


def cell(device: str, mbit: float, latency_s: float, raw_on_device: bool, lent: float | None,
         edge_cloud_s: float) -> NetworkState:
    net = cell_network(device, mbit, latency_s, raw_on_device).with_link("edge", "cloud", latency_s=edge_cloud_s)
    return net if lent is None else net.with_node("device", mem_bytes=lent)


def _single_ms(profile: Profile, net: NetworkState, node: str) -> float | None:
    try:
        return 1e3 * single_node(profile, net, node).predicted_latency_s
    except BaselineInfeasible:
        return None


def map_cell(target: Profile, draft: Profile, device: str, mbit: float, latency_s: float, raw_on_device: bool,
             lent: float | None, edge_cloud_s: float) -> dict[str, Any]:
    """One cell's strategies, predicted, and the winner among the target's plans."""
    net = cell(device, mbit, latency_s, raw_on_device, lent, edge_cloud_s)
    split = solve(target, net, PlanOptions())
    search = search_cooperative(target, draft, net)
    coop = search.best
    coop_ms = None if coop is None else 1e3 * coop.evaluation.latency_s
    split_ms = 1e3 * split.predicted_latency_s if split.status in ("optimal", "heuristic") else None
    target_only = {n: _single_ms(target, net, n) for n in ("device", "edge", "cloud")}
    rivals = [v for v in (split_ms, *target_only.values()) if v is not None]
    best_rival = min(rivals) if rivals else None
    wins = coop_ms is not None and (best_rival is None or coop_ms < best_rival)
    return {"device": device, "access_mbit": mbit, "access_latency_ms": 1e3 * latency_s,
            "raw_input_on_device": raw_on_device, "device_lends_bytes": lent,
            "edge_cloud_latency_ms": 1e3 * edge_cloud_s,
            "draft_only_ms": _single_ms(draft, net, "device"),
            "target_device_ms": target_only["device"], "target_edge_ms": target_only["edge"],
            "target_cloud_ms": target_only["cloud"],
            "split_ms": split_ms, "split_plan": describe_assignment(split.assignment) if split_ms else None,
            "coop_ms": coop_ms, "coop_k": None if coop is None else coop.k,
            "coop_verifier": None if coop is None else coop.evaluation.verifier,
            "coop_draft_on": None if coop is None else sorted(set(coop.draft_assignment)),
            "winner": "cooperative" if wins else ("split" if best_rival is not None else "none"),
            "coop_vs_best_other": None if coop_ms is None or best_rival is None else best_rival / coop_ms}


def study(target: Profile, draft: Profile, devices: Sequence[str]) -> list[dict[str, Any]]:
    return [map_cell(target, draft, dev, mbit, lat, raw, lent, ec)
            for ec, lent, raw, dev, lat, mbit in itertools.product(EDGE_CLOUD_S, LENT_BYTES, (False, True), devices,
                                                                  ACCESS_LATENCY_S, ACCESS_MBIT)]


def parse_cell(text: str) -> tuple[str, float, float, float | None, float]:
    """"phone-a78,31.6,2,16,25" -> (device, Mbit/s, access latency s, lent bytes or None, edge-cloud s)."""
    parts = text.split(",")
    if len(parts) != 5:
        raise SystemExit(f"--measure {text!r}: expected DEVICE,MBIT,LATENCY_MS,LENT_MB,EDGE_CLOUD_MS "
                         "(LENT_MB 0: the datasheet memory)")
    dev, mbit, lat, lent, ec = parts
    try:
        return dev, float(mbit), float(lat) / 1e3, (float(lent) * 1e6 or None), float(ec) / 1e3
    except ValueError:
        raise SystemExit(f"--measure {text!r}: MBIT, LATENCY_MS, LENT_MB and EDGE_CLOUD_MS must be numbers") from None


def measure_cell(target: Profile, draft: Profile, spec: tuple[str, float, float, float | None, float],
                 images: int) -> dict[str, Any]:
    """Every strategy of one cell run on the emulated runtime (bench.cooperative's strategies and runner)."""
    import tempfile

    from bench.cooperative import row_record, run_row, strategies
    from orchestrator.demo import local_dilation, unsplit_captions, write_test_images

    device, mbit, lat, lent, ec = spec
    net = cell(device, mbit, lat, False, lent, ec)
    rows, _ = strategies(target, draft, net, device="device")
    dilation = max(local_dilation(target, net), local_dilation(draft, net))
    adapters = {TARGET: load_adapter(TARGET), DRAFT: load_adapter(DRAFT)}
    with tempfile.TemporaryDirectory() as tmp:
        imgs = write_test_images(Path(tmp), images)
        truth = {im.path.name: im.truth for im in imgs}
        own = unsplit_captions(adapters[TARGET], [im.path for im in imgs], MAX_NEW_TOKENS)
        reference = dict(zip([im.path.name for im in imgs], own, strict=True))
        out = []
        for row in rows:
            run_row(row, net, target, draft, imgs, dilation, adapters, names=(TARGET, DRAFT))
            out.append(row_record(row, truth, reference))
            print(f"  {row.strategy}: predicted {_s_as_ms(out[-1]['plan_predicted_s'])} ms, measured "
                  f"{_s_as_ms(out[-1]['measured_s'])} ms", file=sys.stderr, flush=True)
    return {"device": device, "access_mbit": mbit, "access_latency_ms": 1e3 * lat, "device_lends_bytes": lent,
            "edge_cloud_latency_ms": 1e3 * ec, "dilation": dilation, "images": images, "rows": out}


def measured_report(cells: Sequence[dict[str, Any]]) -> str:
    from bench.cooperative import strategy_table

    lines: list[str] = []
    for c in cells:
        mem = "datasheet memory" if c["device_lends_bytes"] is None else f"lends {c['device_lends_bytes'] / 1e6:.0f} MB"
        lines += [f"## Measured (EMULATED): {c['device']} ({mem}), {c['access_mbit']:g} Mbit/s, "
                  f"{c['access_latency_ms']:.0f} ms; cloud {c['edge_cloud_latency_ms']:.0f} ms beyond the edge", "",
                  f"{c['images']} held-out test images per strategy after one warm-up; dilation K = "
                  f"{c['dilation']:.3g}; measured = wall time / K (median).", "", *strategy_table(c["rows"]), ""]
    return "\n".join(lines) + ("\n" if lines else "")


def _s_as_ms(v: float | None) -> str:
    return _ms(None if v is None else 1e3 * v)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def report(rows: Sequence[dict[str, Any]]) -> str:
    wins = [r for r in rows if r["winner"] == "cooperative"]
    lines = ["# The captioner family across the network map (PREDICTED)", "",
             "`python -m bench.cooperative_map`: every cell of bench.split_map's map for the PNG-input family, "
             "with the device's memory (its datasheet figure, or 16 MB: the draft fits, the target does not) "
             "and the edge-cloud latency (5 or 25 ms) as two more axes. Latencies in ms. 'x others' is the "
             "best other plan of the target (split or target-only) over the best cooperative plan: above 1, "
             "cooperative wins.", "",
             f"**Cooperative wins in {len(wins)} of {len(rows)} cells.**", ""]
    groups = itertools.groupby(rows, key=lambda r: (r["edge_cloud_latency_ms"], r["device_lends_bytes"],
                                                    r["raw_input_on_device"]))
    for (ec, lent, raw), grp in groups:
        g = list(grp)
        mem = "datasheet memory" if lent is None else f"device lends {lent / 1e6:.0f} MB"
        lines += [f"## cloud {ec:.0f} ms beyond the edge; {mem}; raw input {'kept on the device' if raw else 'free'}"
                  f" ({sum(r['winner'] == 'cooperative' for r in g)} of {len(g)} cells cooperative)", "",
                  "| device | access | draft-only | target device | target edge | target cloud | best split | "
                  "best cooperative | x others | winner |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in g:
            coop = "-" if r["coop_ms"] is None else (f"{r['coop_ms']:.1f} (k={r['coop_k']}, "
                                                     f"{r['coop_verifier']})")
            ratio = "-" if r["coop_vs_best_other"] is None else f"{r['coop_vs_best_other']:.2f}"
            win = f"**{r['winner']}**" if r["winner"] == "cooperative" else r["winner"]
            lines.append(f"| {r['device']} | {r['access_mbit']:g} Mbit/s, {r['access_latency_ms']:.0f} ms | "
                         f"{_ms(r['draft_only_ms'])} | {_ms(r['target_device_ms'])} | {_ms(r['target_edge_ms'])} | "
                         f"{_ms(r['target_cloud_ms'])} | {_ms(r['split_ms'])} | {coop} | {ratio} | {win} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cooperative_map", description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", default=list(DEVICES))
    ap.add_argument("--measure", action="append", default=[], metavar="DEVICE,MBIT,LATENCY_MS,LENT_MB,EDGE_CLOUD_MS",
                    help="also run this cell on the emulated runtime (LENT_MB 0: the datasheet memory)")
    ap.add_argument("--images", type=int, default=8, help="test images per measured strategy")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args(argv)
    specs = [parse_cell(m) for m in a.measure]
    import torch

    torch.set_num_threads(1)               # the workers run one thread each
    target, draft = family_profiles()
    rows = study(target, draft, a.devices)
    measured = [measure_cell(target, draft, spec, a.images) for spec in specs]
    path = write_results(a.out, "cooperative_map", {"cells": rows, "measured": measured},
                         report(rows) + measured_report(measured), indent=1)
    wins = sum(r["winner"] == "cooperative" for r in rows)
    print(f"cooperative wins in {wins} of {len(rows)} cells; wrote {path} and {path.with_suffix('.md')}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
