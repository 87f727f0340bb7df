"""Driving requests through workers: apply a stage plan, send inputs, collect results and measurements.

The client plays the request's source and sink node. For each request it:
1. sends `open` to every node hosting a unit (control plane: not charged to the emulated links and
   not part of the measured latency),
2. starts the clock, sends the input to the node of the first unit (charged on the source -> node
   route when emulation is on), and waits for the `result` frame the last stage sends to its reply
   address (the workers pass activations, the encoder output and the decode loop among themselves),
3. stops the clock, sends `close` to every hosting node and gathers their `stats` (compute per
   node, link time per hop).
Several requests may be in flight at once; each has its own id and its own state on every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime.codec import Frame, ack_frame, decode_frame, encode_frame, with_meta
from runtime.hosts import HostError, join_host_port, reply_host, split_host_port
from runtime.links import EmulatedNetwork, Emulation, arrival_stamp, stamped_arrival
from runtime.stages import StagePlan
from runtime.transport import DEFAULT_TIMEOUT_S, FrameServer, GrpcTransport, Tls, Transport, TransportError

MAX_IDLE_S = 3600.0          # the most a worker keeps a request's state idle (runtime.worker.MAX_IDLE_S)
FORGET_TIMEOUT_S = 1.0       # close(): how long each worker is given to free the client's plans


class RequestFailed(RuntimeError):
    """A request that a worker refused or failed, or that timed out. `down`: the nodes found not answering
    (a caller may re-plan without them and run the request again)."""

    def __init__(self, message: str, down: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.down = tuple(down)


# transport codes that say the peer is gone or stalled, not that it refused
UNREACHABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN"})
WATCH_INTERVAL_S = 0.5          # how often the nodes of requests in flight are health-checked


@dataclass
class RequestResult:
    request_id: str
    tokens: torch.Tensor | None           # generate: [batch, n] greedy tokens (prompt excluded)
    output: torch.Tensor | None           # forward: what the last unit returned (logits or hidden state)
    steps: int                            # decoder passes (prefill + decode steps), 1 for a forward
    measured_s: float                     # wall seconds from sending the input to receiving the result
    dilation: float                       # K: measured_s / K is the emulated network's latency
    emulated: bool
    compute_s: dict[str, float] = field(default_factory=dict)       # node -> busy s (real + stretch)
    real_compute_s: dict[str, float] = field(default_factory=dict)  # node -> real compute s here
    transfer_s: dict[str, float] = field(default_factory=dict)      # "a->b" -> emulated link s
    transfer_bytes: dict[str, int] = field(default_factory=dict)
    rpc_s: float = 0.0                    # wall seconds spent in transport calls (all senders)
    overrun_s: float = 0.0                # real compute beyond its emulated target (all nodes)
    plan_version: int = 0                 # the plan version the request ran on

    @property
    def scaled_s(self) -> float:
        """The measured latency divided by K: the latency of the emulated network."""
        return self.measured_s / self.dilation

    def breakdown(self, scale: bool = True) -> dict[str, Any]:
        k = self.dilation if scale else 1.0
        return {"compute_s": {n: s / k for n, s in self.compute_s.items()},
                "transfer_s": {h: s / k for h, s in self.transfer_s.items()},
                "transfer_bytes": dict(self.transfer_bytes),
                "real_compute_s": dict(self.real_compute_s), "rpc_s": self.rpc_s, "overrun_s": self.overrun_s,
                "dilation": self.dilation, "scaled": scale}


class Client:
    """Runs requests on the workers of a stage plan.

    A client may hold several plan versions at once (a live migration): `prepare(plan)` gives the
    workers a new version while the current one keeps serving, `commit(version)` makes new requests
    use it, and a request keeps the version it started with to the end. `in_flight[v]` counts the
    requests running on version v, so the caller knows when `forget(v)` can free an old one."""

    def __init__(self, plan: StagePlan, *, token: str | None = None, transport: Transport | None = None,
                 reply_listen: str | None = None, timeout_s: float = 300.0,
                 call_timeout_s: float = DEFAULT_TIMEOUT_S, controller_token: str | None = None,
                 tls: Tls | None = None) -> None:
        missing = [n for n in plan.hosting_nodes() if plan.node(n).address is None]
        if missing:
            raise ValueError(f"plan v{plan.version}: no address for node(s) {', '.join(missing)}")
        # the deadline is also every worker's idle timeout for the request's state: finite and capped there
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and 0 < timeout_s <= MAX_IDLE_S):
            raise ValueError(f"timeout_s: a request's deadline must be seconds in (0, {MAX_IDLE_S:g}], got {timeout_s}")
        self.plan = plan
        self.plans: dict[int, StagePlan] = {plan.version: plan}
        self.in_flight: dict[int, int] = defaultdict(int)
        self.token = token
        self.tls = tls
        self.transport = transport or GrpcTransport(token, controller_token=controller_token, tls=tls)
        self.timeout_s = timeout_s
        self.call_timeout_s = call_timeout_s
        # None: one reply server per local address that routes to a worker (runtime.hosts); HOST[:PORT]: one
        # server there (a wildcard host: each worker is told the routed address with the bound port)
        if reply_listen is not None:
            split_host_port(reply_listen)        # a malformed one is refused here, in one line
        self._reply_listen = reply_listen
        self._servers: dict[str, FrameServer] = {}       # bound host -> reply server
        self._replies: dict[str, str] = {}               # worker address -> the reply address it is told
        self._reply_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future] = {}
        self._pending_on: dict[str, StagePlan] = {}        # the plan each pending request runs on
        self._watcher: asyncio.Task | None = None
        self.watch_interval_s = WATCH_INTERVAL_S
        self._network = EmulatedNetwork(plan.nodes, plan.links, plan.dilation)
        self._emulation: Emulation | None = None
        self.reply_address: str | None = None

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, apply: bool = True) -> None:
        try:
            await self._ensure_replies(self.plan)
        except BaseException:
            await self.close()
            raise
        if apply:
            try:
                await self.apply()
            except BaseException:
                await self.close()       # `async with` does not exit a context whose enter failed
                raise

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._forget_all()
        servers, self._servers = list(self._servers.values()), {}
        self._replies.clear()
        for server in servers:
            await server.stop()
        await self.transport.close()

    async def _forget_all(self) -> None:
        """Free every plan version this client gave, on its workers (a worker on another host outlives the
        client); a worker that does not answer within FORGET_TIMEOUT_S is skipped."""
        sends = [self.transport.send(self._address(n, p), encode_frame(Frame("forget", plan_version=v)),
                                     timeout=FORGET_TIMEOUT_S)
                 for v, p in self.plans.items() for n in p.hosting_nodes()]
        if sends and self._servers:             # nothing was given before the reply servers started
            await asyncio.gather(*sends, return_exceptions=True)
        else:
            for coro in sends:
                coro.close()

    async def _ensure_replies(self, plan: StagePlan) -> None:
        """A reply server for every worker of `plan`, on the local address that routes to it."""
        async with self._reply_lock:
            for node in plan.hosting_nodes():
                address = self._address(node, plan)
                if address in self._replies:
                    continue
                try:
                    host = reply_host(address, self._reply_listen and split_host_port(self._reply_listen)[0])
                except HostError as exc:         # no route to the worker: it cannot be reached from here
                    raise RequestFailed(f"{node}: {exc}", (node,)) from None
                self._replies[address] = await self._reply_server(address, host)
            if not self._servers:                # no worker yet: listen where asked, else on loopback
                await self._reply_server("127.0.0.1:1", "127.0.0.1")
            if self.reply_address is None:
                self.reply_address = next(iter(self._replies.values()), None) or next(
                    iter(self._servers.values())).address

    async def _reply_server(self, worker_address: str, host: str) -> str:
        """The reply address to tell the worker at `worker_address` (`host`: the one it reaches), starting
        the server it needs: on `host`, or on --reply-listen when given."""
        if self._reply_listen is None:
            bind, port = host, 0
        else:
            bind, given = split_host_port(self._reply_listen)
            port = given or 0
        server = self._servers.get(bind)
        if server is None:
            server = FrameServer(self._on_reply, lambda: {"ok": True, "client": True}, token=self.token,
                                 tls=self.tls)
            try:
                await server.start(join_host_port(bind, port))
            except (OSError, RuntimeError) as exc:
                raise HostError(f"reply address {join_host_port(bind, port)}: cannot listen there "
                                f"({str(exc).splitlines()[0][:200]})") from None
            self._servers[bind] = server
        assert server.address is not None
        bound = split_host_port(server.address)[1] or 0
        return join_host_port(host, bound)

    async def apply(self) -> None:
        """Give every hosting node the stage plan (each keeps it under its version)."""
        await self.prepare(self.plan)

    async def prepare(self, plan: StagePlan) -> None:
        """Phase one of a switch: every node hosting a unit of `plan` holds it beside the versions it has."""
        missing = [n for n in plan.hosting_nodes() if plan.node(n).address is None]
        if missing:
            raise ValueError(f"plan v{plan.version}: no address for node(s) {', '.join(missing)}")
        frame = encode_frame(Frame("plan", plan_version=plan.version, meta={"plan": plan.to_dict()}))
        await self._ensure_replies(plan)
        await asyncio.gather(*(self._control(n, frame, plan) for n in plan.hosting_nodes()))
        self.plans[plan.version] = plan

    def commit(self, version: int) -> None:
        """Phase two: new requests run on `version` (prepared before); requests in flight keep theirs."""
        self.plan = self.plans[version]
        if self._emulation is None:
            self._network = EmulatedNetwork(self.plan.nodes, self.plan.links, self.plan.dilation)

    async def forget(self, version: int) -> None:
        """Free an old version on its workers (call when in_flight[version] is 0); unreachable ones are skipped."""
        plan = self.plans.pop(version, None)
        self.in_flight.pop(version, None)
        if plan is None or plan is self.plan:
            return
        frame = encode_frame(Frame("forget", plan_version=version))
        await asyncio.gather(*(self.transport.send(self._address(n, plan), frame, timeout=5.0)
                               for n in plan.hosting_nodes()), return_exceptions=True)

    def set_emulation(self, emulation: Emulation | None) -> None:
        """The emulated network the request's first hop travels (the workers are told the same)."""
        self._emulation = emulation
        if emulation is not None:        # retuned in place: a change reaches a first hop going out now
            self._network = self._network.retune(emulation.nodes, emulation.links, emulation.dilation)
        else:
            self._network = EmulatedNetwork(self.plan.nodes, self.plan.links, self.plan.dilation)

    async def health(self) -> dict[str, dict[str, Any]]:
        nodes = self.plan.hosting_nodes()
        rows = await asyncio.gather(*(self.transport.health(self._address(n)) for n in nodes))
        return dict(zip(nodes, rows, strict=True))

    def _address(self, node: str, plan: StagePlan | None = None) -> str:
        address = (plan or self.plan).node(node).address
        assert address is not None
        return address

    async def _control(self, node: str, data: bytes, plan: StagePlan | None = None) -> list[Frame]:
        try:
            raw = await self.transport.send(self._address(node, plan), data, timeout=self.call_timeout_s)
        except TransportError as exc:
            down = (node,) if exc.code in UNREACHABLE_CODES else ()
            raise RequestFailed(f"{node}: not answering: {exc.code}: {exc.detail}"[:500], down) from None
        replies = [decode_frame(r) for r in raw]
        for r in replies:
            if r.kind == "error":
                raise RequestFailed(f"{node}: {r.meta.get('error')}")
        return replies

    async def _on_reply(self, data: bytes | memoryview) -> list[bytes]:
        received_at = time.perf_counter()
        frame = decode_frame(data)
        fut = self._pending.get(frame.request_id)
        if fut is not None and not fut.done() and frame.kind in ("result", "error"):
            nb = stamped_arrival(frame.meta, received_at)
            if nb is not None and nb > time.perf_counter():
                # an emulated result arrives when its stamp says (the sink's end of the link)
                loop = asyncio.get_running_loop()
                handle = loop.call_at(loop.time() + (nb - time.perf_counter()), _settle, fut, frame)
                fut.add_done_callback(lambda _: handle.cancel())
            else:
                fut.set_result(frame)
        return [ack_frame(frame.request_id)]

    # -- requests --------------------------------------------------------------------------------
    async def generate(self, source: torch.Tensor, *, max_new_tokens: int, eos: int | None = None,
                       deadline: float | None = None) -> RequestResult:
        """Greedy generation: prompt ids [B, S] for a causal LM, pixels [B, C, H, W] for a captioner.
        `deadline` (time.monotonic()): the result is awaited until then at most (and timeout_s at most)."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        return await self._run(source, "generate", max_new_tokens=max_new_tokens, eos=eos, deadline=deadline)

    async def forward(self, source: torch.Tensor, *, all_logits: bool = False) -> RequestResult:
        """One pass of every active phase but decode: logits of a causal LM or captioner, a ViT's output."""
        return await self._run(source, "forward", all_logits=all_logits)

    async def _run(self, source: torch.Tensor, mode: str, *, max_new_tokens: int = 1, eos: int | None = None,
                   all_logits: bool = False, deadline: float | None = None) -> RequestResult:
        plan = self.plan
        self.in_flight[plan.version] += 1
        try:
            return await self._run_on(plan, source, mode, max_new_tokens=max_new_tokens, eos=eos,
                                      all_logits=all_logits, deadline=deadline)
        finally:
            self.in_flight[plan.version] -= 1

    async def _run_on(self, plan: StagePlan, source: torch.Tensor, mode: str, *, max_new_tokens: int,
                      eos: int | None, all_logits: bool, deadline: float | None = None) -> RequestResult:
        rid = uuid.uuid4().hex
        nodes = plan.hosting_nodes()
        meta = {"reply": self.reply_address, "mode": mode, "batch": int(source.shape[0]),
                "max_new_tokens": int(max_new_tokens), "eos": eos, "all_logits": all_logits,
                "timeout_s": self.timeout_s}
        await self._ensure_replies(plan)
        # each worker is told the reply address on the local interface that reaches it (runtime.hosts)
        opened = {n: encode_frame(Frame("open", rid, plan.version,
                                        meta={**meta, "reply": self._replies[self._address(n, plan)]}))
                  for n in nodes}
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._pending_on[rid] = plan
        self._watch()
        try:
            await asyncio.gather(*(self._control(n, opened[n], plan) for n in nodes))
            first = plan.phases[0]
            dst = plan.assignment[first.first]
            data = encode_frame(Frame("data", rid, plan.version, first.name, first.first, 0, 0,
                                      source if first.input != "none" else None))
            t0 = time.perf_counter()
            wait = self.timeout_s if deadline is None else max(0.0, min(self.timeout_s, deadline - time.monotonic()))
            give_up = time.monotonic() + wait
            client_hops: dict[str, float] = {}
            try:
                if plan.emulate and dst != plan.source:
                    # serialise on the emulated route (a stalled link waits, up to the deadline) and stamp the
                    # arrival; the worker waits for it (see Worker._stamp)
                    arrival, client_hops = await asyncio.wait_for(
                        self._network.pace(plan.source, dst, len(data), t0), timeout=wait)
                    data = with_meta(data, **arrival_stamp(arrival, time.perf_counter(), self._network.kernel_rate))
                t_send = time.perf_counter()
                await self._control(dst, data, plan)
                if not plan.emulate and dst != plan.source:
                    client_hops = {f"{plan.source}->{dst}": time.perf_counter() - t_send}
                frame = await asyncio.wait_for(fut, timeout=max(0.0, give_up - time.monotonic()))
            except TimeoutError:
                raise RequestFailed(f"request {rid} timed out after {wait:.3g} s") from None
            measured = time.perf_counter() - t0
            if frame.kind == "error":
                raise RequestFailed(str(frame.meta.get("error")), frame.meta.get("down", ()))
            closing = encode_frame(Frame("close", rid, plan.version))
            stats = await asyncio.gather(*(self._control(n, closing, plan) for n in nodes))
        except BaseException:
            await self._cancel(rid, nodes, plan)
            raise
        finally:
            self._pending.pop(rid, None)
            self._pending_on.pop(rid, None)
        result = RequestResult(rid, frame.tensor if mode == "generate" else None,
                               frame.tensor if mode == "forward" else None, int(frame.meta.get("steps", 1)),
                               measured, plan.dilation if plan.emulate else 1.0, plan.emulate,
                               plan_version=plan.version)
        _merge_stats(result, [f.meta for fs in stats for f in fs if f.kind == "stats"], client_hops, len(data))
        return result

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        """While requests are in flight, health-check the nodes they run on; a node that is gone (its port
        refuses) or misses two checks in a row fails every pending request that runs on it at once, with
        the node named, instead of leaving each to wait out its deadline for a result that cannot come."""
        misses: dict[str, int] = defaultdict(int)
        while self._pending:
            await asyncio.sleep(self.watch_interval_s)
            nodes = {(n, self._address(n, plan)) for plan in list(self._pending_on.values())
                     for n in plan.hosting_nodes()}
            checks = await asyncio.gather(*(self._alive(addr) for _, addr in nodes))
            down: dict[str, str] = {}
            for (node, addr), (ok, why, definite) in zip(nodes, checks, strict=True):
                misses[addr] = 0 if ok else misses[addr] + 1
                if not ok and (definite or misses[addr] >= 2):
                    down[addr] = f"{node} ({addr}) stopped answering: {why}"
            if not down:
                continue
            for rid, plan in list(self._pending_on.items()):
                hit = [n for n in plan.hosting_nodes() if self._address(n, plan) in down]
                fut = self._pending.get(rid)
                if hit and fut is not None and not fut.done():
                    why = "; ".join(down[self._address(n, plan)] for n in hit)
                    fut.set_result(Frame("error", rid, plan.version, meta={"error": why, "code": "node-down",
                                                                           "down": hit}))

    async def _alive(self, address: str) -> tuple[bool, str, bool]:
        """(answers, why not, whether the failure is definite: the port refuses, the process is gone)."""
        try:
            await self.transport.health(address, timeout=max(2.0, 2 * self.watch_interval_s))
            return True, "", False
        except TransportError as exc:
            return False, f"{exc.code}", exc.code == "UNAVAILABLE"
        except Exception as exc:  # noqa: BLE001 - whatever it is, the node did not answer
            return False, type(exc).__name__, False

    async def _cancel(self, rid: str, nodes: Sequence[str], plan: StagePlan) -> None:
        frame = encode_frame(Frame("cancel", rid, plan.version))
        with contextlib.suppress(Exception):
            await asyncio.gather(*(self.transport.send(self._address(n, plan), frame, timeout=5.0) for n in nodes),
                                 return_exceptions=True)


