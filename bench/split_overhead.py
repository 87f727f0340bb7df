"""What splitting a language model over two local workers costs per generated token, side by side.

    python -m bench.split_overhead [--model smollm2-135m] [--requests 6] [--tokens 16]

Both configurations run natively (no emulation, no dilation) on worker processes of this machine:
"one worker" holds every unit; "split" holds the first half of the units on worker a and the second
half on worker b (two hops per token: the hidden state a -> b, the token id b -> a). Each is run in
three thread settings, because two torch processes on a small machine compete for its cores:

- default: each worker uses torch's default thread count (all cores) and OpenMP's default wait
  policy, whose idle threads spin for a while after each parallel region;
- passive: as default, with OMP_WAIT_POLICY=PASSIVE, so an idle worker's threads sleep at once and
  leave the cores to the worker that computes (what aiflow's local workers now use);
- one thread: each worker runs a single torch thread.

Per-token time is the request's wall time over its decoder passes (median over requests, after one
warm-up request). Writes bench/results/split_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.results_io import write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROMPT = "The quick brown fox jumps over the lazy dog because"
# OMP_WAIT_POLICY="" is OpenMP's default policy (an empty value is ignored), and it keeps aiflow's local
# workers from setting PASSIVE themselves (they only set it when the variable is absent).
SETTINGS = {"default": ("", None), "passive": ("PASSIVE", None), "one thread": ("", 1)}


def local_network(hardware: str) -> Any:
    from orchestrator.network import parse_network
    return parse_network({"format": "aiflow.network/v1", "source": "a", "nodes": [
        {"name": "a", "hardware": hardware, "mem_bytes": 1e10},
        {"name": "b", "hardware": hardware, "mem_bytes": 1e10}],
        "links": [{"a": "a", "b": "b", "bandwidth_bps": 1e10, "latency_s": 0.0}]})


def per_token_ms(model: str, adapter: Any, assignment: list[str], requests: int, tokens: int,
                 threads: int | None, hardware: str) -> list[float]:
    from runtime.session import run_on_network
    plan = SimpleNamespace(assignment=assignment, compression=None)
    results = run_on_network(model, local_network(hardware), plan, [PROMPT] * (requests + 1), max_new_tokens=tokens,
                             emulate=False, threads=threads, adapter=adapter)
    return [1e3 * r.result.measured_s / r.result.steps for r in results[1:]]


def run(model: str, requests: int, tokens: int) -> dict[str, Any]:
    from profiler.hardware import fingerprint, hardware_class
    from profiler.models import load_adapter

    adapter = load_adapter(model)
    n = len(adapter.units())
    layouts = {"one worker": ["a"] * n, "split": ["a"] * (n // 2) + ["b"] * (n - n // 2)}
    rows = []
    saved = os.environ.get("OMP_WAIT_POLICY")
    try:
        for setting, (policy, threads) in SETTINGS.items():
            os.environ["OMP_WAIT_POLICY"] = policy
            row: dict[str, Any] = {"setting": setting}
            for layout, asg in layouts.items():
                times = per_token_ms(model, adapter, asg, requests, tokens, threads, hardware_class())
                row[layout] = statistics.median(times)
                print(f"  {setting:<10} {layout:<10} {row[layout]:7.2f} ms/token", file=sys.stderr, flush=True)
            row["split_over_one"] = row["split"] / row["one worker"]
            rows.append(row)
    finally:
        if saved is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = saved
    return {"model": model, "units": n, "requests": requests, "tokens": tokens, "rows": rows,
            "machine": {**fingerprint(), "python": platform.python_version()}}


def markdown(res: dict[str, Any]) -> str:
    lines = [f"### Split over two local workers vs one ({res['model']}, {res['tokens']} new tokens, "
             f"median of {res['requests']} requests)", "",
             "| threads | one worker | split in two | split / one |", "|---|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['setting']} | {r['one worker']:.2f} ms/token | {r['split']:.2f} ms/token | "
                     f"{r['split_over_one']:.3f} |")
    m = res["machine"]
    lines += ["", f"Machine: {m['cpu_model']}, {m['cores']} cores, torch {m['torch_version']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=16)
    a = ap.parse_args()
    res = run(a.model, a.requests, a.tokens)
    md = markdown(res)
    write_results(RESULTS, "split_overhead", res, md, indent=2)
    print(md)


if __name__ == "__main__":
    main()
