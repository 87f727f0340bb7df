"""Writes examples/smollm2-135m.synthetic.profile.json: a SYNTHETIC profile, not a measurement.

    python -m examples.synthetic_profiles

The shape is SmolLM2-135M's (30 Llama layers, hidden 576, 9 heads of 64 with 3 key/value heads,
MLP 1536, vocabulary 49152, tied embedding, fp32), cut into 32 units: embedding, 30 blocks, final
norm + head. FLOPs and bytes follow from that shape (a multiply-add counted as two); latencies are a
roofline estimate on the datasheet numbers of profiler/devices/*.yaml:

    t = max(flops / (peak * efficiency), bytes_moved / memory_bandwidth) + ops * op_overhead

with bytes_moved = the unit's weights (read once per pass) plus its KV cache. Use `aiflow profile
smollm2-135m` for measured numbers; this file exists so the planner has a 30-layer LLM to plan
without the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

HIDDEN, LAYERS, MLP, VOCAB, HEADS, KV_HEADS = 576, 30, 1536, 49152, 9, 3
HEAD_DIM = HIDDEN // HEADS
PROMPT, NEW = 32, 32                      # tokens in the prompt, tokens generated
MAX_LEN = PROMPT + NEW
FP32 = 4
OP_OVERHEAD_S = 6e-6                      # per operation on this kind of host (scaled per device below)
OPS = {"embed": 2, "block": 14, "head": 3}
DEVICES = Path(__file__).resolve().parent.parent / "profiler" / "devices"


def unit_costs(kind: str, tokens: int, context: int) -> tuple[int, float, float]:
    """(weights in bytes, FLOPs, bytes moved) of one pass over `tokens` tokens with `context` cached."""
    if kind == "embed":
        params = VOCAB * HIDDEN
        return params * FP32, 0.0, tokens * HIDDEN * FP32 * 2
    if kind == "head":
        params = VOCAB * HIDDEN + HIDDEN   # tied with the embedding, stored once per node that holds it
        return params * FP32, 2.0 * tokens * HIDDEN * VOCAB, params * FP32
    attn = HIDDEN * HIDDEN * 2 + HIDDEN * KV_HEADS * HEAD_DIM * 2
    params = attn + 3 * HIDDEN * MLP + 2 * HIDDEN
    flops = 2.0 * tokens * (attn + 3 * HIDDEN * MLP) + 4.0 * tokens * context * HIDDEN
    kv = 2 * context * KV_HEADS * HEAD_DIM * FP32
    return params * FP32, flops, params * FP32 + kv


def latency(device: dict, kind: str, tokens: int, context: int) -> float:
    _, flops, moved = unit_costs(kind, tokens, context)
    compute = flops / (float(device["peak_flops"]) * float(device["efficiency"]))
    memory = 8.0 * moved / float(device["mem_bandwidth_bps"])
    return max(compute, memory) + OPS[kind] * OP_OVERHEAD_S * float(device["op_overhead_scale"])


def build() -> dict:
    devices = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(DEVICES.glob("*.yaml"))}
    kinds = ["embed"] + ["block"] * LAYERS + ["head"]
    units = []
    for i, kind in enumerate(kinds):
        weights, flops_pre, _ = unit_costs(kind, PROMPT, PROMPT)
        _, flops_dec, _ = unit_costs(kind, 1, MAX_LEN)
        kv = 2 * MAX_LEN * KV_HEADS * HEAD_DIM * FP32 if kind == "block" else 0
        name = {"embed": "model.embed", "head": "model.norm+lm_head"}.get(kind, f"model.layers.{i - 1}")
        out = {"prefill": float(PROMPT * HIDDEN * FP32), "decode": float(HIDDEN * FP32)}
        if kind == "head":
            out = {"prefill": 4.0, "decode": 4.0}   # the sampled token id
        units.append({
            "name": name, "param_bytes": weights, "mem_bytes": weights + kv,
            "flops": {"prefill": flops_pre, "decode": flops_dec},
            "out_bytes": out,
            "latency_s": {hw: {"prefill": latency(d, kind, PROMPT, PROMPT),
                               "decode": latency(d, kind, 1, MAX_LEN)} for hw, d in devices.items()},
            "source": {hw: "estimated" for hw in devices},
        })
    n = len(units)
    return {
        "format": "aiflow.profile/v1", "model": "smollm2-135m-synthetic", "weights": "synthetic",
        "input": {"prompt_tokens": PROMPT, "new_tokens": NEW, "note": "synthetic roofline profile, not measured"},
        "units": units,
        "phases": [
            {"name": "prefill", "first": 0, "last": n - 1, "repeat": 1, "input": "source", "in_bytes": 8.0 * PROMPT},
            {"name": "decode", "first": 0, "last": n - 1, "repeat": NEW - 1, "input": "loop", "in_bytes": 8.0},
        ],
        "edges": [],
        "result_bytes": 8.0 * NEW,
    }


def main() -> None:
    out = Path(__file__).resolve().parent / "smollm2-135m.synthetic.profile.json"
    out.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