def _settle(fut: asyncio.Future, frame: Frame) -> None:
    if not fut.done():
        fut.set_result(frame)


def _merge_stats(result: RequestResult, stats: list[dict[str, Any]], client_hops: dict[str, float],
                 input_bytes: int) -> None:
    compute: dict[str, float] = defaultdict(float)
    real: dict[str, float] = defaultdict(float)
    transfer: dict[str, float] = defaultdict(float, client_hops)
    nbytes: dict[str, int] = defaultdict(int, {h: input_bytes for h in client_hops})
    for s in stats:
        node = s.get("node", "?")
        for c in s.get("compute", {}).values():
            compute[node] += float(c.get("busy_s", 0.0))
            real[node] += float(c.get("real_s", 0.0))
        for hop, t in s.get("transfer", {}).items():
            transfer[hop] += float(t.get("seconds", 0.0))
            nbytes[hop] += int(t.get("bytes", 0))
        result.rpc_s += float(s.get("rpc_s", 0.0))
        result.overrun_s += float(s.get("overrun_s", 0.0))
    result.compute_s, result.real_compute_s = dict(compute), dict(real)
    result.transfer_s, result.transfer_bytes = dict(transfer), dict(nbytes)


# -- one-call helpers -----------------------------------------------------------------------------------
async def run_requests(plan: StagePlan, sources: Sequence[torch.Tensor], *, mode: str = "generate",
                       max_new_tokens: int = 16, eos: int | None = None, token: str | None = None,
                       concurrency: int = 1, timeout_s: float = 300.0,
                       reply_listen: str | None = None, controller_token: str | None = None,
                       tls: Tls | None = None, make_client: Callable[..., Client] | None = None
                       ) -> list[RequestResult]:
    """Apply `plan` to its (running) workers and run every source; at most `concurrency` at once.
    `reply_listen` is where the client takes results (None: on each local address that routes to a worker).
    `make_client`: the Client of another back-end (runtime.backends.Backend.client), Client by default."""
    async with (make_client or Client)(plan, token=token, timeout_s=timeout_s, reply_listen=reply_listen,
                      controller_token=controller_token, tls=tls) as client:
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(src: torch.Tensor) -> RequestResult:
            async with gate:
                if mode == "generate":
                    return await client.generate(src, max_new_tokens=max_new_tokens, eos=eos)
                return await client.forward(src)

        return list(await asyncio.gather(*(one(s) for s in sources)))
