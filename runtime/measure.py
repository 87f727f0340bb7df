"""A worker's control plane: the emulation a controller sets, and the measurements it asks for.

- `emulate`: the network emulated under the worker whatever plan a request runs (links.Emulation);
  `emulation_from` validates it.
- `measure`: probe frames to one neighbour, their round trips timed here so the two ends need not
  share a clock, and/or the load probe: one phase on example input, stretched like a request's
  segment.
- `profile`: every unit measured on this worker's own hardware, in the profile format of profiler/.

Measurements that compute take the worker's compute slot and executor, so they queue with the
requests' segments on the node's one device.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

import torch

from profiler.adapters.base import InputSpec, ModelAdapter, PhaseInfo
from runtime.codec import Frame, encode_frame, with_meta
from runtime.links import EmulatedNetwork, Emulation, arrival_stamp, stretch_compute
from runtime.samples import LinkSample, Samples
from runtime.transport import Transport
from runtime.validate import RequestRejected

MAX_PROBE_BYTES = 1 << 20      # one active probe frame carries at most this much padding
MAX_PROBES = 8                 # probe frames per `measure`


def emulation_from(meta: dict[str, Any], node: str) -> Emulation:
    """The Emulation an `emulate` frame sets, which must include `node`."""
    try:
        emulation = Emulation.from_meta(meta)
    except ValueError as exc:
        raise RequestRejected(str(exc), "bad-emulation") from None
    if node not in {n.name for n in emulation.nodes}:
        raise RequestRejected(f"emulate: no node {node!r}", "bad-emulation")
    return emulation


class Meter:
    """The measurements of one worker (`node`). What may change while the worker runs (its adapter after
    a reload, the emulation, the networks of its plans) is passed to each call."""

    def __init__(self, node: str, transport: Transport, samples: Samples, slot: asyncio.Lock, executor: Executor,
                 timeout_s: float) -> None:
        self.node = node
        self.transport = transport
        self.samples = samples                  # probes are link samples, reported with the passive ones
        self.slot = slot                        # the worker's compute slot: one computation at a time
        self.executor = executor
        self.timeout_s = timeout_s
        self.warm = False                       # the load probe has run once untimed

    async def measure(self, meta: dict[str, Any], adapter: ModelAdapter, phases: Mapping[str, PhaseInfo],
                      emulation: Emulation | None, network: EmulatedNetwork | None) -> dict[str, Any]:
        """Active measurements a controller asks for: probe frames to one neighbour (crossing `network`,
        the emulated links, if any) and/or one timed phase on example input."""
        out: dict[str, Any] = {"node": self.node, "probes": [], "compute": None}
        to, address, sizes = meta.get("to"), meta.get("address"), meta.get("sizes", [])
        if to is not None:
            if not isinstance(to, str) or not isinstance(address, str) or ":" not in address:
                raise RequestRejected("measure: 'to' must be a node name and 'address' HOST:PORT", "bad-measure")
            if not isinstance(sizes, list) or not 0 < len(sizes) <= MAX_PROBES or not all(
                    isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_PROBE_BYTES for n in sizes):
                raise RequestRejected(f"measure: 'sizes' must be 1..{MAX_PROBES} byte counts of at most "
                                      f"{MAX_PROBE_BYTES}", "bad-measure")
            for n in sizes:
                out["probes"].append(await self.probe(to, address, n, network))
        spec = meta.get("compute")
        if spec is not None:
            out["compute"] = await self.timed_phase(spec, adapter, phases, emulation)
        return out

    async def probe(self, to: str, address: str, nbytes: int, network: EmulatedNetwork | None) -> dict[str, Any]:
        """One probe frame of `nbytes` padding to `to`, acked once it has crossed the emulated link."""
        data = encode_frame(Frame("probe", tensor=torch.zeros(nbytes, dtype=torch.uint8)))
        now = time.perf_counter()
        if network is not None:
            arrival = await network.pace_direct(self.node, to, len(data), now)
            data = with_meta(data, **arrival_stamp(arrival, time.perf_counter(), network.kernel_rate))
        # timed from the instant the probe was handed to the link: queueing and serialisation count
        await self.transport.send(address, data, timeout=self.timeout_s)
        rtt = time.perf_counter() - now
        self.samples.links.append(LinkSample(self.node, to, len(data), rtt, time.perf_counter(), "active"))
        return {"to": to, "bytes": len(data), "seconds": rtt, "dilation": network.dilation if network else 1.0}

    async def timed_phase(self, spec: Any, adapter: ModelAdapter, phases: Mapping[str, PhaseInfo],
                          emulation: Emulation | None) -> dict[str, Any]:
        """Run a phase's units on example input, stretched like a request's segment (the node's load probe).
        The first probe runs them once untimed: a cold first pass is not the node's load."""
        if not isinstance(spec, dict) or spec.get("phase") not in phases:
            raise RequestRejected("measure: compute.phase must name a phase of the model", "bad-measure")
        phase = phases[spec["phase"]]
        target = spec.get("target_s")
        if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 <= target < 60:
            raise RequestRejected("measure: compute.target_s must be seconds in [0, 60)", "bad-measure")
        if emulation is None:
            k, slowdown = 1.0, 1.0
        else:
            k, slowdown = emulation.dilation, emulation.slowdown(self.node)
        x = adapter.example_input(InputSpec(prompt_tokens=3, new_tokens=1, batch=1), phase.name)
        loop = asyncio.get_running_loop()

        def run() -> None:
            state = adapter.new_state()          # fresh caches each pass
            state.extra["batch"] = 1
            with torch.inference_mode():      # as the profiler and the worker run units
                adapter.run(phase.first, phase.last, x, phase=phase.name, position=0, state=state)

        async with self.slot:
            if not self.warm:
                await loop.run_in_executor(self.executor, run)
                self.warm = True
            t0 = time.perf_counter()
            await loop.run_in_executor(self.executor, run)
            real = time.perf_counter() - t0
            busy = real if emulation is None else await stretch_compute(t0, real, k * slowdown * float(target))
        return {"phase": phase.name, "first": phase.first, "last": phase.last, "real_s": real, "busy_s": busy,
                "dilation": k}

    async def profile(self, meta: dict[str, Any], adapter: ModelAdapter, released: bool) -> dict[str, Any]:
        """Measure every unit here, on this worker's own hardware, keyed by the class the controller names
        (the profile format of profiler/; the controller merges it into its own). A worker that `released`
        weights cannot: its units would run on emptied tensors."""
        from profiler.build import build_profile

        hardware, repeats = meta.get("hardware"), meta.get("repeats", 5)
        if not isinstance(hardware, str) or not hardware or len(hardware) > 200:
            raise RequestRejected("profile: 'hardware' must name a hardware class", "bad-profile")
        if not isinstance(repeats, int) or isinstance(repeats, bool) or not 1 <= repeats <= 50:
            raise RequestRejected("profile: 'repeats' must be 1..50", "bad-profile")
        if released:
            raise RequestRejected("profile: this worker released weights; restart it without --release-unused",
                                  "bad-profile")
        loop = asyncio.get_running_loop()
        async with self.slot:
            prof = await loop.run_in_executor(self.executor, lambda: build_profile(
                adapter, InputSpec(), hardware=hardware, repeats=repeats, warmup=1))
        return prof.model_dump(mode="json", by_alias=True)
