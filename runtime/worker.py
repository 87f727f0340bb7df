"""A worker: one node's server. It runs the unit ranges a stage plan gives its node and passes the
outputs on.

Life of a request at a worker (frame kinds from runtime.codec):
- `plan` (from the client): a StagePlan to hold under its version; several versions may be held at
  once, so requests in flight finish on the plan they started with.
- `open`: creates the request's state (a RequestState: KV caches, encoder output) keyed by request
  id, with the reply address, mode and generation limits. Data for an id never opened is refused.
- `data`: input for the segment of this node that starts at `unit`. The frame is validated at once
  (plan version, phase, unit, dtype, shape, batch) and answered with `ack` or `error`; the work runs
  after the reply, one segment at a time per request. Its output goes to the next segment's node
  (through the emulated link when emulation is on); at the end of the decoder the worker that owns
  the head samples the next token greedily and sends it back to the embedding's node, or sends the
  result to the client when max tokens or EOS is reached. The worker that makes the encoder output
  sends it once (`edge`) to every node with cross-attention units.
- `close` (answered with the request's `stats`), `cancel`, or `state_timeout_s` without activity
  free the state. A failing request gets an `error` frame at its reply address and is freed.

Memory: the worker holds the adapter (the whole model, as `load_adapter` builds it). With
`release_unused=True` it drops the weights of every unit that no held plan gives its node once a plan
is applied (weights tied to a kept unit stay), and reloads the model if a later plan needs them.

Emulation (when the plan says so): compute of a segment is stretched to K * slowdown * the profiled
latency of its units on the node's hardware class (or K * slowdown * the measured time when the plan
carries no latencies) by sleeping the difference after the real compute while holding the node's
compute slot; a real compute that already exceeds the target is counted as `overrun_s`.

The checks on data and edge frames are in runtime.validate; the control frames `emulate`, `measure`
and `profile` are served by runtime.measure. `python -m runtime.worker` runs one worker process
(`serve`, `main` below).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from profiler.adapters.base import InputSpec, ModelAdapter, RequestState
from runtime.client import MAX_IDLE_S, UNREACHABLE_CODES
from runtime.codec import Frame, FrameError, ack_frame, decode_frame, encode_frame, error_frame, with_meta
from runtime.edge_reduction import install_edge, reduce_edge
from runtime.links import EmulatedNetwork, Emulation, arrival_stamp, sleep_until, stamped_arrival, stretch_compute
from runtime.measure import Meter, emulation_from
from runtime.samples import ComputeSample, Samples, send_stamp
from runtime.stages import StagePlan
from runtime.transport import (
    DEFAULT_TIMEOUT_S,
    FrameServer,
    GrpcTransport,
    Tls,
    Transport,
    TransportError,
    caller_is_controller,
)
from runtime.validate import RequestRejected, check_edge, check_input, data_segment, frame_budget, probe_shapes

MODES = ("generate", "forward")
# Frames that steer a worker: where it sends (plans, a request's reply address), what it runs, what it
# measures. With a controller token they are taken only from calls that carry it; peers holding just the
# shared token may send activations (data, edge) and probes.
CONTROL_KINDS = frozenset({"plan", "forget", "open", "close", "cancel", "emulate", "measure", "profile", "report"})
MAX_STAMP_WAIT_S = 3600.0      # a stamp further ahead than this is a bad clock, not a slow link
# Bounds on what an `open` may ask for: a request's state lives on the worker until it ends or idles out.
MAX_BATCH = 64
MAX_NEW_TOKENS = 4096
MAX_OPEN_REQUESTS = 1024
MAX_OPEN_PER_CLIENT = 256               # per reply address: one client cannot take every slot


@dataclass
class Request:
    rid: str
    plan: StagePlan
    reply: str
    mode: str
    batch: int
    max_new_tokens: int
    eos: int | None
    all_logits: bool
    deadline: float                       # perf_counter time after which the state is dropped
    idle_s: float
    state: RequestState
    max_frames: int = 1 << 30             # data + edge frames it may receive (validate.frame_budget)
    frames: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    edge_ready: asyncio.Event = field(default_factory=asyncio.Event)
    last_active: float = field(default_factory=time.perf_counter)
    tokens: list[torch.Tensor] = field(default_factory=list)
    done: torch.Tensor | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)
    stats: dict[str, Any] = field(default_factory=lambda: {"compute": {}, "transfer": {}, "rpc_s": 0.0,
                                                           "overrun_s": 0.0, "queue_s": 0.0})

    def touch(self) -> None:
        self.last_active = time.perf_counter()


class Worker:
    """One node. `model` is a built-in name or folder (loaded with load_adapter), or pass `adapter`."""

    def __init__(self, name: str, model: str | None = None, *, adapter: ModelAdapter | None = None,
                 token: str | None = None, transport: Transport | None = None, state_timeout_s: float = 120.0,
                 release_unused: bool = False, call_timeout_s: float = DEFAULT_TIMEOUT_S,
                 controller_token: str | None = None, tls: Tls | None = None) -> None:
        if adapter is None and model is None:
            raise ValueError("a worker needs a model name or an adapter")
        self.name = name
        self.model_name = model
        if adapter is None:
            from profiler.models import load_adapter
            adapter = load_adapter(model)
        self.adapter = adapter
        self.units = adapter.units()
        self.phase_infos = {p.name: p for p in adapter.phases(InputSpec())}
        self.shapes = probe_shapes(adapter)
        self.token = token
        self.controller_token = controller_token
        self.tls = tls
        self.transport = transport or GrpcTransport(token, tls=tls)
        self.state_timeout_s = state_timeout_s
        self.call_timeout_s = call_timeout_s
        self.release_unused = release_unused
        self.released: set[int] = set()
        self.plans: dict[int, StagePlan] = {}
        self.networks: dict[int, EmulatedNetwork] = {}
        self.requests: dict[str, Request] = {}
        # The network really emulated under this worker, when a controller set one (see links.Emulation).
        self.emulation: Emulation | None = None
        self._emulated: EmulatedNetwork | None = None
        self.samples = Samples()
        self.freed = 0                          # requests whose state was dropped (any reason)
        self.errors = 0                         # frames answered with an error
        self._compute_slot = asyncio.Lock()     # one segment computes at a time: a node is one device
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"aiflow-{name}")
        self._meter = Meter(name, self.transport, self.samples, self._compute_slot, self._executor, call_timeout_s)
        self._server: FrameServer | None = None
        self._reaper: asyncio.Task | None = None
        self.address: str | None = None

    # -- serving ---------------------------------------------------------------------------------
    async def start(self, listen: str = "127.0.0.1:0") -> str:
        self._server = FrameServer(self.handle, self.health, token=self.token, controller_token=self.controller_token,
                                   tls=self.tls)
        self.address = await self._server.start(listen)
        self._reaper = asyncio.create_task(self._reap_loop())
        return self.address

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for rid in list(self.requests):
            self._drop(rid)
        if self._server is not None:
            await self._server.stop()
        await self.transport.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def health(self) -> dict[str, Any]:
        return {"ok": True, "name": self.name, "model": self.adapter.name, "family": self.adapter.family,
                "units": len(self.units), "plans": sorted(self.plans), "requests": len(self.requests),
                "freed": self.freed, "errors": self.errors, "released_units": sorted(self.released)}

    async def handle(self, data: bytes | memoryview) -> list[bytes]:
        """The Push handler: one frame in, ack/error/stats frames out. Never raises."""
        rid = ""
        received_at = time.perf_counter()
        try:
            frame = decode_frame(data)
            rid = frame.request_id
            arrival = stamped_arrival(frame.meta, received_at)
            if arrival is not None:
                frame.meta["not_before"] = arrival          # what _arrival waits for
            if frame.kind in ("data", "edge"):
                self.samples.note_arrival(frame.meta, self.name, frame.wire_bytes, max(received_at, arrival or 0.0))
            return await self._dispatch(frame)
        except FrameError as exc:
            self.errors += 1
            return [error_frame(f"{self.name}: bad frame: {exc}", rid, "bad-frame")]
        except RequestRejected as exc:
            self.errors += 1
            return [error_frame(f"{self.name}: {exc}", rid, exc.code)]
        except Exception as exc:  # noqa: BLE001 - a worker answers every frame and keeps serving
            self.errors += 1
            return [error_frame(f"{self.name}: {type(exc).__name__}: {exc}", rid, "internal")]

    async def _dispatch(self, frame: Frame) -> list[bytes]:
        kind = frame.kind
        if kind in CONTROL_KINDS and not caller_is_controller.get():
            raise RequestRejected(f"{kind} frames are taken from the controller only", "forbidden")
        if kind == "plan":
            return [self._apply_plan(frame)]
        if kind == "open":
            return [self._open(frame)]
        if kind == "data":
            self._accept_data(frame)
            return [ack_frame(frame.request_id)]
        if kind == "edge":
            self._accept_edge(frame)
            return [ack_frame(frame.request_id)]
        if kind == "close":
            req = self._known(frame.request_id)
            stats = self._stats_of(req)
            self._drop(frame.request_id)
            return [encode_frame(Frame("stats", request_id=req.rid, meta=stats))]
        if kind == "cancel":
            known = frame.request_id in self.requests
            self._drop(frame.request_id)
            return [ack_frame(frame.request_id, known=known)]
        if kind == "forget":
            held = frame.plan_version in self.plans
            self.forget_plan(frame.plan_version)
            if self.release_unused and self.plans:
                self._manage_weights()
            return [ack_frame(plan_version=frame.plan_version, held=held)]
        if kind == "emulate":
            emulation = emulation_from(frame.meta, self.name)
            if emulation != self.emulation:
                # retuned in place: a changed rate reaches the messages this worker is sending now
                self._emulated = (emulation.network() if self._emulated is None else
                                  self._emulated.retune(emulation.nodes, emulation.links, emulation.dilation))
                self.emulation = emulation
            return [ack_frame()]
        if kind == "probe":
            await _arrival(frame)            # acked once the probe has crossed the (emulated) link
            return [ack_frame()]
        if kind == "measure":
            meta = await self._meter.measure(frame.meta, self.adapter, self.phase_infos, self.emulation,
                                             self._probe_network())
            return [encode_frame(Frame("stats", meta=meta))]
        if kind == "profile":
            profile = await self._meter.profile(frame.meta, self.adapter, released=bool(self.released))
            return [encode_frame(Frame("stats", meta={"profile": profile}))]
        if kind == "report":
            return [encode_frame(Frame("stats", meta={"node": self.name, **self.samples.drain()}))]
        raise RequestRejected(f"a worker does not take {kind!r} frames", "bad-kind")

    # -- plans -----------------------------------------------------------------------------------
    def _apply_plan(self, frame: Frame) -> bytes:
        try:
            plan = StagePlan.from_dict(frame.meta.get("plan", {}))
        except ValueError as exc:
            raise RequestRejected(str(exc), "bad-plan") from None
        if len(plan.assignment) != len(self.units):
            raise RequestRejected(f"plan v{plan.version} places {len(plan.assignment)} units but model "
                                  f"{self.adapter.name} has {len(self.units)}", "bad-plan")
        if self.name not in {n.name for n in plan.nodes}:
            raise RequestRejected(f"plan v{plan.version} has no node {self.name!r}", "bad-plan")
        for p in plan.phases:
            ours = self.phase_infos.get(p.name)
            if ours is None or (ours.first, ours.last) != (p.first, p.last):
                raise RequestRejected(f"plan v{plan.version}: phase {p.name} units {p.first}..{p.last} do not "
                                      "match the model", "bad-plan")
        old = self.plans.get(plan.version)
        if old is not None and old != plan:
            raise RequestRejected(f"plan version {plan.version} is already held with other content", "bad-plan")
        self.plans[plan.version] = plan
        self.networks[plan.version] = EmulatedNetwork(plan.nodes, plan.links, plan.dilation)
        if self.release_unused:
            self._manage_weights()
        hosted = [f"{ph}:{s.first}-{s.last}" for ph, s in plan.segments_of(self.name)]
        return ack_frame(plan_version=plan.version, hosted=hosted)

    def forget_plan(self, version: int) -> None:
        self.plans.pop(version, None)
        self.networks.pop(version, None)

    # -- the emulated network --------------------------------------------------------------------
    def _network(self, plan: StagePlan) -> EmulatedNetwork:
        """The emulated links a plan's messages travel: the controller's emulation when set, else the plan's."""
        return self._emulated if self._emulated is not None else self.networks[plan.version]

    def _stretch(self, plan: StagePlan) -> tuple[float, float]:
        """(K, slowdown) this node's compute is stretched by under `plan`."""
        if self.emulation is not None:
            return self.emulation.dilation, self.emulation.slowdown(self.name)
        return plan.dilation, plan.node(self.name).slowdown

    def _probe_network(self) -> EmulatedNetwork | None:
        """The emulated links a probe crosses: the controller's emulation when set, else the newest held
        plan's network if that plan emulates, else none."""
        if self._emulated is not None:
            return self._emulated
        if self.plans:
            newest = self.plans[max(self.plans)]
            return self.networks[newest.version] if newest.emulate else None
        return None

    # -- weights ---------------------------------------------------------------------------------
    def _hosted_units(self) -> set[int]:
        return {u for p in self.plans.values() for u, n in enumerate(p.assignment) if n == self.name}

    def _manage_weights(self) -> None:
        """Drop the weights of units no held plan gives this node; reload if a released one is needed."""
        hosted = self._hosted_units()
        if hosted & self.released:
            if self.model_name is None:
                raise RequestRejected("this worker released units the plan needs and cannot reload them "
                                      "(it was given an adapter, not a model name)", "bad-plan")
            from profiler.models import load_adapter
            self.adapter = load_adapter(self.model_name)
            self.released = set()
        keep = {id(p) for u in hosted for m in self.adapter.unit_modules(u) for p in m.parameters()}
        for u in range(len(self.units)):
            if u in hosted or u in self.released:
                continue
            for m in self.adapter.unit_modules(u):
                for p in m.parameters():
                    if id(p) not in keep:
                        p.data = torch.empty(0, dtype=p.dtype)
            self.released.add(u)

    def held_param_bytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for p in self.adapter.model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
        return total

    # -- requests --------------------------------------------------------------------------------
    def _known(self, rid: str) -> Request:
        req = self.requests.get(rid)
        if req is None:
            raise RequestRejected(f"unknown request id {rid!r}", "unknown-request")
        return req

    def _open(self, frame: Frame) -> bytes:
        rid, m = frame.request_id, frame.meta
        if not rid:
            raise RequestRejected("open: a request id is required")
        if rid in self.requests:
            raise RequestRejected(f"open: request id {rid!r} is already open", "duplicate-request")
        plan = self.plans.get(frame.plan_version)
        if plan is None:
            raise RequestRejected(f"unknown plan version {frame.plan_version}", "unknown-plan")
        mode = m.get("mode", "generate")
        reply = m.get("reply")
        batch, max_new, eos = m.get("batch", 1), m.get("max_new_tokens", 1), m.get("eos")
        if mode not in MODES:
            raise RequestRejected(f"open: mode {mode!r} (known: {', '.join(MODES)})")
        if not isinstance(reply, str) or ":" not in reply:
            raise RequestRejected("open: reply must be a HOST:PORT address")
        if not isinstance(batch, int) or batch < 1 or not isinstance(max_new, int) or max_new < 1:
            raise RequestRejected("open: batch and max_new_tokens must be positive integers")
        if batch > MAX_BATCH or max_new > MAX_NEW_TOKENS:
            raise RequestRejected(f"open: at most batch {MAX_BATCH} and {MAX_NEW_TOKENS} new tokens", "too-large")
        if eos is not None and not isinstance(eos, int):
            raise RequestRejected("open: eos must be an integer or null")
        idle = m.get("timeout_s", self.state_timeout_s)
        if not isinstance(idle, (int, float)) or isinstance(idle, bool) or not 0 < idle <= MAX_IDLE_S:
            raise RequestRejected(f"open: timeout_s must be seconds in (0, {MAX_IDLE_S:g}]")
        idle = float(idle)
        if len(self.requests) >= MAX_OPEN_REQUESTS:
            raise RequestRejected(f"open: {MAX_OPEN_REQUESTS} requests are open on {self.name}; retry later",
                                  "too-many-requests")
        if sum(1 for r in self.requests.values() if r.reply == reply) >= MAX_OPEN_PER_CLIENT:
            raise RequestRejected(f"open: {MAX_OPEN_PER_CLIENT} requests of this client are open on {self.name}; "
                                  "retry later", "too-many-requests")
        state = self.adapter.new_state()
        state.extra["batch"] = batch
        self.requests[rid] = Request(rid=rid, plan=plan, reply=reply, mode=mode, batch=batch, max_new_tokens=max_new,
                                     eos=eos, all_logits=bool(m.get("all_logits", False)),
                                     deadline=time.perf_counter() + idle, idle_s=idle, state=state,
                                     max_frames=frame_budget(plan, self.name, max_new))
        return ack_frame(rid)

    def _drop(self, rid: str) -> None:
        req = self.requests.pop(rid, None)
        if req is None:
            return
        self.freed += 1
        for task in req.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        req.state = RequestState()      # release caches now, whatever still references the request

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.state_timeout_s / 4))
            self.reap()

    def reap(self) -> list[str]:
        """Drop requests idle past their timeout; tell their clients. Returns the ids dropped."""
        now = time.perf_counter()
        dropped = []
        for rid, req in list(self.requests.items()):
            if now - req.last_active > req.idle_s:
                dropped.append(rid)
                self._drop(rid)
                self._spawn_detached(self._notify(req, f"{self.name}: request {rid} timed out after "
                                                       f"{req.idle_s:.3g} s without activity", "timeout"))
        return dropped

    def _spawn_detached(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._detached = getattr(self, "_detached", set())
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    # -- data and edges (checked by runtime.validate before the ack) ------------------------------
    def _count_frame(self, req: Request) -> None:
        """Frames accepted for a request, against its budget: a peer replaying or looping frames is cut off."""
        req.frames += 1
        if req.frames > req.max_frames:
            self._drop(req.rid)
            raise RequestRejected(f"request {req.rid} sent more than the {req.max_frames} frames its plan and "
                                  "max_new_tokens allow; it is dropped", "too-many-frames")

    def _accept_data(self, frame: Frame) -> None:
        req = self._known(frame.request_id)
        phase, seg = data_segment(req.plan, frame, self.name)
        check_input(frame, phase, req.batch, self.shapes, self.phase_infos, self.adapter.source_input)
        self._count_frame(req)
        req.touch()
        self._spawn(req, self._process(req, frame, seg.first, seg.last))

    def _accept_edge(self, frame: Frame) -> None:
        req = self._known(frame.request_id)
        check_edge(frame, req.plan, self.name, req.batch)
        self._count_frame(req)
        req.touch()
        self._spawn(req, self._deliver_edge(req, frame))

    async def _deliver_edge(self, req: Request, frame: Frame) -> None:
        await _arrival(frame)
        install_edge(req.state, req.plan, frame.unit, frame.tensor)
        req.edge_ready.set()

    # -- execution -------------------------------------------------------------------------------
    def _spawn(self, req: Request, coro: Any) -> None:
        task = asyncio.create_task(coro)
        req.tasks.add(task)
        task.add_done_callback(req.tasks.discard)

    async def _process(self, req: Request, frame: Frame, first: int, last: int) -> None:
        t_arrive = time.perf_counter()
        try:
            async with req.lock:
                if self.requests.get(req.rid) is not req:
                    return                                 # freed meanwhile
                req.stats["queue_s"] += time.perf_counter() - t_arrive
                plan = req.plan
                await _arrival(frame)
                if any(first <= u <= last for u in plan.reads_edge) and req.state.encoder_out is None:
                    await asyncio.wait_for(req.edge_ready.wait(), timeout=req.idle_s)
                out = await self._compute(req, frame.phase, first, last, frame.tensor, frame.position)
                req.touch()
                await self._forward(req, frame, first, last, out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure reaches the client as an error frame
            msg = f"{self.name}: {frame.phase} units {first}..{last}: {type(exc).__name__}: {exc}"
            if self.requests.get(req.rid) is req:
                self._drop(req.rid)
            # a peer that is gone is named, so the caller may re-plan without it and run the request again
            down = [exc.node] if isinstance(exc, PeerUnreachable) else []
            await self._notify(req, msg, "node-down" if down else "failed", down)

    async def _compute(self, req: Request, phase: str, first: int, last: int, x: torch.Tensor | None,
                       position: int) -> torch.Tensor:
        plan = req.plan
        loop = asyncio.get_running_loop()

        def run() -> torch.Tensor:
            # inference_mode, as the profiler times units: no_grad keeps autograd's version counters
            # and view tracking, about 10% more per pass on these small, dispatch-bound units
            with torch.inference_mode():
                return self.adapter.run(first, last, x, phase=phase, position=position, state=req.state,
                                        all_logits=req.all_logits)

        async with self._compute_slot:
            t0 = time.perf_counter()
            out = await loop.run_in_executor(self._executor, run)
            real = time.perf_counter() - t0
            if plan.emulate:
                k, slowdown = self._stretch(plan)
                target = plan.target_compute_s(phase, first, last)
                goal = k * slowdown * (target if target is not None else real)
                busy = await stretch_compute(t0, real, goal)
                req.stats["overrun_s"] += max(0.0, real - goal)
            else:
                busy = real
        self.samples.compute.append(ComputeSample(self.name, phase, first, last, busy, real, plan.version,
                                                  time.perf_counter()))
        c = req.stats["compute"].setdefault(phase, {"real_s": 0.0, "busy_s": 0.0, "passes": 0})
        c["real_s"] += real
        c["busy_s"] += busy
        c["passes"] += 1
        return out

    async def _forward(self, req: Request, frame: Frame, first: int, last: int, out: torch.Tensor) -> None:
        """Send the output of a segment where the plan says it goes next."""
        plan = req.plan
        phase = plan.phase(frame.phase)
        if last < phase.last:
            nxt = plan.segment_at(phase.name, last + 1)
            await self._send(req, nxt.node, Frame("data", req.rid, plan.version, phase.name, last + 1,
                                                  frame.position, frame.step, out))
            return
        names = [p.name for p in plan.phases]
        if phase.name == "encode":
            out = reduce_edge(plan, last, out)          # the plan's token reduction, if any
            for m in plan.edge_readers(last):
                if m == self.name:
                    install_edge(req.state, plan, last, out)
                    req.edge_ready.set()
            sends = [self._send(req, m, Frame("edge", req.rid, plan.version, "encode", last, 0, 0, out))
                     for m in plan.edge_readers(last) if m != self.name]
            await asyncio.gather(*sends)
            if "prefill" in names:
                pre = plan.phase("prefill")
                # input "none": the decoder's first unit makes its start token; this frame only starts it
                await self._send(req, plan.assignment[pre.first],
                                 Frame("data", req.rid, plan.version, "prefill", pre.first, 0, 0, None))
            else:
                await self._result(req, out, steps=1)
            return
        if req.mode == "forward":
            await self._result(req, out, steps=1)
            return
        self._generation_step(req, frame, out)
        if self._finished(req):
            await self._result(req, torch.cat(req.tokens, dim=1), steps=len(req.tokens))
            return
        dec = plan.phase("decode")
        n_in = 1 if frame.tensor is None else self.adapter.positions(frame.tensor)   # bytes: their tokens
        await self._send(req, plan.assignment[dec.first],
                         Frame("data", req.rid, plan.version, "decode", dec.first, frame.position + n_in,
                               len(req.tokens), req.tokens[-1]))

    def _generation_step(self, req: Request, frame: Frame, logits: torch.Tensor) -> None:
        """Greedy choice, with rows that reached EOS padded with it (as profiler.generate does)."""
        token = logits.argmax(dim=-1, keepdim=True)
        if frame.phase == "prefill":
            req.tokens = []
            no_eos = torch.zeros(req.batch, dtype=torch.bool)
            req.done = (token.squeeze(1) == req.eos) if req.eos is not None else no_eos
        elif req.eos is not None:
            token = torch.where(req.done.unsqueeze(1), torch.full_like(token, req.eos), token)
            req.done = req.done | (token.squeeze(1) == req.eos)
        req.tokens.append(token)

    def _finished(self, req: Request) -> bool:
        return len(req.tokens) >= req.max_new_tokens or bool(req.done.all())

    async def _send(self, req: Request, node: str, frame: Frame) -> None:
        """Deliver a frame to `node`: locally without a copy, else through the link and the transport."""
        if node == self.name:
            if frame.kind == "data":
                self._accept_data(frame)
            return
        plan = req.plan
        address = plan.node(node).address
        if address is None:
            raise RuntimeError(f"plan v{plan.version} gives no address for node {node}")
        data = await self._stamp(req, node, encode_frame(frame, plan.compression if frame.kind in ("data", "edge")
                                                         else "none"))
        t0 = time.perf_counter()
        try:
            replies = await self.transport.send(address, data, timeout=self.call_timeout_s)
        except TransportError as exc:
            if exc.code in UNREACHABLE_CODES:
                raise PeerUnreachable(node, str(exc)) from None
            raise
        self._note_rpc(req, node, len(data), time.perf_counter() - t0)
        for r in replies:
            f = decode_frame(r)
            if f.kind == "error":
                raise RuntimeError(f"{node} refused a {frame.kind} frame: {f.meta.get('error')}")

    async def _stamp(self, req: Request, node: str, data: bytes) -> bytes:
        """With emulation: serialise the message on the emulated route (EmulatedNetwork.pace: at the rates
        the links have while it goes out) and stamp its arrival time.

        The real send starts once the last hop has serialised it and the receiver waits for `not_before`
        (perf_counter seconds; the emulated workers share this machine's monotonic clock), so the real
        loopback transfer runs inside the last hop's latency instead of adding to it. The ~30 header
        bytes of the stamp itself are not charged. A stalled link holds the message here until it moves
        again or the request is dropped (its deadline: the reaper cancels this task).
        """
        plan = req.plan
        now = time.perf_counter()
        if not plan.emulate:
            return with_meta(data, **send_stamp(self.name, [self.name, node], now))
        network = self._network(plan)
        arrival, spent = await network.pace(self.name, node, len(data), now)
        route = [self.name, *(hop.split("->", 1)[1] for hop in spent)]
        for hop, s in spent.items():
            t = req.stats["transfer"].setdefault(hop, {"seconds": 0.0, "bytes": 0, "messages": 0})
            t["seconds"] += s
            t["bytes"] += len(data)
            t["messages"] += 1
        return with_meta(data, **arrival_stamp(arrival, time.perf_counter(), network.kernel_rate),
                         **send_stamp(self.name, route, now))

    async def _result(self, req: Request, out: torch.Tensor, steps: int) -> None:
        plan = req.plan
        data = encode_frame(Frame("result", req.rid, plan.version, meta={"steps": steps, "node": self.name},
                                  tensor=out))
        if plan.sink != self.name:
            data = await self._stamp(req, plan.sink, data)
        t0 = time.perf_counter()
        await self.transport.send(req.reply, data, timeout=self.call_timeout_s)
        self._note_rpc(req, plan.sink, len(data), time.perf_counter() - t0)

    def _note_rpc(self, req: Request, node: str, nbytes: int, seconds: float) -> None:
        """Transport wall time; without emulation it is the transfer time of the direct hop."""
        req.stats["rpc_s"] += seconds
        if not req.plan.emulate and node != self.name:
            t = req.stats["transfer"].setdefault(f"{self.name}->{node}", {"seconds": 0.0, "bytes": 0, "messages": 0})
            t["seconds"] += seconds
            t["bytes"] += nbytes
            t["messages"] += 1

    async def _notify(self, req: Request, message: str, code: str, down: list[str] | None = None) -> None:
        frame = error_frame(message, req.rid, code) if not down else encode_frame(
            Frame("error", req.rid, meta={"error": message, "code": code, "down": down}))
        try:
            await self.transport.send(req.reply, frame, timeout=self.call_timeout_s)
        except TransportError:
            pass                                  # the client is gone: nothing more to tell

    def _stats_of(self, req: Request) -> dict[str, Any]:
        return {"node": self.name, **req.stats}


class PeerUnreachable(RuntimeError):
    """The next node of a request's plan did not answer (its port refuses, the call timed out)."""

    def __init__(self, node: str, detail: str) -> None:
        super().__init__(f"{node} not answering: {detail}")
        self.node = node


async def _arrival(frame: Frame) -> None:
    """Wait until an emulated frame's stamped arrival time (see Worker._stamp)."""
    nb = frame.meta.get("not_before")
    if isinstance(nb, (int, float)) and not isinstance(nb, bool):
        await sleep_until(min(float(nb), time.perf_counter() + MAX_STAMP_WAIT_S))


# -- the worker process --------------------------------------------------------------------------------
async def serve(name: str, listen: str, model: str, *, token: str | None = None, threads: int | None = None,
                state_timeout_s: float = 120.0, release_unused: bool = False,
                on_ready: Callable[[str], Awaitable[None]] | None = None,
                controller_token: str | None = None, tls: Tls | None = None, lease_s: float | None = None) -> None:
    """Run a worker until SIGINT/SIGTERM. Prints `READY host:port` on stdout once it serves, then awaits
    `on_ready(address)` (joining a daemon, say); an exception there stops the worker and propagates.
    With `lease_s`, it also stops when no call carrying the controller's credential came for that long."""
    if threads:
        torch.set_num_threads(threads)
    worker = Worker(name, model, token=token, state_timeout_s=state_timeout_s, release_unused=release_unused,
                    controller_token=controller_token, tls=tls)
    address = await worker.start(listen)
    print(f"READY {address}", flush=True)
    if on_ready is not None:
        try:
            await on_ready(address)
        except BaseException:
            await worker.stop()
            raise
    server = worker._server
    await wait_until_stopped(None if lease_s is None or server is None
                             else (lambda: server.last_controller_call, lease_s))
    await worker.stop()


async def wait_until_stopped(lease: tuple[Callable[[], float], float] | None = None) -> None:
    """Return on SIGINT or SIGTERM, or when the parent process is gone (a served process's main loop).
    `lease`: (when the controller last called, in time.monotonic(); seconds): also return once the
    controller has been silent that long."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    watches = [asyncio.create_task(_exit_with_parent(stop))]
    if lease is not None:
        watches.append(asyncio.create_task(_exit_when_unleased(stop, *lease)))
    await stop.wait()
    for watch in watches:
        watch.cancel()
    await asyncio.gather(*watches, return_exceptions=True)


async def _exit_when_unleased(stop: asyncio.Event, last_call: Callable[[], float], lease_s: float) -> None:
    """A daemon's local worker outlives a daemon that crashed (so the next one can adopt it), but not for
    ever: it stops once no call with the controller's credential (the daemon's health checks, plans) came
    for `lease_s` seconds."""
    while not stop.is_set():
        silent = time.monotonic() - last_call()
        if silent >= lease_s:
            print(f"aiflow worker: no controller call for {silent:.0f} s (lease {lease_s:g} s): stopping",
                  file=sys.stderr, flush=True)
            stop.set()
            return
        await asyncio.sleep(min(1.0, lease_s - silent))


async def _exit_with_parent(stop: asyncio.Event, every_s: float = 1.0) -> None:
    """A local worker (AIFLOW_PARENT_PID set by runtime.local) stops when the process that started it
    is gone, so a killed `aiflow run` or benchmark leaves no workers behind."""
    parent = os.environ.get("AIFLOW_PARENT_PID")
    if not parent or not parent.isdigit():
        return
    while not stop.is_set():
        if os.getppid() != int(parent):
            stop.set()
            return
        await asyncio.sleep(every_s)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m runtime.worker", description="Serve one node of a plan.")
    ap.add_argument("--name", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--model", required=True)
    ap.add_argument("--token", default=None, help="shared token (default: $AIFLOW_TOKEN)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--state-timeout", type=float, default=120.0)
    ap.add_argument("--release-unused", action="store_true")
    ap.add_argument("--lease", type=float, default=None, metavar="S",
                    help="stop when no call with the controller's credential came for S seconds")
    a = ap.parse_args(argv)
    if a.lease is not None and not (math.isfinite(a.lease) and a.lease > 0):
        ap.error(f"--lease: expected a positive number of seconds, got {a.lease}")
    token = a.token or os.environ.get("AIFLOW_TOKEN") or None
    controller = os.environ.get("AIFLOW_CONTROLLER_TOKEN") or None     # only from the environment: not in `ps`
    try:
        asyncio.run(serve(a.name, a.listen, a.model, token=token, threads=a.threads,
                          state_timeout_s=a.state_timeout, release_unused=a.release_unused,
                          controller_token=controller, tls=Tls.from_env(), lease_s=a.lease))
    except ValueError as exc:     # InputError included: bad model name or folder
        print(f"aiflow worker: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
