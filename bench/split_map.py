"""Where splitting pays, as the planner predicts it: a map over low-end devices and their access link.

    python -m bench.split_map [--workloads tiny-png vit-gpt2-jpeg vit-gpt2-camera smollm2-text]
                              [--devices pi-zero-2w phone-sd695 phone-a78] [--mbit 1 5.62 31.6 178 1000]
                              [--out bench/results]

Four workloads, each with its request input as it is captured (the first unit decodes or tokenizes
it and is placed like any other unit):
- tiny-png: the project's trained tiny captioner, the input a PNG file (its bytes, not float32 pixels);
- vit-gpt2-jpeg: the ViT-B/16 + GPT-2 small captioner built from its config (random weights), a JPEG
  at the encoder's 224 px;
- vit-gpt2-camera: the same captioner, the input a 12 MP JPEG as a phone camera writes it
  (profiler.images.camera_photo_bytes: a real photograph upsampled, 1.1 MB, smaller than a camera's);
- smollm2-text: SmolLM2-135M built from its config (bench/models/smollm2-135m-config, random weights,
  no tokenizer files: one token per UTF-8 byte), a text prompt.

Each cell is a network of three nodes: the device (one of three low-end hardware classes), a
jetson-orin-nano edge box and an h200 cloud GPU. The device reaches the edge over its access link
(bandwidth 1..1000 Mbit/s in log steps, one-way latency 2 or 20 ms); the edge reaches the cloud over
fibre (EDGE_CLOUD_MBIT, EDGE_CLOUD_LATENCY_S); there is no direct device-cloud link, so the cloud is
the edge plus one hop. Each cell is solved twice: with no constraint, and with the raw input kept on
the device (`raw_input_stays_on_source`: only features may leave it, so edge-only and cloud-only are
ruled out). Per cell: the planner's best plan, device-only, edge-only and cloud-only predicted
latencies, speedups, and whether the best plan is a true split (units on two or more nodes).

The profiles are measured on this machine once (cached like the demo's, orchestrator.demo.cached_profile)
with roofline estimates for the five described classes; nothing is downloaded. Everything here is
PREDICTED by the cost model; bench.map_measure runs a few cells on the emulated runtime.

Writes OUT/split_map.json and OUT/split_map.md.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results_io import write_results
from orchestrator.demo import cached_profile
from orchestrator.network import NetworkState, parse_network
from orchestrator.strategies import describe_assignment, strategy_plans
from profiler.errors import InputError
from profiler.models import load_adapter
from profiler.profile import Profile

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_CONFIG = ROOT / "bench" / "models" / "smollm2-135m-config"


@dataclass(frozen=True)
class Workload:
    key: str            # the name used on the command line and in results
    model: str          # what profiler.models.load_adapter takes
    label: str


WORKLOADS: tuple[Workload, ...] = (
    Workload("tiny-png", "tiny-captioner+png", "tiny captioner (trained), PNG file"),
    Workload("vit-gpt2-jpeg", "vit-gpt2-captioner+jpeg", "ViT-B/16 + GPT-2 captioner (config, random-init), JPEG file"),
    Workload("vit-gpt2-camera", "vit-gpt2-captioner+camera",
             "ViT-B/16 + GPT-2 captioner (config, random-init), 12 MP camera JPEG"),
    Workload("smollm2-text", f"{SMOLLM2_CONFIG}+text", "SmolLM2-135M (config, random-init), text prompt"),
)
DEVICES: tuple[str, ...] = ("pi-zero-2w", "phone-sd695", "phone-a78")
EDGE_CLASS, CLOUD_CLASS = "jetson-orin-nano", "h200"
# node memory: the datasheet figures of profiler/devices/*.yaml
MEM_BYTES = {"pi-zero-2w": 5.12e8, "phone-sd695": 6.0e9, "phone-a78": 8.0e9, EDGE_CLASS: 8.0e9, CLOUD_CLASS: 1.41e11}
MBIT = 1e6
# 1..1000 Mbit/s in five log steps (10^0, 10^0.75, ..., 10^3), rounded to three figures
ACCESS_MBIT: tuple[float, ...] = tuple(float(f"{10 ** (0.75 * i):.3g}") for i in range(5))
ACCESS_LATENCY_S: tuple[float, ...] = (0.002, 0.020)
EDGE_CLOUD_MBIT = 1000.0
EDGE_CLOUD_LATENCY_S = 0.005
SINGLE_TIERS = ("device-only", "edge-only", "cloud-only")
SPLIT_GOAL = 1.2     # "beats the best single tier by at least 20%": best tier's L >= 1.2 x the optimum's


def cell_network(device: str, mbit: float, latency_s: float, raw_on_device: bool = False) -> NetworkState:
    """The three-node network of one cell (device, edge, cloud; cloud reached through the edge)."""
    if device not in MEM_BYTES or device in (EDGE_CLASS, CLOUD_CLASS):
        raise InputError(f"device class {device!r}: not a described device (known: {', '.join(DEVICES)})")
    if not (math.isfinite(mbit) and mbit > 0) or not (math.isfinite(latency_s) and latency_s >= 0):
        raise InputError(f"access link: bandwidth {mbit!r} Mbit/s and latency {latency_s!r} s must be finite, "
                         "bandwidth > 0")
    return parse_network({
        "format": "aiflow.network/v1", "source": "device",
        "nodes": [{"name": "device", "hardware": device, "mem_bytes": MEM_BYTES[device], "tier": "device"},
                  {"name": "edge", "hardware": EDGE_CLASS, "mem_bytes": MEM_BYTES[EDGE_CLASS], "tier": "edge"},
                  {"name": "cloud", "hardware": CLOUD_CLASS, "mem_bytes": MEM_BYTES[CLOUD_CLASS], "tier": "cloud"}],
        "links": [{"a": "device", "b": "edge", "bandwidth_bps": mbit * MBIT, "latency_s": latency_s},
                  {"a": "edge", "b": "cloud", "bandwidth_bps": EDGE_CLOUD_MBIT * MBIT,
                   "latency_s": EDGE_CLOUD_LATENCY_S}],
        "constraints": {"raw_input_stays_on_source": raw_on_device},
    }, "split-map cell")


def all_classes_network() -> NetworkState:
    """A network holding every class of the map, so one cached profile carries estimates for all."""
    classes = [*DEVICES, EDGE_CLASS, CLOUD_CLASS]
    return parse_network({"format": "aiflow.network/v1", "source": classes[0],
                          "nodes": [{"name": c, "hardware": c, "mem_bytes": MEM_BYTES[c]} for c in classes]},
                         "split-map classes")


def workload_profile(work: Workload) -> Profile:
    """This machine's measured profile of the workload plus estimates for every class (cached)."""
    profile, path, cached = cached_profile(load_adapter(work.model), all_classes_network())
    print(f"{work.key}: profile {'cached' if cached else 'measured'} {path.name}", flush=True)
    return profile


