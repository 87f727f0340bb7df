"""Changes to the emulated network made through the API (`POST /v1/emulation/links`, `/nodes`).

The emulated network is the world the local workers live in, not the daemon's state: a daemon that
takes over after a crash must emulate the network as the last one left it, not as the network file
declared it. The changes are kept as overrides ({"links": {"a~b": {...}}, "nodes": {name: {...}}}) in
the daemon's history row and applied again to the declared network. Pure functions; the daemon does
the pushing and the recording.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from orchestrator.daemon.snapshot import link_key
from runtime.links import Emulation

Overrides = dict[str, dict[str, dict[str, Any]]]


def no_overrides() -> Overrides:
    return {"links": {}, "nodes": {}}


def with_link(truth: Emulation, a: str, b: str, bandwidth_bps: float | None,
              latency_s: float | None) -> Emulation:
    """`truth` with the link between a and b (either direction) changed; a trace replayed on it stops.
    KeyError when there is no such link."""
    found = False
    links = []
    for lk in truth.links:
        if {lk.a, lk.b} == {a, b}:
            found = True
            lk = replace(lk, bandwidth_bps=lk.bandwidth_bps if bandwidth_bps is None else float(bandwidth_bps),
                         latency_s=lk.latency_s if latency_s is None else float(latency_s), trace=None)
        links.append(lk)
    if not found:
        raise KeyError(f"no link between {a!r} and {b!r}")
    return replace(truth, links=tuple(links))


def with_node(truth: Emulation, name: str, slowdown: float) -> Emulation:
    """`truth` with node `name` slowed down by `slowdown` (KeyError when it has no such node)."""
    if name not in {n.name for n in truth.nodes}:
        raise KeyError(f"no node {name!r}")
    return replace(truth, nodes=tuple(replace(n, slowdown=float(slowdown)) if n.name == name else n
                                      for n in truth.nodes))


def note_link(overrides: Overrides, truth: Emulation, a: str, b: str) -> None:
    """Record the link between a and b as `truth` now has it."""
    lk = next(lk for lk in truth.links if {lk.a, lk.b} == {a, b})
    overrides["links"][link_key(a, b)] = {"a": lk.a, "b": lk.b, "bandwidth_bps": lk.bandwidth_bps,
                                          "latency_s": lk.latency_s}


def note_node(overrides: Overrides, name: str, slowdown: float) -> None:
    overrides["nodes"][name] = {"slowdown": float(slowdown)}


def apply_overrides(truth: Emulation, overrides: Any) -> tuple[Emulation, Overrides, list[str]]:
    """The declared network `truth` with a crashed daemon's `overrides` applied: (the network, the overrides
    that applied, what was skipped and why). Overrides of links or nodes the network no longer has, or
    malformed ones (a history row is outside input), are skipped, never fatal."""
    kept = no_overrides()
    skipped: list[str] = []
    if not isinstance(overrides, dict):
        return truth, kept, ([] if overrides is None else ["emulation: not an object"])
    for key, lk in (overrides.get("links") or {}).items():
        try:
            bandwidth, latency = _finite(lk["bandwidth_bps"], 0.0, "bandwidth_bps"), _finite(lk["latency_s"], -1.0,
                                                                                              "latency_s")
            truth = with_link(truth, str(lk["a"]), str(lk["b"]), bandwidth, latency)
            note_link(kept, truth, str(lk["a"]), str(lk["b"]))
        except (KeyError, TypeError, ValueError) as exc:
            skipped.append(f"link {key}: {exc}")
    for name, node in (overrides.get("nodes") or {}).items():
        try:
            slowdown = _finite(node["slowdown"], 0.0, "slowdown")
            truth = with_node(truth, str(name), slowdown)
            note_node(kept, str(name), slowdown)
        except (KeyError, TypeError, ValueError) as exc:
            skipped.append(f"node {name}: {exc}")
    return truth, kept, skipped


def _finite(value: Any, above: float, field: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > above):
        raise ValueError(f"{field}: {value!r} is not a finite number above {above:g}")
    return v
