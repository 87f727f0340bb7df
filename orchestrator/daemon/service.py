"""The Daemon: workers, the reconcile loop and the request path, in one asyncio event loop.

State it holds (the store keeps every step of it as rows):
- the configured network (`base`) and, when every node runs on this machine, the emulated network
  really played under the workers (`truth`: the emulation API changes it; the daemon is not told);
- the latest *snapshot*: the configured network with measured links, loads and down nodes;
- the plan in force (applied) and its version; a re-solve gives a candidate (desired), `decide`
  says whether to move to it, and a switch is two phases (prepare every worker, then commit).

Jobs (APScheduler, in this loop): `probe` (health, link and load samples, active probes where no
traffic flowed, a new snapshot) and `resolve` (solve, decide, switch). A node going down or coming
back re-solves at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch

from orchestrator.candidate import best_plan
from orchestrator.cooperative import latency_for_rounds
from orchestrator.costmodel import latency_for_steps
from orchestrator.daemon import adopt, emulation, spool
from orchestrator.daemon.coop import CoopServing
from orchestrator.daemon.decide import Decision, decide
from orchestrator.daemon.estimate import (
    LinkEstimate,
    estimate_link,
    estimate_slowdown,
    implied_bandwidth,
    probe_bytes,
    shift_start,
)
from orchestrator.daemon.events import EventHub
from orchestrator.daemon.kept import (
    Kept,
    emulation_record,
    finish_record,
    probe_record,
    run_record,
    state_record,
    write_kept,
)
from orchestrator.daemon.metrics import Metrics
from orchestrator.daemon.settings import DaemonSettings
from orchestrator.daemon.snapshot import link_key, take_snapshot
from orchestrator.daemon.view import describe_mode, plan_mode
from orchestrator.network import NetworkState
from orchestrator.plan import Plan
from orchestrator.planner import InfeasibleError, NoPlanFound, PlanOptions
from orchestrator.reductions import profile_for_plan
from profiler.adapters.base import ModelAdapter
from profiler.errors import InputError
from profiler.profile import Profile
from runtime.backends import Backend, GrpcBackend, exited
from runtime.client import Client, RequestFailed, RequestResult
from runtime.codec import Frame, decode_frame, encode_frame
from runtime.hosts import worker_listen_host
from runtime.links import Emulation, network_traces
from runtime.local import LocalWorkers
from runtime.session import make_stage_plan
from runtime.stages import LinkSpec, NodeSpec
from runtime.transport import Tls, TransportError

log = logging.getLogger("aiflow.daemon")
SMALL_PROBE_BYTES = 64
FRAME_OVERHEAD_BYTES = 150          # a probe frame's header, about
SPOOL_MARK_EVERY = 100              # a flush notes its progress in the spool file this often (records)


class ServiceUnavailable(RuntimeError):
    """The daemon is stopping or has no plan: a 503 on the API."""


@dataclass
class NodeStatus:
    name: str
    address: str | None
    local: bool
    state: str = "up"                       # up | down
    pid: int | None = None
    since: float = field(default_factory=time.monotonic)
    started: int = 1                        # workers started for the node: a restart may reuse the address


@dataclass
class Version:
    """A plan version as applied: the plan, the snapshot it was solved for and its stored ids."""

    number: int
    plan: Plan
    snapshot: NetworkState
    plan_id: int | None
    application_id: int | None
    applied_at: datetime


class Daemon:
    def __init__(self, model: str, network: NetworkState, profile: Profile, adapter: ModelAdapter, *,
                 settings: DaemonSettings | None = None, store: Any | None = None, token: str | None = None,
                 dilation: float = 1.0, trace_base: Path | None = None, threads: int | None = 1,
                 progress: Callable[[str], None] | None = None, resume: bool = False,
                 reply_listen: str | None = None, backend: Backend | None = None,
                 draft: tuple[Profile, ModelAdapter] | None = None,
                 state_dir: Path | None = None) -> None:
        self.model = model
        # cooperative mode: the draft's profile (with its measured acceptance) and model; the re-solve then
        # chooses between split and cooperative plans and k (orchestrator.candidate.best_plan)
        self.draft_profile: Profile | None = draft[0] if draft else None
        self.draft_adapter: ModelAdapter | None = draft[1] if draft else None
        self.coop: CoopServing | None = None
        # where results come back and local workers listen (None: the local address routing to each worker)
        self.reply_listen = reply_listen
        # how stages are started and reached (runtime.backends): gRPC worker processes unless told otherwise
        self.backend: Backend = backend or GrpcBackend()
        self.base = network
        self.profile = profile
        self.adapter = adapter
        self.settings = settings or DaemonSettings()
        self.store = store
        self.token = token
        # the controller's credential the workers take plans from: $AIFLOW_CONTROLLER_TOKEN (so remote workers
        # started with the same can be steered), else generated for the local workers (LocalWorkers)
        self.controller_token: str | None = os.environ.get("AIFLOW_CONTROLLER_TOKEN") or None
        self.threads = threads
        self.progress = progress or (lambda _msg: None)
        # resume: when the last daemon of this model in the history database died (no clean stop), take its
        # settings, its joined nodes and its plan in force (as the next version) instead of starting afresh
        self.resume = resume
        self.resumed_from: int | None = None
        self._resume_plan: tuple[Plan, int | None, int] | None = None
        self._version_base = 0
        self._state_id: int | None = None
        # with a history database and a state folder, local gRPC workers are detached: they outlive a daemon
        # that crashed (until worker_lease_s without a call from it) and the next one adopts them (adopt.py)
        self.state_dir = state_dir
        self._secrets_key: str | None = None
        self._recorded: dict[str, Any] | None = None      # the crashed run's `workers` record, if any
        self.adopted: list[str] = []
        self.emulated = not any(n.address for n in network.nodes)
        self.dilation = dilation if self.emulated else 1.0
        self.trace_base = trace_base
        self.truth: Emulation | None = self._initial_truth() if self.emulated else None
        self.overrides = emulation.no_overrides()     # what the API changed in the emulated network
        self.nodes = {n.name: NodeStatus(n.name, n.address, n.address is None) for n in network.nodes}
        self.snapshot = take_snapshot(network, {}, {}, set())
        self.snapshot_id: int | None = None
        self.links: dict[str, LinkEstimate] = {link_key(lk.a, lk.b): LinkEstimate(lk.bandwidth_bps, lk.latency_s, 0,
                                                                                  "configured")
                                               for lk in self.snapshot.links}
        self.slowdown: dict[str, float] = {n.name: n.slowdown for n in network.nodes}
        self._link_samples: dict[str, deque[tuple[float, float, float, str]]] = defaultdict(lambda: deque(maxlen=500))
        # per node: (when, busy seconds, profiled seconds x K) of each segment it computed
        self._load_samples: dict[str, deque[tuple[float, float, float]]] = defaultdict(lambda: deque(maxlen=500))
        # links a multi-hop sample put in doubt, with the lowest rate it implies: probed this round
        self._suspects: dict[str, float] = {}
        self._silent_rounds: dict[str, int] = defaultdict(int)   # link -> probe rounds in a row without answer
        self._silent_steps: set[str] = set()                     # links found silent: a step for _estimate
        # bytes each link may still spend on active probes: it earns probe_budget of its estimated rate
        # per second of (emulated) time, so probe traffic stays within that share whatever the sizes
        self._probe_credit: dict[str, float] = defaultdict(float)
        self._last_round: float | None = None
        self.versions: dict[int, Version] = {}
        self.current: Version | None = None
        self.decisions: deque[dict[str, Any]] = deque(maxlen=50)
        self.request_times: deque[float] = deque(maxlen=10_000)
        # for the dashboard: recent requests and plan switches (wall-clock seconds), and the live event stream
        self.request_log: deque[dict[str, Any]] = deque(maxlen=500)
        self.switches: deque[dict[str, Any]] = deque(maxlen=100)
        self.events = EventHub()
        self.metrics = Metrics()
        self.workers: LocalWorkers | None = None
        self.client: Client | None = None
        # mutual TLS for every call to the workers when $AIFLOW_TLS_CA/_CERT/_KEY are set (the local workers
        # inherit the same environment)
        self.tls = Tls.from_env()
        self.transport = self.backend.transport(token, controller_token=self.controller_token, tls=self.tls)
        self.accepting = False
        self.open_requests = 0
        self._solve_lock = asyncio.Lock()
        self._recover_lock = asyncio.Lock()
        self._scheduler: Any = None
        self._background: set[asyncio.Task] = set()
        self._writes: set[asyncio.Task] = set()          # history writes close() waits for
        # history writes that failed (the database unreachable), in order, written again by the flush job;
        # bounded: beyond settings.history_buffer the oldest is dropped and counted. With a state folder they
        # are also appended to a spool file there, so a daemon killed during the outage loses none (spool.py)
        self._unwritten: deque[Kept] = deque()
        self._spool: spool.Spool | None = (spool.Spool(state_dir, store.url) if state_dir is not None
                                           and store is not None else None)
        self.history_dropped = 0
        self._flush_lock = asyncio.Lock()
        self.probes_sent_bytes: dict[str, int] = defaultdict(int)
        self._stored_profile_id: int | None = None

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start local workers, solve and apply the first plan (or resume a crashed daemon's), start the jobs."""
        if self._adopt_spooled():
            await self.flush_history()      # before the resume check: a kept record may be a clean stop
        if self.resume and self.store is not None:
            crashed = await self._record(self.store.crashed_daemon_state, self.model)
            if crashed is not None:
                self._take_over(crashed)
                self._recorded = crashed.get("workers")
        if self.store is not None:
            self._state_id = await self._record(self._open_state)
            if self._state_id is not None and (self.overrides["links"] or self.overrides["nodes"]):
                await self._keep(emulation_record(self._state_id, self.overrides))   # the next crash restores them too
        local = [n for n, s in self.nodes.items() if s.local]
        if local:
            try:
                await self._start_local(local)
            except BaseException:
                await self.close()
                raise
        if self.draft_profile is not None and self.draft_adapter is not None:
            self.coop = CoopServing(self.model, self.adapter, self.draft_adapter, self.profile, self.draft_profile,
                                    token=self.token, threads=self.threads,
                                    on_restart=lambda n: self.metrics.verifier_restarts.labels(node=n).inc(),
                                    tls=self.tls)
        try:
            await self._push_emulation()
            self.snapshot_id = await self._record(self._save_snapshot, self.snapshot)
            reason = "no plan was resumed"
            if self._resume_plan is not None:
                plan, plan_id, version = self._resume_plan
                self._version_base = version
                await self.switch(plan, self.snapshot, plan_id, None)
                if self.current is not None:
                    log.warning("resumed plan v%d of the daemon that died as v%d", version, self.current.number)
            if self.current is None:
                decision = await self.resolve("start")
                reason = decision.reason
            if self.current is None:
                raise RuntimeError(f"no plan could be applied: {reason}")
            self._start_jobs()
            self.accepting = True
        except BaseException:
            await self.close()
            raise

    async def _start_local(self, local: list[str]) -> None:
        """Start the local workers; detached ones first adopt what a crashed daemon left running healthy."""
        remote = [s.address for s in self.nodes.values() if s.address and not s.local]
        host = worker_listen_host(remote, self.reply_listen)
        detached = self.state_dir is not None and self._state_id is not None and isinstance(self.backend, GrpcBackend)
        recorded = self._recorded if detached and self._recorded else {}
        found = (adopt.read_secrets(self.state_dir, str(recorded.get("secrets_key", "")))
                 if recorded and self.state_dir is not None else None)
        refused = None
        if recorded and found is None:
            refused = "its credentials file is missing or readable by others"
        elif found is not None and ((self.token and self.token != found.token) or
                                    (self.controller_token and self.controller_token != found.controller_token)):
            refused, found = "its token is not this daemon's", None
        if found is not None:
            self.token, self.controller_token = found.token, found.controller_token
        if detached:
            assert self.state_dir is not None and isinstance(self.backend, GrpcBackend)
            self.workers = self.backend.workers(self.model, local, token=self.token, threads=self.threads,
                                                controller_token=self.controller_token, host=host,
                                                lease_s=self.settings.worker_lease_s,
                                                log_dir=adopt.log_dir(self.state_dir))
        else:
            self.workers = self.backend.workers(self.model, local, token=self.token, threads=self.threads,
                                                controller_token=self.controller_token, host=host)
        self.token = self.workers.token
        self.controller_token = self.workers.controller_token
        self.transport = self.backend.transport(self.token, controller_token=self.controller_token, tls=self.tls)
        held: dict[str, list[int]] = {}
        if detached:
            assert self.state_dir is not None and isinstance(self.workers, LocalWorkers)
            self._secrets_key = adopt.new_key()
            adopt.write_secrets(self.state_dir, self._secrets_key,
                                adopt.WorkerSecrets(self.workers.token, self.workers.controller_token))
            if recorded:
                held = await adopt.adopt_workers(self.workers, self.transport, recorded.get("nodes") or {},
                                                 served=self.adapter.name, units=len(self.adapter.units()),
                                                 timeout_s=self.settings.health_timeout_s, refused=refused)
        self.adopted = sorted(held)
        fresh = [n for n in local if n not in held]
        if fresh:
            self.progress(f"starting {len(fresh)} local worker(s): {', '.join(fresh)}")
        addresses = await asyncio.to_thread(self.workers.start)
        for name, address in addresses.items():
            self.nodes[name].address = address
            self.nodes[name].pid = self.workers.pid(name)
        if detached:
            await self._record(self._save_workers)
            if recorded.get("secrets_key"):
                adopt.remove_secrets(self.state_dir, str(recorded["secrets_key"]))
        for name, versions in held.items():              # the dead daemon's plans: nobody will use them again
            for v in versions:
                with contextlib.suppress(Exception):
                    await self._send(self.nodes[name].address, encode_frame(Frame("forget", plan_version=v)))

    def _save_workers(self) -> None:
        assert self._state_id is not None and isinstance(self.workers, LocalWorkers)
        nodes = {name: self.workers.record(name) for name in self.workers.processes}
        self.store.update_daemon_state(self._state_id, workers={"secrets_key": self._secrets_key, "nodes": nodes})

    def _take_over(self, crashed: dict[str, Any]) -> None:
        """Settings, joined nodes, changes to the emulated network and the plan in force of a daemon that died
        (its history row)."""
        known = {f.name for f in fields(DaemonSettings)}
        try:
            self.settings = DaemonSettings(**{k: v for k, v in crashed["settings"].items() if k in known})
            net = NetworkState.model_validate(crashed["network"])
        except (InputError, TypeError, ValueError) as exc:
            log.warning("not resuming the daemon that died (history row %s): %s", crashed["id"], exc)
            return
        self.resumed_from = crashed["id"]
        joined = [n for n in net.nodes if n.name not in self.nodes and n.address]
        if joined:
            names = {n.name for n in joined}
            doc = self.base.model_dump(exclude_none=True)
            doc["nodes"].extend(n.model_dump(exclude_none=True) for n in joined)
            new_links = [lk for lk in net.links if {lk.a, lk.b} & names and {lk.a, lk.b} <= set(self.nodes) | names]
            doc["links"].extend(lk.model_dump(exclude_none=True) for lk in new_links)
            self.base = NetworkState.model_validate(doc)
            for n in joined:
                self.nodes[n.name] = NodeStatus(n.name, n.address, local=False, state="down")   # probed next
            for lk in new_links:
                self.links[link_key(lk.a, lk.b)] = LinkEstimate(lk.bandwidth_bps, lk.latency_s, 0, "declared")
            if self.truth is not None:
                self.truth = replace(self.truth, nodes=(*self.truth.nodes, *(NodeSpec(n.name, n.hardware, 1.0)
                                                                             for n in joined)),
                                     links=(*self.truth.links, *(LinkSpec(lk.a, lk.b, lk.bandwidth_bps, lk.latency_s)
                                                                 for lk in new_links)))
            self.snapshot = take_snapshot(self.base, self.links, self.slowdown, {n.name for n in joined})
        if self.truth is not None:
            self.truth, self.overrides, skipped = emulation.apply_overrides(self.truth, crashed.get("emulation"))
            for why in skipped:
                log.warning("not restoring a change to the emulated network: %s", why)
        if crashed.get("plan") and crashed.get("version"):
            try:
                plan = Plan.model_validate(crashed["plan"])
            except ValueError:
                plan = None
            usable = {n for n, st in self.nodes.items() if st.state == "up"}
            runnable = plan is not None and (plan.mode != "cooperative" or plan.draft_model == self.draft_model)
            if (plan is not None and runnable and len(plan.assignment) == len(self.profile.units)
                    and set(plan.assignment) <= usable):
                self._resume_plan = (plan, crashed.get("plan_id"), int(crashed["version"]))
            else:
                self._version_base = int(crashed["version"])
        log.warning("resuming the daemon that died (history row %s): settings, %d joined node(s), plan %s",
                    crashed["id"], len(joined), f"v{crashed.get('version')}" if self._resume_plan else "re-solved")

    def _start_jobs(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        s = self.settings
        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        self._scheduler.add_job(self._job, "interval", args=[self.probe], seconds=s.probe_interval_s, id="probe",
                                max_instances=1, coalesce=True, misfire_grace_time=None)
        self._scheduler.add_job(self._job, "interval", args=[self._scheduled_resolve], seconds=s.solve_interval_s,
                                id="resolve", max_instances=1, coalesce=True, misfire_grace_time=None)
        if self.store is not None:
            self._scheduler.add_job(self._job, "interval", args=[self.flush_history], seconds=s.history_retry_s,
                                    id="flush", max_instances=1, coalesce=True, misfire_grace_time=None)
            self._scheduler.add_job(self._job, "interval", args=[self.roll_up], seconds=s.rollup_interval_s,
                                    id="rollup", max_instances=1, coalesce=True, misfire_grace_time=None,
                                    next_run_time=datetime.now(UTC))
        self._scheduler.start()

    async def _job(self, fn: Callable[[], Any]) -> None:
        """Run one job; a failure is one log line and the next run tries again (the loop never stops)."""
        try:
            await fn()
        except asyncio.CancelledError:
            if self.accepting:
                raise
        except Exception as exc:  # noqa: BLE001
            log.warning("job %s failed: %s: %s", getattr(fn, "__name__", fn), type(exc).__name__, exc)
            self.metrics.job_errors.labels(job=getattr(fn, "__name__", "job")).inc()

    async def drain(self) -> bool:
        """Stop accepting requests; wait (bounded by settings.drain_s) for those in flight. True if all finished."""
        self.accepting = False
        self.events.close()
        deadline = time.monotonic() + self.settings.drain_s
        while self.open_requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.open_requests == 0

    async def close(self) -> None:
        """Stop the jobs, the client and the local workers this daemon started."""
        self.accepting = False
        self.events.close()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        # History writes of finished requests are data: let them land (bounded) before cancelling the rest.
        writes = [t for t in self._background if t in self._writes]
        if writes:
            await asyncio.wait(writes, timeout=10.0)
        if self._state_id is not None:
            await self._keep(state_record(self._state_id, stopped=True, at=datetime.now(UTC)))
        if self._unwritten:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush_history(), timeout=10.0)
            if self._unwritten and self._spool is None:
                log.warning("history: %d record(s) could not be written before stopping", len(self._unwritten))
        if self._spool is not None:
            self._spool.close(len(self._unwritten))
        for task in list(self._background):
            task.cancel()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
            self.client = None
        if self.coop is not None:
            await self.coop.close()
        with contextlib.suppress(Exception):
            await self.transport.close()
        if self.workers is not None:
            await asyncio.to_thread(self.workers.stop)
            self.workers = None
        if self._secrets_key is not None and self.state_dir is not None:
            adopt.remove_secrets(self.state_dir, self._secrets_key)       # nothing left to adopt

    def _spawn(self, coro: Any, *, write: bool = False) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if write:
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    # -- the emulated network ----------------------------------------------------------------------
    def _initial_truth(self) -> Emulation:
        traces = network_traces(self.base, self.trace_base)
        links = tuple(LinkSpec(lk.a, lk.b, lk.bandwidth_bps, lk.latency_s, lk.directed,
                               traces.get(lk.trace) if lk.trace else None, lk.trace_start_s)
                      for lk in self.base.links)
        nodes = tuple(NodeSpec(n.name, n.hardware, n.slowdown) for n in self.base.nodes)
        return Emulation(nodes, links, self.dilation)

    async def set_link(self, a: str, b: str, bandwidth_bps: float | None, latency_s: float | None) -> dict[str, Any]:
        """Change an emulated link under the running system (a replayed trace on it stops)."""
        self.truth = emulation.with_link(self._require_truth(), a, b, bandwidth_bps, latency_s)
        emulation.note_link(self.overrides, self.truth, a, b)
        return await self._emulation_changed()

    async def set_node(self, name: str, slowdown: float) -> dict[str, Any]:
        self.truth = emulation.with_node(self._require_truth(), name, slowdown)
        emulation.note_node(self.overrides, name, slowdown)
        return await self._emulation_changed()

    def emulation_view(self) -> dict[str, Any]:
        """The emulated network as it is now (`network`, as the workers are given it) and the changes the API
        made to the one declared (`changes`); LookupError when nothing is emulated."""
        return {"network": self._require_truth().to_meta(), "changes": self.overrides}

    async def _emulation_changed(self) -> dict[str, Any]:
        """Push the changed network to the workers and keep the change in history (a daemon that takes over
        after a crash emulates the network as it is now, not as the network file declared it)."""
        assert self.truth is not None
        await self._push_emulation()
        if self._state_id is not None:
            await self._keep(emulation_record(self._state_id, self.overrides))
        self.events.publish("state")
        return self.truth.to_meta()

    def _require_truth(self) -> Emulation:
        if self.truth is None:
            raise LookupError("links are not emulated: every node of this daemon's network is a real host")
        return self.truth

    async def _push_emulation(self) -> None:
        if self.truth is None:
            return
        frame = encode_frame(Frame("emulate", meta=self.truth.to_meta()))
        up = [s for s in self.nodes.values() if s.address and s.state == "up"]
        await asyncio.gather(*(self._send(s.address, frame) for s in up), return_exceptions=True)
        if self.client is not None:
            self.client.set_emulation(self.truth)
        if self.coop is not None:
            self.coop.set_emulation(self.truth)

    async def _send(self, address: str, frame: bytes, timeout: float | None = None) -> list[Frame]:
        replies = await self.transport.send(address, frame, timeout=timeout or self.settings.health_timeout_s * 5)
        out = [decode_frame(r) for r in replies]
        for f in out:
            if f.kind == "error":
                raise RuntimeError(f"{address}: {f.meta.get('error')}")
        return out

    # -- nodes joining ---------------------------------------------------------------------------------
    async def join(self, name: str, hardware: str, mem_bytes: float, address: str, links: list[dict[str, Any]],
                   tier: str | None = None) -> dict[str, Any]:
        """Take a running worker into the network (`aiflow worker --join`): its links as declared (then
        measured), its hardware class profiled by the worker itself where the profile lacks it, else
        estimated from a device description. Returns what was done. A known name re-joins at a new address."""
        if name in self.nodes:
            st = self.nodes[name]
            if st.local:
                raise ValueError(f"node {name!r} is a local worker of this daemon")
            st.address, st.state = address, "down"           # the next probe finds it up and re-solves
            st.started += 1                                   # a new process, maybe at the old address
            return {"name": name, "joined": "again", "profile": "unchanged"}
        if not links:
            raise ValueError("links: a joining node needs at least one link to a node of the network")
        for i, lk in enumerate(links):
            if lk.get("to") not in self.nodes:
                raise ValueError(f"links[{i}].to: unknown node {lk.get('to')!r} (nodes: {', '.join(self.nodes)})")
        health = await self.transport.health(address, timeout=self.settings.health_timeout_s * 5)
        if health.get("name") != name or health.get("model") != self.adapter.name:
            raise ValueError(f"address {address}: the worker there serves node {health.get('name')!r} of model "
                             f"{health.get('model')!r}, not node {name!r} of {self.adapter.name!r}")
        how = "in the profile"
        if hardware not in self.profile.hardware_classes:
            how = await self._profile_hardware(name, address, hardware)
        doc = self.base.model_dump(exclude_none=True)
        doc["nodes"].append({"name": name, "hardware": hardware, "mem_bytes": mem_bytes, "address": address,
                             **({"tier": tier} if tier else {})})
        new_links = [{"a": name, "b": lk["to"], "bandwidth_bps": float(lk["bandwidth_bps"]),
                      "latency_s": float(lk.get("latency_s", 0.0))} for lk in links]
        doc["links"].extend(new_links)
        self.base = NetworkState.model_validate(doc)
        self.nodes[name] = NodeStatus(name, address, local=False)
        for lk in new_links:
            self.links[link_key(lk["a"], lk["b"])] = LinkEstimate(lk["bandwidth_bps"], lk["latency_s"], 0, "declared")
        if self.truth is not None:
            self.truth = replace(self.truth, nodes=(*self.truth.nodes, NodeSpec(name, hardware, 1.0)),
                                 links=(*self.truth.links, *(LinkSpec(lk["a"], lk["b"], lk["bandwidth_bps"],
                                                                      lk["latency_s"]) for lk in new_links)))
            await self._push_emulation()
        down = {n for n, st in self.nodes.items() if st.state == "down"}
        self.snapshot = take_snapshot(self.base, self.links, self.slowdown, down)
        self.snapshot_id = await self._record(self._save_snapshot, self.snapshot)
        if self._state_id is not None:
            await self._keep(state_record(self._state_id, network=self.base.model_dump(mode="json", exclude_none=True),
                                          at=datetime.now(UTC)))
        decision = await self.resolve("node-join")
        return {"name": name, "joined": "new", "profile": how, "decision": decision.to_dict()}

    async def _profile_hardware(self, name: str, address: str, hardware: str) -> str:
        """Latencies for a hardware class the profile lacks: measured by the node's worker on its own
        hardware; where it cannot, estimated from a shipped device description; else refused."""
        from profiler.merge import merge_profiles
        from profiler.profile import parse_profile

        try:
            replies = await self._send(address, encode_frame(Frame("profile", meta={"hardware": hardware})),
                                       timeout=600.0)
            doc = next(f.meta["profile"] for f in replies if f.kind == "stats")
            measured = parse_profile(doc, f"profile measured on {name}")
            self.profile, _ = merge_profiles([self.profile, measured], ["daemon profile", f"node {name}"])
            how = f"measured on {name}"
        except (RuntimeError, TransportError, StopIteration, KeyError, InputError) as exc:
            from profiler.estimate import estimate_profile
            from profiler.hardware import load_device

            try:
                device = load_device(hardware)
            except (InputError, OSError):
                raise ValueError(f"hardware: node {name} could not profile {hardware!r} ({exc}) and no device "
                                 "description of that name exists") from None
            self.profile = estimate_profile(self.profile, device)
            how = f"estimated from the device description {hardware!r} ({name} could not profile: {exc})"
        await self._record(self._save_profile)
        return how

    # -- the probe job ---------------------------------------------------------------------------------
    async def probe(self) -> NetworkState:
        """Measure health, links and loads; take and record a snapshot; re-solve at once if nodes changed."""
        t_start = time.monotonic()
        await self._check_nodes()
        up = [s for s in self.nodes.values() if s.state == "up" and s.address]
        reports = await asyncio.gather(*(self._send(s.address, encode_frame(Frame("report"))) for s in up),
                                       return_exceptions=True)
        now = time.monotonic()
        for rep in reports:
            if isinstance(rep, BaseException):
                continue
            for f in rep:
                if f.kind == "stats":
                    self._take_samples(f.meta, now)
        await self._active_probes(now)
        shifted = self._estimate(now)
        down = {n for n, s in self.nodes.items() if s.state == "down"}
        self.snapshot = take_snapshot(self.base, self.links, self.slowdown, down)
        self.snapshot_id = await self._keep(probe_record(self.snapshot, *self._probe_rows(), datetime.now(UTC)))
        self.metrics.observe_snapshot(self.links, self.slowdown, self.nodes)
        self.metrics.probe_seconds.observe(time.monotonic() - t_start)
        self.events.publish("state")
        if shifted:
            await self.resolve("link-change")
        return self.snapshot

    async def _check_health(self) -> str | None:
        """Mark nodes up or down; restart a local worker whose process died. Returns "down"/"up" on a change."""
        change: str | None = None
        statuses = list(self.nodes.values())
        results = await asyncio.gather(*(self._health(s) for s in statuses))
        restarted = False
        for s, ok in zip(statuses, results, strict=True):
            if not ok and s.local and self.workers is not None and await exited(self.workers, s.name):
                ok = await self._restart(s)
                restarted = restarted or ok
            new = "up" if ok else "down"
            if new != s.state:
                log.warning("node %s is %s", s.name, new)
                s.state, s.since = new, time.monotonic()
                change = change or new
                if new == "up":
                    await self._push_emulation()
        if self.coop is not None:
            await self.coop.revive_dead()       # a verifier that died between requests: ready for the next
            if await self.coop.check_unanswered(self.settings.health_timeout_s):
                change = change or "verifier-up"    # a remote verifier answers again: cooperative plans may use it
        if restarted:
            # a restarted worker listens at a new address and holds no plan: the plan in force is applied
            # again (as a new version) even if the planner would keep it
            await self._push_emulation()
            change = "restarted"
        return change

    async def _health(self, s: NodeStatus) -> bool:
        if not s.address:
            return False
        try:
            h = await self.transport.health(s.address, timeout=self.settings.health_timeout_s)
        except (TimeoutError, TransportError, OSError):
            return False
        return bool(h.get("ok")) and h.get("name") == s.name

    async def _restart(self, s: NodeStatus) -> bool:
        assert self.workers is not None
        try:
            s.address = await asyncio.to_thread(self.workers.restart, s.name)
        except Exception as exc:  # noqa: BLE001 - a worker that will not start stays down; try next probe
            log.warning("restarting worker %s failed: %s", s.name, exc)
            return False
        s.pid = self.workers.pid(s.name)
        s.started += 1
        await self.transport.forget(s.address)      # a channel kept from a dead holder of the port
        self.metrics.restarts.labels(node=s.name).inc()
        if self._secrets_key is not None:
            await self._record(self._save_workers)
        return True

    def _take_samples(self, meta: dict[str, Any], now: float) -> None:
        k = self.dilation
        for sm in meta.get("links", []):
            try:
                route = [str(n) for n in sm.get("route") or ()]
                nbytes, seconds = float(sm["nbytes"]), float(sm["seconds"]) / k
                if len(route) > 2:
                    self._check_route(route, nbytes, seconds)
                    continue
                key = link_key(str(sm["src"]), str(sm["dst"]))
                self._link_samples[key].append((now, nbytes, seconds, str(sm["kind"])))
            except (KeyError, TypeError, ValueError):
                continue
        for sm in meta.get("compute", []):
            try:
                self._note_load(str(sm["node"]), str(sm["phase"]), int(sm["first"]), int(sm["last"]),
                                float(sm["busy_s"]), float(sm["real_s"]), now)
            except (KeyError, TypeError, ValueError):
                continue

    def _check_route(self, route: list[str], nbytes: float, seconds: float, tolerance: float = 0.25) -> None:
        """A multi-hop sample cannot say which link changed, only that one did: when its time is off the
        sum of the hops' estimates, every hop on the route is probed this round."""
        keys = [link_key(a, b) for a, b in zip(route, route[1:], strict=False)]
        if any(key not in self.links for key in keys):
            return
        hop = {key: self.links[key].latency_s + 8.0 * nbytes / self.links[key].bandwidth_bps for key in keys}
        want = sum(hop.values())
        if want > 0 and abs(seconds - want) / want > tolerance:
            for key in keys:
                # the rate this hop would have if all of the difference were on it (sizes its probe)
                rate = implied_bandwidth(nbytes, seconds - (want - hop[key]), self.links[key].latency_s)
                self._suspects[key] = min(self._suspects.get(key, math.inf), rate or math.inf)

    def _note_load(self, node: str, phase: str, first: int, last: int, busy_s: float, real_s: float,
                   now: float) -> None:
        """A node's compute against the profile: busy / (K * profiled) is its current slowdown.

        Under emulation a segment whose real compute overran its stretched target says only that this
        machine was too slow to play the node (busy == real), not how loaded the node is: skipped."""
        if node not in self.nodes or (self.emulated and busy_s <= real_s * 1.02):
            return
        hw = self.base.node(node).hardware
        target = 0.0
        for u in range(first, last + 1):
            lat = self.profile.units[u].latency_s.get(hw, {}).get(phase) if u < len(self.profile.units) else None
            if lat is None:
                return
            target += lat
        if target > 0:
            self._load_samples[node].append((now, busy_s, self.dilation * target))

    async def _active_probes(self, now: float) -> None:
        """Probe, at a bounded cost, the links that carried no activation in the window; time one unit on
        the nodes that computed nothing in it."""
        s = self.settings
        horizon = now - s.window_s
        elapsed = 0.0 if self._last_round is None else (now - self._last_round) / self.dilation
        self._last_round = now
        interval = s.probe_interval_s / self.dilation          # one probe interval in the network's own time
        jobs = []
        for lk in self.base.links:
            a, b = self.nodes[lk.a], self.nodes[lk.b]
            if a.state != "up" or b.state != "up" or not b.address:
                continue
            key = link_key(lk.a, lk.b)
            recent = [x for x in self._link_samples[key] if x[0] >= horizon]
            est = self.links.get(key) or LinkEstimate(lk.bandwidth_bps, lk.latency_s, 0, "configured")
            earned = self._probe_credit[key] + s.probe_budget * est.bandwidth_bps / 8.0 * elapsed
            self._probe_credit[key] = min(earned, 4 * s.probe_budget * est.bandwidth_bps / 8.0 * interval)
            # a link that carries traffic is measured by it, unless its newest sample is off the estimate:
            # then a probe confirms (or refutes) a change within this round
            suspect = key in self._suspects or shift_start([(b, t) for _, b, t, _ in recent], est, count=1) is not None
            if any(kind == "passive" for _, _, _, kind in recent) and len(recent) >= 3 and not suspect:
                continue
            rate = min(est.bandwidth_bps, self._suspects.get(key, math.inf))
            if suspect and recent:
                # size the probe for the rate the newest sample implies, so a collapsed link is not
                # flooded by a probe sized for its old capacity
                _, nbytes, secs, _ = recent[-1]
                rate = min(rate, implied_bandwidth(nbytes, secs, est.latency_s) or rate)
            large = probe_bytes(rate, interval, s.probe_budget, s.probe_min_bytes, s.probe_max_bytes)
            # a suspect link gets two large probes: two samples off the line confirm a change this round
            sizes = [SMALL_PROBE_BYTES, large, large] if suspect else [SMALL_PROBE_BYTES, large]
            cost = sum(sizes) + FRAME_OVERHEAD_BYTES * len(sizes)
            if not suspect and elapsed > 0 and self._probe_credit[key] < cost:
                continue                   # an idle link waits until its budget pays for the probe
            self._probe_credit[key] -= cost
            meta = {"to": lk.b, "address": b.address, "sizes": sizes}
            # the wait is sized for the rate the link is believed to have, not the suspect one: a silent link
            # is then noticed in seconds, and a slow one still answers a probe sized for its slowness
            jobs.append(self._measure(a, meta, key, timeout=self._probe_timeout(sizes, est.bandwidth_bps,
                                                                                  est.latency_s)))
        for name, st in self.nodes.items():
            if st.state != "up" or not st.address:
                continue
            if any(t >= horizon for t, _, _ in self._load_samples[name]):
                continue
            spec = self._compute_probe(name)
            if spec is not None:
                jobs.append(self._measure(st, {"compute": spec}, None))
        self._suspects.clear()
        await asyncio.gather(*jobs, return_exceptions=True)

    def _compute_probe(self, node: str) -> dict[str, Any] | None:
        """The load probe of a node: its profiled time for the whole first phase (a worker runs it all)."""
        p = next((p for p in self.profile.phases if p.repeat > 0), None)
        if p is None:
            return None
        hw = self.base.node(node).hardware
        lats = [self.profile.units[u].latency_s.get(hw, {}).get(p.name) for u in range(p.first, p.last + 1)]
        if any(x is None for x in lats):
            return None
        return {"phase": p.name, "target_s": sum(lats)}

    def _probe_timeout(self, sizes: list[int], rate_bps: float, latency_s: float) -> float:
        """Wall seconds to wait for a link's probes: five times what they should take at the rate they
        were sized for (at least half a second of the network's time), plus two seconds for the hosts. A
        silent link is noticed within that, not after a generic call timeout (29 s under dilation 6)."""
        expected = sum(latency_s + 8.0 * (n + FRAME_OVERHEAD_BYTES) / max(rate_bps, 1.0) for n in sizes)
        return 2.0 + self.dilation * max(0.5, 5.0 * expected)

    async def _measure(self, st: NodeStatus, meta: dict[str, Any], key: str | None,
                       timeout: float | None = None) -> None:
        assert st.address is not None
        timeout = timeout or 5.0 + 2 * self.dilation * 2.0
        try:
            replies = await self._send(st.address, encode_frame(Frame("measure", meta=meta)), timeout=timeout)
        except TransportError as e:
            if key is None or e.code != "DEADLINE_EXCEEDED" or self.nodes[meta["to"]].state != "up":
                raise
            self._note_silent_link(key, meta["sizes"], timeout, time.monotonic())
            return
        now = time.monotonic()
        if key is not None:
            self._silent_rounds.pop(key, None)
        for f in replies:
            if f.kind != "stats":
                continue
            for p in f.meta.get("probes", []):
                k = float(p.get("dilation", 1.0)) or 1.0
                if key is not None:
                    self._link_samples[key].append((now, float(p["bytes"]), float(p["seconds"]) / k, "active"))
                    self.probes_sent_bytes[key] += int(p["bytes"])
            c = f.meta.get("compute")
            if c:
                self._note_load(st.name, str(c["phase"]), int(c["first"]), int(c["last"]), float(c["busy_s"]),
                                float(c["real_s"]), now)

    def _note_silent_link(self, key: str, sizes: list[int], timeout_s: float, now: float) -> None:
        """A link probe that got no answer in time, though both ends are up: the link carried its bytes
        in no less than the timeout. Counted as one sample at that time (a bound on the bandwidth, not a
        measurement of it), so a silent link moves its estimate and a re-solve leaves it; without this the
        estimate of a link that carries nothing would never change. The link is probed again next round."""
        nbytes = float(sum(sizes) + FRAME_OVERHEAD_BYTES * len(sizes))
        seconds = timeout_s / self.dilation
        samples = self._link_samples[key]
        samples.append((now, nbytes, seconds, "timeout"))
        bound = implied_bandwidth(nbytes, seconds, 0.0) or math.inf
        self._suspects[key] = min(self._suspects.get(key, math.inf), bound)
        self._silent_rounds[key] += 1
        if self._silent_rounds[key] >= 2:
            # two rounds in a row without an answer: the link changed. Only the silent rounds describe it
            # now (the size test of shift_start would mix these bounds with the old probes' samples)
            kept = [x for x in samples if x[3] == "timeout"][-self._silent_rounds[key]:]
            samples.clear()
            samples.extend(kept)
            self._silent_steps.add(key)
        log.warning("link %s: a probe got no answer in %.1f s; counted as at most %.3g bit/s", key, seconds, bound)

    def _estimate(self, now: float) -> bool:
        """Update every link and node estimate from its window; True when a link changed (a step)."""
        shifted = False
        horizon = now - self.settings.window_s
        for key, samples in self._link_samples.items():
            while samples and samples[0][0] < horizon:
                samples.popleft()
            prior = self.links.get(key)
            if prior is None or not samples:
                continue
            if key in self._silent_steps:
                self._silent_steps.discard(key)
                log.info("link %s is silent: estimating from its %d unanswered probe rounds", key, len(samples))
                shifted = True
                self.links[key] = estimate_link([(b, t) for _, b, t, _ in samples], prior)
                continue
            cut = shift_start([(b, t) for _, b, t, _ in samples], prior)
            if cut is not None:
                log.info("link %s changed: estimating from the newest %d samples", key, len(samples) - cut)
                for _ in range(cut):
                    samples.popleft()
                shifted = True
            self.links[key] = estimate_link([(b, t) for _, b, t, _ in samples], prior)
        for node, samples in self._load_samples.items():
            while samples and samples[0][0] < horizon:
                samples.popleft()
            self.slowdown[node] = estimate_slowdown([(b, e) for _, b, e in samples], self.slowdown.get(node, 1.0),
                                                    min_expected_s=0.005)
        return shifted

    # -- re-solve, decide, switch ------------------------------------------------------------------
    async def _scheduled_resolve(self) -> None:
        await self.resolve("scheduled")

    def request_rate_hz(self) -> float:
        now = time.monotonic()
        recent = [t for t in self.request_times if t >= now - self.settings.window_s]
        return len(recent) / self.settings.window_s

    async def resolve(self, trigger: str = "manual", *, force: bool = False) -> Decision:
        """Solve for the latest snapshot (warm-started from the plan in force), decide, switch if worth it.
        `force`: when the candidate is not taken, apply the plan in force again as a new version (a worker
        was restarted at a new address)."""
        async with self._solve_lock:
            snapshot, snapshot_id = self.snapshot, self.snapshot_id
            current = self.current.plan if self.current else None
            opts = PlanOptions(solver=self.settings.solver, time_limit_s=self.settings.solve_time_limit_s,
                               warm_start=current.assignment if current and current.mode != "cooperative" else None)
            t0 = time.perf_counter()
            try:
                # the best split plan (token reductions considered), or the cooperative plan and k when faster
                no_verifier = self.no_verifier(snapshot)
                candidate, _ = await asyncio.to_thread(best_plan, self.profile, snapshot, opts,
                                                       draft=self.draft_profile,
                                                       max_quality_loss=self.settings.max_quality_loss,
                                                       no_verifier=no_verifier)
            except (InfeasibleError, NoPlanFound) as exc:
                self.metrics.solves.labels(status="infeasible").inc()
                decision = Decision(False, f"no plan: {exc}", None, math.inf, 0.0, 0.0, {})
                self._note_decision(decision, trigger, None)
                return decision
            self.metrics.solve_seconds.observe(time.perf_counter() - t0)
            self.metrics.solves.labels(status=candidate.status).inc()
            decision = decide(current, candidate, self.profile, snapshot, self.settings, self.request_rate_hz(),
                              self.draft_profile, no_verifier=no_verifier)
            plan_id = await self._record(self._save_solve, candidate, snapshot_id, decision, trigger)
            cand_id, decision_id = plan_id if plan_id else (None, None)
            noted = self._note_decision(decision, trigger, candidate)
            if decision.apply:
                before = self.current.number if self.current else None
                await self.switch(candidate, snapshot, cand_id, decision_id)
                after = self.current.number if self.current else None
                noted["switched_to"] = after if after != before else None
                self.events.publish("state")
            elif force and self.current is not None:
                await self.switch(self.current.plan, snapshot, self.current.plan_id, decision_id)
            return decision

    def no_verifier(self, snapshot: NetworkState) -> set[str]:
        """Nodes a cooperative plan cannot verify on now: remote ones that name no verifier (the daemon starts
        verifiers on its local nodes only) and remote verifiers found not answering."""
        if self.coop is None:
            return set()
        remote = {n for n, st in self.nodes.items() if not st.local}
        named = {n.name for n in snapshot.nodes if n.verifier_address}
        return (remote - named) | self.coop.unanswered

    def _note_decision(self, decision: Decision, trigger: str, candidate: Plan | None) -> dict[str, Any]:
        self.metrics.decisions.labels(applied=str(decision.apply).lower()).inc()
        noted = {"at": datetime.now(UTC).isoformat(), "trigger": trigger,
                 "assignment": list(candidate.assignment) if candidate else None,
                 **(plan_mode(candidate) if candidate else {}), **decision.to_dict()}
        self.decisions.append(noted)
        self.events.publish("state")
        return noted

    async def switch(self, plan: Plan, snapshot: NetworkState, plan_id: int | None, decision_id: int | None) -> None:
        """Two phases: every worker of the new version loads it (the old keeps serving), then new requests
        take it; the old version is freed on its workers once no request holds it."""
        # a number is never used twice: a switch that failed in prepare may have left its version on some workers
        number = max(self.current.number if self.current else 0, self._version_base) + 1
        addresses = {n: s.address for n, s in self.nodes.items() if s.address}
        cooperative = plan.mode == "cooperative"
        sp = None if cooperative else make_stage_plan(self.adapter, snapshot, plan, addresses=addresses,
                                                      profile=self.profile, emulate=self.emulated,
                                                      dilation=self.dilation, version=number)
        t0 = time.perf_counter()
        try:
            if cooperative:
                # a verifier on the plan's verifier node (started on first use); the draft runs here
                if self.coop is None:
                    raise ValueError("a cooperative plan needs a draft (aiflow daemon --draft)")
                await self.coop.prepare(number, plan, snapshot)
            else:
                assert sp is not None
                if self.client is None:
                    self.client = self.backend.client(sp, token=self.token, timeout_s=self.settings.request_timeout_s,
                                                      controller_token=self.controller_token, tls=self.tls,
                                                      reply_listen=self.reply_listen)
                    await self.client.start(apply=False)
                    if self.truth is not None:
                        self.client.set_emulation(self.truth)
                await self.client.prepare(sp)
        except (RequestFailed, TransportError, ValueError) as exc:
            log.warning("switch to v%d failed in prepare: %s", number, exc)
            self.metrics.switches.labels(outcome="failed").inc()
            self._version_base = number
            if self.client is not None and sp is not None:
                # the workers that took the version before another failed free it again
                self.client.plans.setdefault(number, sp)
                self._spawn(self.client.forget(number))
            if isinstance(exc, RequestFailed) and exc.down and not cooperative:
                # a worker died under the switch: check the nodes now (restart, re-plan), not at the next probe
                self._spawn(self._check_nodes())
            return
        old = self.current
        if self.client is not None and not cooperative:
            self.client.commit(number)
        # the plan is in force from the commit: requests take it (and find its version) while the record waits
        applied = Version(number, plan, snapshot, plan_id, None, datetime.now(UTC))
        self.current = self.versions[number] = applied
        app_id = await self._record(self._save_application, plan_id, old.plan_id if old else None, number,
                                    decision_id)
        applied.application_id = app_id
        self.switches.append({"version": number, "at": applied.applied_at.timestamp(),
                              "assignment": list(plan.assignment), **plan_mode(plan),
                              "predicted_latency_s": plan.predicted_latency_s})
        self.metrics.switches.labels(outcome="applied").inc()
        self.metrics.plan_version.set(number)
        self.metrics.switch_seconds.observe(time.perf_counter() - t0)
        log.info("plan v%d applied (%s): %s", number, describe_mode(plan), " ".join(plan.assignment))
        if self._state_id is not None:
            await self._keep(state_record(self._state_id, plan_id=plan_id, version=number, at=datetime.now(UTC)))
        if old is not None:
            self._spawn(self._retire(old, app_id))
        elif app_id is not None:
            await self._keep(finish_record(app_id, "applied (first plan)", datetime.now(UTC)))

    async def _retire(self, old: Version, application_id: int | None) -> None:
        """Free an old version once its last request finished (bounded by the request timeout), then
        record that the switch that replaced it is complete."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        while self._in_flight(old.number) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self._in_flight(old.number)
        if old.plan.mode == "cooperative" and self.coop is not None:
            self.coop.forget(old.number)
        elif self.client is not None:
            await self.client.forget(old.number)
        self.versions.pop(old.number, None)
        if application_id is not None:
            outcome = "switched" if left == 0 else f"switched; {left} request(s) still on v{old.number} at the deadline"
            await self._keep(finish_record(application_id, outcome, datetime.now(UTC)))

    def _in_flight(self, version: int) -> int:
        """Requests still running on a plan version (split ones on the workers, cooperative ones here)."""
        split = self.client.in_flight.get(version, 0) if self.client is not None else 0
        return split + (self.coop.in_flight.get(version, 0) if self.coop is not None else 0)

    # -- requests ----------------------------------------------------------------------------------
    async def run_request(self, source: torch.Tensor, max_new_tokens: int) -> tuple[RequestResult, Version, float]:
        """Run one request on the plan in force; (result, the version it ran on, its predicted latency).

        A request that fails because a node stopped answering (or whose plan was replaced while it failed)
        runs again, on the plan the daemon applies after checking its nodes: a dead local worker is
        restarted, a dead remote one taken out and the plan re-solved without it. At most
        settings.max_retries times, and never past settings.request_timeout_s from its arrival; a
        request a worker refused (bad input) is not run again."""
        if self.accepting and self.current is not None and self.current.plan.mode == "cooperative":
            return await self._run_cooperative(source, max_new_tokens)
        if not self.accepting or self.client is None or self.current is None:
            raise ServiceUnavailable("the daemon is not serving (starting or stopping)")
        self.open_requests += 1
        self.request_times.append(time.monotonic())
        deadline = time.monotonic() + self.settings.request_timeout_s
        try:
            attempt = 0
            while True:
                started = self.client.plan
                processes = {n: st.started for n, st in self.nodes.items()}
                try:
                    res = await self.client.generate(source, max_new_tokens=max_new_tokens,
                                                     eos=self.adapter.eos_token_id, deadline=deadline)
                    break
                except RequestFailed as exc:
                    attempt += 1
                    # the processes that failed it (address, and how many were started on the node: a restarted
                    # worker can get the dead one's port): one death is recovered from once, however many plan
                    # versions were applied to the dead process meanwhile (a switch may commit just after)
                    at = {x.name: x.address or "" for x in started.nodes}
                    dead = {n: (at.get(n, ""), processes.get(n, 0)) for n in exc.down}
                    retry = attempt <= self.settings.max_retries and time.monotonic() < deadline
                    if dead and retry:
                        await self.recover(dead)
                    moved = self.client.plan.version != started.version and not self._still_on(dead)
                    if not (retry and moved):
                        self.metrics.requests.labels(outcome="failed").inc()
                        if dead and attempt > self.settings.max_retries:
                            raise RequestFailed(f"{exc}; given up after {attempt} runs (--max-retries "
                                                f"{self.settings.max_retries})", exc.down) from None
                        if dead and not moved:
                            raise RequestFailed(f"{exc}; no plan without {', '.join(exc.down)} could be applied",
                                                exc.down) from None
                        raise
                    self.metrics.requests.labels(outcome="retried").inc()
        finally:
            self.open_requests -= 1
        version = self.versions.get(res.plan_version) or self.current
        predicted = latency_for_steps(profile_for_plan(self.profile, version.plan), version.snapshot,
                                      version.plan.assignment, res.steps)
        self.metrics.requests.labels(outcome="ok").inc()
        self.metrics.latency.labels(plan_version=str(res.plan_version)).observe(res.scaled_s)
        return res, version, predicted if predicted is not None else version.plan.predicted_latency_s

    async def _run_cooperative(self, source: torch.Tensor, max_new_tokens: int) -> tuple[RequestResult, Version, float]:
        """One request on the cooperative plan in force: the draft proposes here, the verifier checks. It
        keeps its version to the end (a switch meanwhile waits for it before freeing the version). When it
        failed because its remote verifier stopped answering, the daemon re-plans without that verifier
        and the request runs again, once, on the plan it applies."""
        version = self.current
        assert version is not None and self.coop is not None and self.draft_profile is not None
        plan = version.plan
        self.open_requests += 1
        self.request_times.append(time.monotonic())
        deadline = time.monotonic() + self.settings.request_timeout_s
        again = False
        try:
            res, rounds, passes = await self.coop.generate(
                version.number, source, max_new_tokens=max_new_tokens, eos=self.adapter.eos_token_id,
                deadline=deadline, base=self.base)
        except RequestFailed:
            if plan.assignment[-1] in self.coop.unanswered and time.monotonic() < deadline:
                await self.resolve("verifier-down")
                again = self.current is not None and self.current.number != version.number
            if not again:
                self.metrics.requests.labels(outcome="failed").inc()
                raise
            self.metrics.requests.labels(outcome="retried").inc()
        finally:
            self.open_requests -= 1
        if again:
            return await self.run_request(source, max_new_tokens)
        predicted = latency_for_rounds(self.profile, self.draft_profile, version.snapshot, plan.assignment,
                                       plan.draft_assignment or [], plan.k or 1, rounds, passes)
        self.metrics.requests.labels(outcome="ok").inc()
        self.metrics.latency.labels(plan_version=str(res.plan_version)).observe(res.scaled_s)
        return res, version, predicted if math.isfinite(predicted) else plan.predicted_latency_s

    async def recover(self, dead: dict[str, tuple[str, int]]) -> None:
        """Requests found nodes not answering (`dead`: node -> its address and process count then): check every
        node now (restarting dead local workers), and re-plan at once. Requests that fail together recover
        once: a caller whose dead processes the plan in force no longer uses has nothing to do."""
        async with self._recover_lock:
            if self.client is None or not self._still_on(dead):
                return
            log.warning("requests failed: %s not answering; checking nodes", ", ".join(dead))
            await self._check_nodes(locked=True)

    def _still_on(self, dead: dict[str, tuple[str, int]]) -> bool:
        """Whether the plan in force still sends to one of the `dead` processes: the same address, and no
        worker started on that node since."""
        assert self.client is not None
        plan = self.client.plan
        hosting = set(plan.hosting_nodes())
        return any(n in hosting and plan.node(n).address == a and self._started(n) == count
                   for n, (a, count) in dead.items())

    def _started(self, node: str) -> int:
        st = self.nodes.get(node)
        return st.started if st is not None else 0

    async def _check_nodes(self, locked: bool = False) -> str | None:
        """Health of every node (dead local workers restarted); on a change, a snapshot without the down
        nodes and a re-solve at once. One at a time (the probe job and failing requests both call it)."""
        if not locked:
            async with self._recover_lock:
                return await self._check_nodes(locked=True)
        changed = await self._check_health()
        if changed is not None:
            gone = {n for n, st in self.nodes.items() if st.state == "down"}
            self.snapshot = take_snapshot(self.base, self.links, self.slowdown, gone)
            self.snapshot_id = await self._record(self._save_snapshot, self.snapshot)
            await self.resolve(changed if changed.startswith("verifier") else "node-" + changed,
                               force=changed == "restarted")
        return changed

    def record_request(self, output: str, res: RequestResult, version: Version, predicted: float) -> None:
        point = {"at": time.time(), "latency_s": res.scaled_s, "predicted_s": predicted, "version": version.number}
        self.request_log.append(point)
        self.events.publish("request", point)
        self._spawn(self._keep(self._run_record(output, res, version, predicted, datetime.now(UTC))), write=True)

    # -- history (every store call runs in a thread: SQLAlchemy is synchronous) ----------------------
    async def _record(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One history write, in a thread. A failure never stops the service: it is logged and counted (a
        record that stands alone is written with `_keep` instead, which keeps it when the database is away)."""
        if self.store is None:
            return None
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:  # noqa: BLE001 - history must never stop the service
            log.warning("history: %s failed: %s", fn.__name__, _one_line(exc))
            self.metrics.history_errors.inc()
            return None

    async def _keep(self, rec: Kept) -> Any:
        """Write a record that stands alone (a request, a probe round, a state change, a switch's end), in a
        thread; returns what the store returned, or None. When the database does not answer, the record is
        kept and written by the flush job once it does again, in order, with its own timestamps."""
        if self.store is None:
            return None
        if self._unwritten:
            self._buffer(rec)                       # behind the writes already waiting: order is kept
            return None
        try:
            return await asyncio.to_thread(write_kept, self.store, rec)
        except Exception as exc:  # noqa: BLE001 - history must never stop the service
            log.warning("history: a %s record failed: %s", rec.kind, _one_line(exc))
            self.metrics.history_errors.inc()
            if _unreachable(exc):
                self._buffer(rec)
            return None

    def _drop(self) -> None:
        """Count a kept record given up (the buffer full, or a write the database refuses for good)."""
        self.history_dropped += 1
        self.metrics.history_dropped.inc()

    def _buffer(self, rec: Kept) -> None:
        if self.settings.history_buffer == 0:         # keep none: the record is dropped and counted
            self._drop()
            return
        if len(self._unwritten) >= self.settings.history_buffer:
            self._unwritten.popleft()
            self._drop()
            self._spooled(lambda s: s.consumed(1, len(self._unwritten)))
        self._unwritten.append(rec)
        self._spooled(lambda s: s.append(rec))

    def _spooled(self, step: Callable[[spool.Spool], None]) -> None:
        """One step on the spool file; a file that cannot be written (disk full) is given up with a warning,
        and the records stay in memory only."""
        if self._spool is None:
            return
        try:
            step(self._spool)
        except OSError as exc:
            log.warning("history: spool file %s: %s; kept records are in memory only now",
                        self._spool.path or self._spool.state_dir, exc.strerror or exc)
            self._spool = None

    def _adopt_spooled(self) -> int:
        """Take the records a daemon that is gone kept in its spool file (killed during an outage): they
        join this daemon's buffer (and its spool), and the flush job writes them. Returns how many."""
        if self._spool is None or self.store is None:
            return 0
        try:
            taken = spool.adopt(self._spool.state_dir, self.store.url, self._buffer, own=self._spool.path)
        except OSError as exc:
            log.warning("history: spool files in %s: %s", self._spool.state_dir, exc.strerror or exc)
            return 0
        if taken:
            log.info("history: %d record(s) kept by a daemon that stopped before writing them; writing them", taken)
        return taken

    async def flush_history(self) -> int:
        """Write the records kept while the database was unreachable, oldest first; stop at the first
        failure (the database is still away). Returns how many were written."""
        written = 0
        gone = 0                                    # left the buffer since the spool last heard of it
        async with self._flush_lock:
            while self._unwritten and self.store is not None:
                rec = self._unwritten[0]
                try:
                    await asyncio.to_thread(write_kept, self.store, rec)
                    written += 1
                except Exception as exc:  # noqa: BLE001
                    if _unreachable(exc):
                        log.debug("history: still failing: %s", _one_line(exc))
                        break
                    log.warning("history: a kept %s record failed for good: %s", rec.kind, _one_line(exc))
                    self._drop()
                if self._unwritten and self._unwritten[0] is rec:   # else dropped meanwhile (buffer full)
                    self._unwritten.popleft()
                    gone += 1
                if gone == SPOOL_MARK_EVERY:
                    self._spooled(lambda s, n=gone: s.consumed(n, len(self._unwritten)))
                    gone = 0
            self._spooled(lambda s: s.consumed(gone, len(self._unwritten)))
        if written:
            log.info("history: %d kept record(s) written", written)
        return written

    async def roll_up(self) -> None:
        """Hourly summaries of the finished hours, and retention: raw measurement rows older than
        settings.retain_raw_s are deleted (0 keeps them all)."""
        from orchestrator.store.rollup import roll_up

        retain = self.settings.retain_raw_s
        before = datetime.now(UTC) - timedelta(seconds=retain) if retain > 0 else None
        result = await self._record(roll_up, self.store.engine, before)
        if result is not None and (any(result.raw_deleted.values()) or any(result.hours_written.values())):
            log.info("history: %s", result.line())

    def _save_snapshot(self, snapshot: NetworkState) -> int:
        return self.store.save_network(snapshot, origin="daemon")

    def _probe_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The link estimates and node states of this moment, as rows (taken now: a write may happen later)."""
        return ([{"link": key, "bandwidth_bps": est.bandwidth_bps, "latency_s": est.latency_s,
                  "kind": f"estimate:{est.method}", "samples": est.samples} for key, est in self.links.items()],
                [{"node": name, "state": st.state, "slowdown": self.slowdown.get(name)}
                 for name, st in self.nodes.items()])

    def _save_solve(self, plan: Plan, network_id: int | None, decision: Decision, trigger: str) -> tuple[int, int]:
        profile_id = self._profile_id()
        plan_id = self.store.save_plan(plan, profile_id=profile_id, network_id=network_id)
        decision_id = self.store.record_decision(
            candidate_plan_id=plan_id, current_plan_id=self.current.plan_id if self.current else None,
            network_id=network_id, trigger=trigger, applied=decision.apply, reason=decision.reason,
            current_s=decision.current_s, candidate_s=decision.candidate_s,
            gain_s=decision.gain_s if decision.current_s is not None else None, migration_s=decision.migration_s)
        return plan_id, decision_id

    def _profile_id(self) -> int:
        if self._stored_profile_id is None:
            self._save_profile()
        assert self._stored_profile_id is not None
        return self._stored_profile_id

    def _save_profile(self) -> None:
        self._stored_profile_id = self.store.save_profile(self.profile)

    def _save_application(self, plan_id: int | None, previous: int | None, version: int,
                          decision_id: int | None) -> int | None:
        if plan_id is None:
            return None
        return self.store.record_plan_application(plan_id, previous_plan_id=previous, version=version,
                                                  decision_id=decision_id)

    def _open_state(self) -> int:
        return self.store.open_daemon_state(self.model, settings=asdict(self.settings),
                                            network=self.base.model_dump(mode="json", exclude_none=True))

    def _run_record(self, output: str, res: RequestResult, version: Version, predicted: float, at: datetime) -> Kept:
        return run_record(plan_id=version.plan_id, output=output, measured_s=res.scaled_s, predicted_s=predicted,
                          breakdown=res.breakdown(scale=True), model=self.model, plan_version=version.number, at=at)

    # -- views -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cur = self.current
        plan = None if cur is None else {
            "version": cur.number, "assignment": list(cur.plan.assignment), **plan_mode(cur.plan),
            "predicted_latency_s": cur.plan.predicted_latency_s, "applied_at": cur.applied_at.isoformat()}
        return {"plan": plan, "network": self.snapshot.model_dump(mode="json", exclude_none=True),
                "nodes": [{"name": s.name, "address": s.address, "state": s.state, "pid": s.pid}
                          for s in self.nodes.values()],
                "links": {k: {"bandwidth_bps": e.bandwidth_bps, "latency_s": e.latency_s, "samples": e.samples,
                              "method": e.method} for k, e in self.links.items()},
                "decisions": list(self.decisions)[-10:], "dilation": self.dilation, "emulated": self.emulated,
                "accepting": self.accepting, "open_requests": self.open_requests, "model": self.model,
                "settings": asdict(self.settings), "resumed_from": self.resumed_from, "adopted": self.adopted,
                "draft": self.draft_model,
                "verifiers": ({n: {"address": a, "pid": self.coop.pid(n)} for n, a in self.coop.addresses.items()}
                              if self.coop is not None else {})}

    @property
    def draft_model(self) -> str | None:
        return self.draft_profile.model if self.draft_profile is not None else None


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (a driver's message can span lines and quote SQL and its values)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _unreachable(exc: BaseException) -> bool:
    """The database did not answer (a connection refused or lost, a lock held past its timeout): the write
    may succeed later. Anything else (a row the schema refuses) would fail again."""
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError, DisconnectionError, OSError, TimeoutError))
