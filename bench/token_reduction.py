"""Task-oriented token reduction of the captioner's encoder output: bytes against caption quality per
method and kept-token count, and a thin-phone network where the planner reduces, predicted vs
measured (EMULATED runtime).

    python -m bench.token_reduction [--scenes 500] [--images 6] [--dilation K] [--quick] [--no-family]
                                    [--out bench/results]

1. Quality: tiny-captioner (and captioner-draft / captioner-target, on fewer options) captions the
   first N fixed held-out test scenes with its encoder output merged to k tokens (profiler.token_merge:
   dpc, tome); scene accuracy, points lost against unreduced, captions equal to unreduced, bytes.
2. Thin phone (examples/thin-phone.network.yaml): this machine's measured profile of tiny-captioner
   (cached like the demo's: phone-a78 estimated, h200 measured) with its `reductions` section; the
   planner's best plan without reduction and with `--max-quality-loss 1`; each run through local
   worker processes under emulation (links shaped in the transport, compute stretched to the profile,
   time dilation K), so the measured latencies are EMULATED, not a real phone or network.
   Per request: measured / K and predicted L (its own decoder passes); captions checked against the
   unsplit model with the same reduction (the exactness oracle).

Writes OUT/token_reduction.json and OUT/token_reduction.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.results_io import write_results
from orchestrator.costmodel import latency_for_steps
from orchestrator.demo import cached_profile, input_key, local_dilation, write_test_images
from orchestrator.network import load_network
from orchestrator.reductions import profile_for_plan, solve_with_reductions
from profiler.captioner.parse import try_parse
from profiler.captioner.reduction_eval import DEFAULT_REDUCTIONS, evaluate_reductions
from profiler.generate import greedy_generate
from profiler.hardware import hardware_class
from profiler.models import load_adapter
from profiler.reduction_profile import build_reductions, with_reductions
from profiler.token_merge import Reduction

ROOT = Path(__file__).resolve().parent.parent
THIN = ROOT / "examples" / "thin-phone.network.yaml"
MODEL = "tiny-captioner"
FAMILY = ("captioner-draft", "captioner-target")
FAMILY_REDUCTIONS = ("dpc-32", "dpc-24", "tome-32", "tome-24")
MAX_NEW_TOKENS = 32


def oracle_captions(adapter: Any, images: list[Path], reduction: Reduction | None) -> list[str]:
    out = []
    eos = adapter.eos_token_id
    for p in images:
        row = greedy_generate(adapter, adapter.prepare_image(str(p)), new_tokens=MAX_NEW_TOKENS,
                              reduction=reduction).tokens[0].tolist()
        out.append(adapter.decode_tokens(row[: row.index(eos)] if eos in row else row))
    return out


def run_plan(plan: Any, prof: Any, net: Any, images: list[Path], dilation: float, adapter: Any) -> list[dict]:
    from runtime.session import run_on_network

    planned = profile_for_plan(prof, plan)          # its reduce cost and bytes: what L and the emulation count
    inputs = [str(images[0])] + [str(p) for p in images]                  # one untimed warm-up
    results = run_on_network(MODEL, net, plan, inputs, profile=planned, dilation=dilation, adapter=adapter,
                             threads=1, max_new_tokens=MAX_NEW_TOKENS)
    rows = []
    for r in results[1:]:
        res = r.result
        rows.append({"image": input_key(r.input), "caption": r.text or "", "measured_s": res.scaled_s,
                     "predicted_s": latency_for_steps(planned, net, plan.assignment, res.steps), "passes": res.steps,
                     "bytes": sum(res.breakdown(scale=True)["transfer_bytes"].values()),
                     "overrun_s": res.breakdown(scale=True)["overrun_s"]})
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}%"


def report(data: dict) -> str:
    m = data["meta"]
    lines = [f"# Token reduction ({m['command']})", "",
             f"Quality on the first {m['scenes']} fixed held-out test scenes (seed 20240605). Bytes: the encoder "
             "output as it crosses a link (float32), k tokens + one log-size channel when reduced.", ""]
    for model, q in data["quality"].items():
        lines += [f"## {model}", "", "| option | bytes | ratio | scene accuracy | lost (points) | same caption as "
                  "unreduced | BLEU-4 |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in q["rows"]:
            lines.append(f"| {r['label']} | {r['bytes']:.0f} | {r['ratio']:.3f} | {r['scene_accuracy']:.1f}% | "
                         f"{r['quality_loss']:.1f} | {r['agreement']:.1f}% | {r['bleu4']:.3f} |")
        lines.append("")
    t = data["thin_phone"]
    lines += ["## Thin phone (EMULATED)", "",
              f"Network `{t['network']}`; profile measured on {t['local_class']} (phone-a78 estimated, h200 "
              f"measured), dilation K = {t['dilation']:.1f}; {t['images']} held-out test images, one untimed "
              "warm-up. Measured = wall time / K of local worker processes with emulated links and compute; "
              "overrun = real compute beyond its emulated target (this CPU playing a faster node), / K.", "",
              "| plan | placement | reduction | plan L | predicted (median) | measured (median) | measured/predicted |"
              " overrun (median) | bytes sent | scene accuracy | captions = oracle |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in t["plans"]:
        ratio = p["measured_s"] / p["predicted_s"] if p["measured_s"] and p["predicted_s"] else None
        lines.append(f"| {p['name']} | {p['placement']} | {p['reduction']} | {1e3 * p['plan_s']:.1f} ms | "
                     f"{1e3 * p['predicted_s']:.1f} ms | "
                     + (f"{1e3 * p['measured_s']:.1f} ms | {ratio:.2f} | " if ratio else "- | - | ")
                     + f"{1e3 * p['overrun_s']:.1f} ms | "
                     + f"{p['bytes']:.0f} | {_pct(p['scene_accuracy'])} | {p['oracle_equal']} |")
    lines += ["", f"Load average before/after: {m['load_before']} / {m['load_after']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.token_reduction")
    ap.add_argument("--scenes", type=int, default=500)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="100 scenes, tiny-captioner only, 2 images")
    ap.add_argument("--no-family", action="store_true", help="skip captioner-draft and captioner-target")
    ap.add_argument("--dilation", type=float, default=None,
                    help="time dilation K (default: the demo's, from this machine's profile)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="token_reduction")
    a = ap.parse_args(argv)
    if a.quick:
        a.scenes, a.images, a.no_family = 100, 2, True
    torch.set_num_threads(1)
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    net = load_network(THIN)
    adapter = load_adapter(MODEL)
    t0 = time.perf_counter()
    prof, _, _ = cached_profile(adapter, net)
    local = hardware_class(threads=1)
    section = build_reductions(prof, MODEL, [Reduction.parse(x) for x in DEFAULT_REDUCTIONS], scenes=a.scenes,
                               local_hw=local)
    prof_r = with_reductions(prof, section)
    quality: dict[str, Any] = {MODEL: {"base_accuracy": section.base_accuracy, "rows": [
        {"label": "none", "bytes": section.bytes, "ratio": 1.0, "scene_accuracy": section.base_accuracy,
         "quality_loss": 0.0, "agreement": 100.0, "bleu4": section.base_bleu4}]}}
    for o in section.options:
        quality[MODEL]["rows"].append({"label": o.label, "bytes": o.bytes, "ratio": o.bytes / section.bytes,
                                       "scene_accuracy": o.scene_accuracy, "quality_loss": o.quality_loss,
                                       "agreement": o.agreement, "bleu4": o.bleu4,
                                       "reduce_s_local": o.reduce_s.get(local)})
    print(f"quality of {MODEL}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if not a.no_family:
        for member in FAMILY:
            try:
                rows = evaluate_reductions(member, [Reduction.parse(x) for x in FAMILY_REDUCTIONS], a.scenes)
            except Exception as exc:  # noqa: BLE001 - a member that is not shipped is reported, not fatal
                quality[member] = {"error": f"{type(exc).__name__}: {exc}", "rows": []}
                continue
            tokens = rows[0].keep
            enc = load_adapter(member)
            dim = int(enc.run(0, enc.n_vision - 1, torch.zeros(1, 3, 64, 64), phase="encode", position=0,  # type: ignore[attr-defined]
                              state=enc.new_state()).shape[-1])
            full = tokens * dim * 4
            quality[member] = {"base_accuracy": rows[0].scene_accuracy, "rows": [
                {"label": "none" if r.method == "none" else f"{r.method}-{r.keep}",
                 "bytes": full if r.method == "none" else r.keep * (dim + 1) * 4,
                 "ratio": 1.0 if r.method == "none" else r.keep * (dim + 1) * 4 / full,
                 "scene_accuracy": r.scene_accuracy, "quality_loss": r.quality_loss, "agreement": r.agreement,
                 "bleu4": r.bleu4} for r in rows]}
            print(f"quality of {member}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    plain, _ = solve_with_reductions(prof_r, net, reduce=False)
    reduced, cands = solve_with_reductions(prof_r, net, max_quality_loss=1.0)
    dilation = a.dilation if a.dilation is not None else local_dilation(prof, net)
    if not dilation >= 1:
        raise SystemExit(f"--dilation: must be >= 1, got {dilation}")
    plans = []
    with tempfile.TemporaryDirectory() as tmp:
        images = write_test_images(Path(tmp), a.images)
        paths = [im.path for im in images]
        truth = {im.path.name: im.truth for im in images}
        for name, plan in (("no reduction", plain), ("with reduction (cap 1 point)", reduced)):
            red = [Reduction(r["method"], int(r["keep"])) for r in plan.reductions or []]
            oracle = dict(zip([p.name for p in paths], oracle_captions(adapter, paths, red[0] if red else None),
                              strict=True))
            t1 = time.perf_counter()
            reqs = run_plan(plan, prof_r, net, paths, dilation, adapter)
            acc = sum((s := try_parse(r["caption"])) is not None and s.key() == truth[r["image"]] for r in reqs)
            plans.append({"name": name, "placement": " ".join(plan.assignment),
                          "reduction": red[0].label if red else "none", "plan_s": plan.predicted_latency_s,
                          "predicted_s": statistics.median(r["predicted_s"] for r in reqs),
                          "measured_s": statistics.median(r["measured_s"] for r in reqs),
                          "bytes": statistics.median(r["bytes"] for r in reqs),
                          "overrun_s": statistics.median(r["overrun_s"] for r in reqs),
                          "scene_accuracy": 100 * acc / len(reqs),
                          "oracle_equal": all(r["caption"] == oracle[r["image"]] for r in reqs),
                          "plan": plan.model_dump(mode="json", exclude_none=True), "requests": reqs})
            print(f"{name}: predicted {1e3 * plans[-1]['predicted_s']:.1f} ms, measured "
                  f"{1e3 * plans[-1]['measured_s']:.1f} ms ({time.perf_counter() - t1:.0f} s)", file=sys.stderr,
                  flush=True)
    meta = {"command": "python -m bench.token_reduction " + " ".join(argv if argv is not None else sys.argv[1:]),
            "scenes": a.scenes, "load_before": load_before,
            "load_after": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
            "python": platform.python_version(), "torch": torch.__version__}
    data = {"meta": meta, "quality": quality,
            "thin_phone": {"network": str(THIN.relative_to(ROOT)), "local_class": local, "dilation": dilation,
                           "images": a.images, "candidates": [
                               {"option": c.label, "excluded": c.excluded,
                                "predicted_s": c.plan.predicted_latency_s if c.plan else None} for c in cands],
                           "plans": plans}}
    path = write_results(a.out, a.name, data, report(data))
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
