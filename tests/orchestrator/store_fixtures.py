"""Small hand-built documents for the history store's tests (SQLite and PostgreSQL)."""

from __future__ import annotations

from orchestrator.network import NetworkState
from orchestrator.plan import Plan
from profiler.profile import Profile


def small_profile(model: str = "tiny-test", scale: float = 1.0) -> Profile:
    """An encoder-decoder shaped profile: 4 units, 3 phases, a shared edge, two hardware classes."""
    units = []
    for i, name in enumerate(["enc.embed", "enc.block0", "dec.block0", "dec.head"]):
        phases = ["encode"] if i < 2 else ["prefill", "decode"]
        units.append({
            "name": name,
            "param_bytes": 1000 * (i + 1),
            "mem_bytes": 1500 * (i + 1) + 7,
            "flops": {p: 1.25e6 * (i + 1) * scale for p in phases},
            "out_bytes": {p: 4096.0 + i for p in phases},
            "latency_s": {
                "cpu-2c": {p: 0.001 * (i + 1) * scale for p in phases},
                "h200": {p: 1.0e-5 * (i + 1) * scale for p in phases},
            },
            "source": {"cpu-2c": "measured", "h200": "estimated"},
            "spread": {"cpu-2c": {p: 0.05 for p in phases}},
        })
    doc = {
        "format": "aiflow.profile/v1",
        "model": model,
        "units": units,
        "phases": [
            {"name": "encode", "first": 0, "last": 1, "repeat": 1, "input": "source", "in_bytes": 49152},
            {"name": "prefill", "first": 2, "last": 3, "repeat": 1, "input": "none", "in_bytes": 0},
            {"name": "decode", "first": 2, "last": 3, "repeat": 15, "input": "loop", "in_bytes": 8},
        ],
        "edges": [{"from": 1, "to": [2, 3], "bytes": 33280}],
        "result_bytes": 128,
        "hardware": {"cpu-2c": {"cpu": "Test CPU @ 2GHz", "cores": 2, "torch_threads": 2}},
        "input": {"image_size": 32, "prompt_tokens": 4, "new_tokens": 15},
        "weights": "random-init",
        "family": "encoder-decoder",  # an extra field: a round trip must keep it
    }
    return Profile.model_validate(doc)


def small_network(bandwidth_bps: float = 2.0e7) -> NetworkState:
    return NetworkState.model_validate({
        "format": "aiflow.network/v1",
        "source": "phone",
        "nodes": [
            {"name": "phone", "hardware": "cpu-2c", "mem_bytes": 4.0e9, "slowdown": 6.0, "tier": "device"},
            {"name": "edge", "hardware": "cpu-2c", "mem_bytes": 1.6e10, "tier": "edge"},
            {"name": "cloud", "hardware": "h200", "mem_bytes": 1.4e11, "tier": "cloud"},
        ],
        "links": [
            {"a": "phone", "b": "edge", "bandwidth_bps": bandwidth_bps, "latency_s": 0.01},
            {"a": "edge", "b": "cloud", "bandwidth_bps": 1.0e9, "latency_s": 0.02},
        ],
        "constraints": {"raw_input_stays_on_source": True, "pins": {"enc.embed": ["phone"]}},
    })


def small_plan(model: str = "tiny-test", status: str = "optimal", latency: float = 0.4213) -> Plan:
    return Plan.model_validate({
        "format": "aiflow.plan/v1",
        "model": model,
        "assignment": ["phone", "phone", "edge", "cloud"],
        "objective": "latency",
        "predicted_latency_s": latency,
        "status": status,
        "solver": "pulp-cbc",
        "solve_time_s": 0.031,
        "gap": 0.0125 if status == "feasible" else None,
        "breakdown": {"compute_s": {"phone": 0.01, "edge": 0.2}, "transfer_s": {"phone->edge": 0.2}},
    })
