"""What the runtime itself costs on this host: per request, per hop between nodes, per compressed byte.

These are the `overheads` of a profile (docs/planning-model.md, runtime overheads), measured, not
assumed:

- request_s: one request of a small model (tiny-gpt2, a 4-token forward pass) with every unit on one
  worker, minus the same units run directly in this process (their compute). What is left is
  opening the request, the client -> worker and worker -> client frames, and returning the result.
- hop_s: the same request with units alternating between two workers, minus the one-worker request,
  per extra transfer between distinct nodes (framing, gRPC over loopback, the hand-off).
- codec: encoding a float32 activation as fp16 or int8 (sender) and decoding it (receiver), per byte
  of the float32 tensor, timed on a 1 MiB activation beside the uncompressed path (whose cost is in
  hop_s already).

Workers run in this process on loopback, so the numbers hold the runtime's work and none of a
network's (the links are modelled apart). Medians of many repetitions after a warm-up.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from runtime.codec import Frame, decode_frame, encode_frame

PROBE_MODEL = "tiny-gpt2"
CODEC_TENSOR_FLOATS = 256 * 1024         # a 1 MiB float32 activation
WARMUP = 20


@dataclass(frozen=True)
class RuntimeOverheads:
    hop_s: float
    request_s: float
    codec: dict[str, dict[str, float]]   # "fp16" -> {"enc_s_per_byte": ..., "dec_s_per_byte": ...}
    detail: dict[str, float]             # the raw medians the numbers were derived from

    def as_profile_entry(self) -> dict[str, object]:
        """The value of `overheads.<hw>` in a profile."""
        return {"hop_s": self.hop_s, "request_s": self.request_s, "codec": self.codec}


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for k in range(WARMUP + repeats):
        t0 = time.perf_counter()
        fn()
        if k >= WARMUP:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def codec_costs(repeats: int = 30) -> dict[str, dict[str, float]]:
    """Per float32 byte: encode and decode time of fp16 and int8 beyond the uncompressed frame's."""
    x = torch.randn(CODEC_TENSOR_FLOATS, generator=torch.Generator().manual_seed(0))
    nbytes = float(x.numel() * 4)
    frame = Frame("data", "r", 1, "decode", 1, 0, 0, x)
    out: dict[str, dict[str, float]] = {}
    base = {how: encode_frame(frame, how) for how in ("none", "fp16", "int8")}
    enc_none = _median_time(lambda: encode_frame(frame, "none"), repeats)
    dec_none = _median_time(lambda: decode_frame(base["none"]), repeats)
    for how in ("fp16", "int8"):
        enc = _median_time(lambda how=how: encode_frame(frame, how), repeats)
        dec = _median_time(lambda how=how: decode_frame(base[how]), repeats)
        # The uncompressed copy is part of every hop already; a codec may even be cheaper than it.
        out[how] = {"enc_s_per_byte": max(0.0, enc - enc_none) / nbytes,
                    "dec_s_per_byte": max(0.0, dec - dec_none) / nbytes}
    return out


async def pipeline_costs(repeats: int) -> dict[str, float]:
    """Medians of compute alone, a one-worker request and an alternating one, and the extra hops."""
    from profiler.adapters.base import InputSpec
    from profiler.models import load_adapter
    from runtime.client import Client
    from runtime.stages import build_stage_plan
    from runtime.worker import Worker

    ad = load_adapter(PROBE_MODEL)
    n_units = len(ad.units())
    ids = torch.tensor([[1, 2, 3, 4]])

    def direct() -> None:
        with torch.inference_mode():
            ad.run(0, n_units - 1, ids, phase="prefill", position=0, state=ad.new_state())

    compute = _median_time(direct, repeats)
    workers = {name: Worker(name, adapter=ad, token="overheads") for name in ("A", "B")}
    try:
        addresses = {k: await w.start() for k, w in workers.items()}
        net = SimpleNamespace(
            nodes=[SimpleNamespace(name=k, hardware="local", slowdown=1.0, address=v) for k, v in addresses.items()],
            links=[SimpleNamespace(a="A", b="B", bandwidth_bps=1e12, latency_s=0.0, directed=False, trace=None)],
            source="A", sink=None)
        medians: dict[str, tuple[float, int]] = {}
        for version, asg in ((1, ["A"] * n_units), (2, ["AB"[u % 2] for u in range(n_units)])):
            sp = build_stage_plan(version=version, model=ad.name, units=ad.units(), phases=ad.phases(InputSpec()),
                                  edges=ad.edges(), assignment=asg, network=net)
            times = []
            async with Client(sp, token="overheads") as client:
                for k in range(WARMUP + repeats):
                    r = await client.forward(ids)
                    if k >= WARMUP:
                        times.append(r.measured_s)
            hops = sum(1 for u in range(n_units - 1) if asg[u] != asg[u + 1]) + (asg[-1] != "A")
            medians["single" if version == 1 else "alternating"] = (statistics.median(times), hops)
    finally:
        for w in workers.values():
            await w.stop()
    (single, h1), (alternating, h2) = medians["single"], medians["alternating"]
    return {"compute_s": compute, "single_s": single, "alternating_s": alternating, "extra_hops": float(h2 - h1)}


def with_overheads(profile: Any, measured: RuntimeOverheads, hardware: str | None = None) -> Any:
    """The profile with `measured` as the overheads of `hardware` (default: its first, measured class)."""
    from profiler.profile import parse_profile

    hw = hardware or profile.hardware_classes[0]
    data = profile.model_dump(by_alias=True, exclude_none=True)
    data["overheads"] = {**data.get("overheads", {}), hw: measured.as_profile_entry()}
    return parse_profile(data, "profile")


def measure_overheads(repeats: int = 100) -> RuntimeOverheads:
    """Measure this host's runtime overheads (about 5 s)."""
    pipe = asyncio.run(pipeline_costs(repeats))
    hop = max(0.0, (pipe["alternating_s"] - pipe["single_s"]) / pipe["extra_hops"])
    request = max(0.0, pipe["single_s"] - pipe["compute_s"])
    return RuntimeOverheads(hop_s=round(hop, 7), request_s=round(request, 7), codec=codec_costs(),
                            detail=pipe)