def _ms(plan: Any) -> float | None:
    return None if plan is None else 1e3 * plan.predicted_latency_s


def map_cell(profile: Profile, work: Workload, device: str, mbit: float, latency_s: float,
             raw_on_device: bool) -> dict[str, Any]:
    """One cell: the optimum and the three single tiers, predicted."""
    net = cell_network(device, mbit, latency_s, raw_on_device)
    plans = {s.name: s for s in strategy_plans(profile, net, names=(*SINGLE_TIERS, "optimal"))}
    best = plans["optimal"].plan
    if best is None:       # every placement breaks a constraint (memory, the raw input)
        raise InputError(f"{work.key} on {device}: no feasible plan ({plans['optimal'].why_not})")
    tiers = {n: _ms(plans[n].plan) for n in SINGLE_TIERS}
    feasible = {n: ms for n, ms in tiers.items() if ms is not None}
    best_ms = _ms(best)
    assert best_ms is not None
    tier, tier_ms = min(feasible.items(), key=lambda kv: kv[1]) if feasible else (None, None)
    nodes = sorted(set(best.assignment), key=net.node_names.index)
    return {"workload": work.key, "model": profile.model, "device": device, "access_mbit": mbit,
            "access_latency_ms": 1e3 * latency_s, "raw_input_on_device": raw_on_device,
            "best_plan": describe_assignment(best.assignment), "best_nodes": nodes, "true_split": len(nodes) >= 2,
            "status": best.status, "best_ms": best_ms,
            "device_only_ms": tiers["device-only"], "edge_only_ms": tiers["edge-only"],
            "cloud_only_ms": tiers["cloud-only"],
            "why_no_device_only": plans["device-only"].why_not,
            "best_tier": tier, "best_tier_ms": tier_ms,
            "speedup_vs_device": None if tiers["device-only"] is None else tiers["device-only"] / best_ms,
            "speedup_vs_best_tier": None if tier_ms is None else tier_ms / best_ms}


