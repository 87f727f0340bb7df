"""What the runtime itself costs on this host: per request, per hop between nodes, per compressed byte.

These are the `overheads` of a profile (docs/planning-model.md, runtime overheads), measured, not
assumed:

- request_s and pass_s: a small model (tiny-gpt2) with every unit on one worker, once for a 4-token
  forward pass (one pass) and once generating 16 tokens (16 passes), each minus the same passes run
  directly in this process (their compute). The per-pass part (receiving a frame, dispatching the
  units from the worker's event loop to its compute thread, handing the output on) grows with the
  passes; what does not is the request's (opening it, the client's frames, returning the result).
- hop_s: the forward pass with units alternating between two workers, minus the one-worker pass,
  per extra transfer between distinct nodes (framing, gRPC over loopback, the hand-off), less the
  new pass each cut starts on its receiver.
- codec: encoding a float32 activation as fp16 or int8 (sender) and decoding it (receiver), per byte
  of the float32 tensor, timed on a 1 MiB activation beside the uncompressed path (whose cost is in
  hop_s already).

Workers run in this process on loopback, so the numbers hold the runtime's work and none of a
network's (the links are modelled apart). Medians of many repetitions after a warm-up, the
kinds of run taking turns in each round (pipeline_costs).

Beside them, `socket_round_trip` measures the floor any transport on this host stands on: a plain TCP
socket round trip on loopback (an echo thread, TCP_NODELAY) of a message of a frame's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import threading
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
GEN_PASSES = 16                          # decoder passes of the generation that isolates the per-pass cost


@dataclass(frozen=True)
class RuntimeOverheads:
    hop_s: float
    request_s: float
    pass_s: float
    codec: dict[str, dict[str, float]]   # "fp16" -> {"enc_s_per_byte": ..., "dec_s_per_byte": ...}
    detail: dict[str, float]             # the raw medians the numbers were derived from

    def as_profile_entry(self) -> dict[str, object]:
        """The value of `overheads.<hw>` in a profile."""
        return {"hop_s": self.hop_s, "request_s": self.request_s, "pass_s": self.pass_s, "codec": self.codec}


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for k in range(WARMUP + repeats):
        t0 = time.perf_counter()
        fn()
        if k >= WARMUP:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def socket_round_trip(nbytes: int, repeats: int = 2000) -> float:
    """Median seconds for `nbytes` to go to an echo thread over a loopback TCP socket and back: the
    floor under a hop's transport (no framing, no RPC, no event loop)."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    thread = threading.Thread(target=echo, name="aiflow-echo", daemon=True)
    thread.start()
    message = bytes(nbytes)
    times = []
    try:
        with socket.create_connection(server.getsockname()) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for k in range(WARMUP + repeats):
                t0 = time.perf_counter()
                client.sendall(message)
                got = 0
                while got < nbytes:
                    chunk = client.recv(1 << 16)
                    if not chunk:
                        raise ConnectionError("the echo thread closed the socket")
                    got += len(chunk)
                if k >= WARMUP:
                    times.append(time.perf_counter() - t0)
    finally:
        server.close()
        thread.join(timeout=5)          # the echo thread ends when the client closes
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
    """Medians of: compute alone (one pass; a generation of GEN_PASSES passes), the same through one
    worker, a forward pass alternating between two workers; and how many cuts and result hops that has."""
    from profiler.adapters.base import InputSpec
    from profiler.models import load_adapter
    from runtime.client import Client
    from runtime.stages import build_stage_plan
    from runtime.worker import Worker

    ad = load_adapter(PROBE_MODEL)
    n_units = len(ad.units())
    ids = torch.tensor([[1, 2, 3, 4]])

    def direct(passes: int) -> None:
        with torch.inference_mode():
            state = ad.new_state()
            out = ad.run(0, n_units - 1, ids, phase="prefill", position=0, state=state)
            for k in range(passes - 1):
                out = ad.run(0, n_units - 1, out.argmax(-1, keepdim=True), phase="decode",
                             position=ids.shape[1] + k, state=state)

    single, alternating = ["A"] * n_units, ["AB"[u % 2] for u in range(n_units)]
    samples: dict[str, list[float]] = {k: [] for k in ("compute_s", "gen_compute_s", "single_s", "alternating_s",
                                                        "gen_single_s")}
    workers = {name: Worker(name, adapter=ad, token="overheads") for name in ("A", "B")}
    try:
        addresses = {k: await w.start() for k, w in workers.items()}
        net = SimpleNamespace(
            nodes=[SimpleNamespace(name=k, hardware="local", slowdown=1.0, address=v) for k, v in addresses.items()],
            links=[SimpleNamespace(a="A", b="B", bandwidth_bps=1e12, latency_s=0.0, directed=False, trace=None)],
            source="A", sink=None)
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for version, (key, asg) in enumerate((("single", single), ("alternating", alternating)), start=1):
                sp = build_stage_plan(version=version, model=ad.name, units=ad.units(), phases=ad.phases(InputSpec()),
                                      edges=ad.edges(), assignment=asg, network=net)
                clients[key] = await stack.enter_async_context(Client(sp, token="overheads"))
            # Every kind of run takes its turn in each round, so a change of this host's speed during the
            # measurement moves them alike and their differences (the runtime's costs) hold; measured one
            # kind after another, a slow spell under the direct runs made the worker's costs come out 0.
            for k in range(WARMUP + repeats):
                round_ = {"compute_s": _timed(lambda: direct(1)),
                          "single_s": (await clients["single"].forward(ids)).measured_s,
                          "alternating_s": (await clients["alternating"].forward(ids)).measured_s}
                if k % 4 == 0:                 # a generation every fourth round: GEN_PASSES passes each
                    round_["gen_compute_s"] = _timed(lambda: direct(GEN_PASSES))
                    round_["gen_single_s"] = (await clients["single"].generate(
                        ids, max_new_tokens=GEN_PASSES)).measured_s
                if k >= WARMUP:
                    for key, v in round_.items():
                        samples[key].append(v)
    finally:
        for w in workers.values():
            await w.stop()
    out = {key: statistics.median(v) for key, v in samples.items()}
    out["cuts"] = float(sum(1 for u in range(n_units - 1) if alternating[u] != alternating[u + 1]))
    out["result_hops"] = float(alternating[-1] != "A")
    return out


def derive(c: dict[str, float]) -> tuple[float, float, float]:
    """(hop_s, request_s, pass_s) from pipeline_costs' medians, by the cost model's own terms:
    one worker, one pass:        request + pass                 = single - compute
    one worker, P passes:        request + P * pass             = gen_single - gen_compute
    alternating, one pass:       cuts * (hop + pass) + result_hops * hop = alternating - single"""
    once = c["single_s"] - c["compute_s"]
    many = c["gen_single_s"] - c["gen_compute_s"]
    pass_s = max(0.0, (many - once) / (GEN_PASSES - 1))
    request_s = max(0.0, once - pass_s)
    hop_s = max(0.0, (c["alternating_s"] - c["single_s"] - c["cuts"] * pass_s) / (c["cuts"] + c["result_hops"]))
    return hop_s, request_s, pass_s


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
    hop, request, per_pass = derive(pipe)
    return RuntimeOverheads(hop_s=round(hop, 7), request_s=round(request, 7), pass_s=round(per_pass, 7),
                            codec=codec_costs(), detail=pipe)