def map_workload(profile: Profile, work: Workload, devices: Sequence[str] = DEVICES,
                 mbits: Sequence[float] = ACCESS_MBIT) -> list[dict[str, Any]]:
    return [map_cell(profile, work, dev, mbit, lat, raw)
            for raw, dev, lat, mbit in itertools.product((False, True), devices, ACCESS_LATENCY_S, mbits)]


def compute_bound(profile: Profile, device: str) -> dict[str, float]:
    """What a split could gain from compute alone on (device, edge, cloud): the best single node's compute
    (among those whose memory holds the whole model) over the sum of every unit's fastest node's compute
    (network free, memory ignored). No split computes faster than that; where the raw input is also the
    smallest thing to send (as in every workload but the camera photo), the network cannot favour a split
    either, so a bound near 1 explains why no split beats the best single tier by 20% there."""
    classes = (device, EDGE_CLASS, CLOUD_CLASS)

    def t(u: int, c: str, phase: str, repeat: int) -> float:
        return repeat * profile.units[u].latency_s[c][phase]

    work = [(u, ph.name, ph.repeat) for ph in profile.active_phases for u in range(ph.first, ph.last + 1)]
    need = sum(u.mem_bytes for u in profile.units)
    tier = min(sum(t(u, c, p, r) for u, p, r in work) for c in classes if MEM_BYTES[c] >= need)
    ideal = sum(min(t(u, c, p, r) for c in classes) for u, p, r in work)
    return {"best_tier_compute_ms": 1e3 * tier, "per_unit_best_compute_ms": 1e3 * ideal, "bound": tier / ideal}


def why_lines(profile: Profile, work: Workload, devices: Sequence[str]) -> list[str]:
    """The numbers behind the map's answer for one workload: input size against the activations, and
    the compute-only split bound per device."""
    src = next(ph for ph in profile.phases if ph.input == "source")
    acts = [u.out_bytes[src.name] for u in profile.units[src.first:src.last + 1] if src.name in u.out_bytes]
    loops = [ph for ph in profile.active_phases if ph.input == "loop"]
    out = [f"- input {src.in_bytes:.0f} B; activations of the first phase {min(acts):.0f}-{max(acts):.0f} B"
           if acts else f"- input {src.in_bytes:.0f} B",
           f"- decode passes per request: {loops[0].repeat if loops else 0} (a decoder cut costs a round trip each)"]
    for dev in devices:
        b = compute_bound(profile, dev)
        out.append(f"- {dev}: best single node's compute {b['best_tier_compute_ms']:.1f} ms, each unit on its "
                   f"fastest node {b['per_unit_best_compute_ms']:.1f} ms: compute-only split bound "
                   f"{b['bound']:.3f}x")
    return out


def split_wins(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unconstrained cells where a true split beats the best single tier by >= 20%."""
    return [r for r in rows if not r["raw_input_on_device"] and r["true_split"]
            and r["speedup_vs_best_tier"] is not None and r["speedup_vs_best_tier"] >= SPLIT_GOAL]


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    free = [r for r in rows if not r["raw_input_on_device"]]
    kept = [r for r in rows if r["raw_input_on_device"]]
    splits = [r for r in free if r["true_split"]]
    best_split = max(splits, key=lambda r: r["speedup_vs_best_tier"], default=None)
    kept_15 = [r for r in kept if r["speedup_vs_device"] is not None and r["speedup_vs_device"] >= 1.5]
    return {"cells": len(rows), "unconstrained_cells": len(free),
            "unconstrained_true_splits": len(splits), "split_wins_20pct": len(split_wins(rows)),
            "largest_split_gain": None if best_split is None else {
                k: best_split[k] for k in ("workload", "device", "access_mbit", "access_latency_ms", "best_plan",
                                           "best_tier", "speedup_vs_best_tier")},
            "raw_on_device_cells": len(kept), "raw_on_device_true_splits": sum(r["true_split"] for r in kept),
            "raw_on_device_1p5x_vs_device": len(kept_15),
            "device_only_infeasible": sum(r["device_only_ms"] is None for r in free)}


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def md_escape(text: str) -> str:
    return text.replace("|", "\\|")


HEADER = ("| device | Mbit/s | latency ms | raw on device | best plan | best ms | device-only ms | edge-only ms | "
          "cloud-only ms | x device | x best tier | true split |")


def table_row(r: dict[str, Any]) -> str:
    return (f"| {r['device']} | {r['access_mbit']:g} | {r['access_latency_ms']:g} | "
            f"{'yes' if r['raw_input_on_device'] else 'no'} | {md_escape(r['best_plan'])} | {r['best_ms']:.1f} | "
            f"{_f(r['device_only_ms'])} | {_f(r['edge_only_ms'])} | {_f(r['cloud_only_ms'])} | "
            f"{_f(r['speedup_vs_device'], '{:.2f}')} | {_f(r['speedup_vs_best_tier'], '{:.2f}')} | "
            f"{'yes' if r['true_split'] else 'no'} |")


def markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    s = meta["summary"]
    out = ["# Where splitting pays: the split map (PREDICTED by the planner)", "",
           f"Command: `{meta['command']}`  ",
           f"Access link device-edge: the bandwidth and one-way latency of each row; edge-cloud "
           f"{EDGE_CLOUD_MBIT:g} Mbit/s, {1e3 * EDGE_CLOUD_LATENCY_S:g} ms; no direct device-cloud link. "
           "Edge jetson-orin-nano, cloud h200. n/a: the tier is ruled out (memory, or the raw input must stay "
           "on the device). x device / x best tier: that tier's predicted latency over the best plan's.", "",
           f"Unconstrained cells: {s['unconstrained_cells']}; best plan a true split in "
           f"{s['unconstrained_true_splits']}; a true split beating the best single tier by >= 20%: "
           f"**{s['split_wins_20pct']}**. Raw input kept on the device: {s['raw_on_device_cells']} cells, "
           f"{s['raw_on_device_1p5x_vs_device']} with the optimum >= 1.5x faster than device-only.", ""]
    if s["largest_split_gain"]:
        g = s["largest_split_gain"]
        out += [f"Largest unconstrained split gain: {g['workload']} on {g['device']}, {g['access_mbit']:g} Mbit/s, "
                f"{g['access_latency_ms']:g} ms: {md_escape(g['best_plan'])}, {g['speedup_vs_best_tier']:.3f}x "
                f"over {g['best_tier']}.", ""]
    for work in dict.fromkeys(r["workload"] for r in rows):
        label = next((w.label for w in WORKLOADS if w.key == work), work)
        out += [f"## {work}: {label}", "", *meta.get("why", {}).get(work, []), "", HEADER,
                "|" + "---|" * 4 + "---|" + "---:|" * 6 + "---|"]
        out += [table_row(r) for r in rows if r["workload"] == work]
        out.append("")
    return "\n".join(out) + "\n"


def _pick(names: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    bad = [n for n in names if n not in known]
    if bad:
        raise InputError(f"{what}: unknown {', '.join(bad)} (known: {', '.join(known)})")
    return list(names)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", default=[w.key for w in WORKLOADS])
    ap.add_argument("--devices", nargs="+", default=list(DEVICES))
    ap.add_argument("--mbit", nargs="+", type=float, default=list(ACCESS_MBIT))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        works = [next(w for w in WORKLOADS if w.key == k)
                 for k in _pick(args.workloads, [w.key for w in WORKLOADS], "--workloads")]
        devices = _pick(args.devices, DEVICES, "--devices")
        rows: list[dict[str, Any]] = []
        why: dict[str, list[str]] = {}
        for work in works:
            profile = workload_profile(work)
            rows += map_workload(profile, work, devices, args.mbit)
            why[work.key] = why_lines(profile, work, devices)
    except InputError as exc:
        print(f"split_map: error: {exc}", file=sys.stderr)
        return 2
    command = "python -m bench.split_map " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {"command": command.strip(), "summary": summary(rows), "why": why, "edge_cloud_mbit": EDGE_CLOUD_MBIT,
            "edge_cloud_latency_ms": 1e3 * EDGE_CLOUD_LATENCY_S, "wall_s": round(time.perf_counter() - t0, 1)}
    text = markdown(rows, meta)
    write_results(args.out, "split_map", {"meta": meta, "rows": rows}, text)
    print(text)
    print(f"wrote {args.out / 'split_map'}.json, .md in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
