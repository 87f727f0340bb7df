"""Stages as Ray actors: the Ray implementation of "how a stage is reached" (runtime.backends).

- Each network node is a Ray node that offers the custom resource `aiflow.node/<name>`; the node's stage
  is one `StageHost` actor that asks for 0.01 of it, so Ray places it there and nowhere else. The actor
  holds an unchanged runtime.worker.Worker (plans, request state, compute, emulation, forwarding); only
  the transport differs.
- `RayTransport` is the runtime.transport.Transport of actors, answered with the same ack/error frames a
  gRPC worker answers. Addresses are `ray:<actor name>` (named actors in the `aiflow` namespace). From one
  actor to another (stage to stage, stage to inbox) a small frame goes on a lane (runtime.ray_lanes: a
  pair of Ray shared-memory channels opened with the first frame and kept, about half an actor call's
  cost); a frame from the driver is one direct actor call, `StageHost.handle(frame) -> frames`. A frame
  of `BY_REF_BYTES` or more is `ray.put` by the sender and passed by object reference in an actor call:
  Ray moves it from the sender's object store to the receiver's, never through the driver.
- Results come back to the driver through a small `ReplyInbox` actor on the driver's Ray node: the
  request's reply address names it, the last stage calls it like any stage, and the driver long-polls it
  (`RayClient`). Only inputs, control frames and results cross the driver (`RayTransport.sent_bytes` /
  `received_bytes` count them).
- A stage whose actor died (its process or its Ray node gone; a lane learns it from a call its receiver
  answers only when it closes) raises `TransportError(..., "UNAVAILABLE")`,
  the code a gRPC worker whose port refuses gives, so the client fails the request naming the node and
  the daemon re-solves without it.
- `LocalRayCluster` starts a Ray cluster on this machine with one Ray node per network node
  (ray.cluster_utils.Cluster) when no `--ray-address` is given, and shuts it down on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any

import psutil
import ray
import ray.exceptions
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from runtime.backends import Backend, BackendError
from runtime.client import Client
from runtime.local import WorkerStartError
from runtime.ray_lanes import Lane, LaneBroken, LaneHost, connect
from runtime.stages import StagePlan
from runtime.transport import DEFAULT_TIMEOUT_S, Tls, Transport, TransportError

NAMESPACE = "aiflow"
SCHEME = "ray:"
RESOURCE_PREFIX = "aiflow.node/"
PIN_UNITS = 0.01                    # what a stage asks of its node's resource (the node offers 1)
BY_REF_BYTES = 100 * 1024           # frames at least this large travel as object references
INBOX_POLL_S = 1.0                  # how long one long-poll of the reply inbox waits for a frame
OBJECT_STORE_BYTES = 256 * 1024 * 1024   # per Ray node of a local cluster
GCS_START_S = 120                   # how long a local cluster waits for its GCS server to start
START_TRIES = 3                     # starts of a local cluster before its error is the user's

log = logging.getLogger("aiflow.ray")


def node_resource(node: str) -> str:
    """The custom resource that marks the Ray node of network node `node`."""
    return f"{RESOURCE_PREFIX}{node}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class _NoLane(Exception):
    """A lane could not be opened for a reason other than its receiver's death."""


class RayTransport(Transport):
    """Frames to stages (and reply inboxes) that are Ray actors: from an actor, a small frame goes on the
    lane to its receiver (runtime.ray_lanes); a large one, or any frame from the driver, by a direct actor
    call. `use_lanes=False` sends every frame by actor call (the benchmark's comparison)."""

    def __init__(self, namespace: str = NAMESPACE, by_ref_bytes: int = BY_REF_BYTES, use_lanes: bool = True) -> None:
        self.namespace = namespace
        self.by_ref_bytes = by_ref_bytes
        self.use_lanes = use_lanes
        self._handles: dict[str, Any] = {}
        self._lanes: dict[str, asyncio.Future[Lane]] = {}
        self._in_actor: bool | None = None   # known at the first send: only an actor can read a lane's replies
        self.sent_bytes = 0              # frame bytes this process handed to other actors (by value or by ref)
        self.received_bytes = 0          # reply frame bytes it got back
        self.by_ref = 0                  # frames sent as object references
        self.on_lanes = 0                # frames sent on lanes

    def _handle(self, address: str) -> Any:
        handle = self._handles.get(address)
        if handle is None:
            if not address.startswith(SCHEME):
                raise TransportError(address, "INVALID_ARGUMENT", "not a Ray stage address (ray:NAME)")
            try:
                handle = ray.get_actor(address[len(SCHEME):], namespace=self.namespace)
            except ValueError:
                raise TransportError(address, "UNAVAILABLE", "no such actor (gone or never started)") from None
            self._handles[address] = handle
        return handle

    async def _call(self, address: str, method: str, arg: Any, timeout: float) -> Any:
        handle = self._handle(address)
        try:
            async with asyncio.timeout(timeout):
                return await getattr(handle, method).remote(arg)
        except TimeoutError:
            raise TransportError(address, "DEADLINE_EXCEEDED", f"no reply within {timeout:g} s") from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            self._forget(address)
            raise TransportError(address, "UNAVAILABLE", f"actor died: {_one_line(exc)}") from None
        except ray.exceptions.RayError as exc:
            raise TransportError(address, "UNKNOWN", _one_line(exc)) from None

    async def send(self, address: str, frame: bytes, *, timeout: float = DEFAULT_TIMEOUT_S) -> list[bytes]:
        data = bytes(frame)
        self.sent_bytes += len(data)
        if len(data) >= self.by_ref_bytes:
            self.by_ref += 1
            replies = await self._call(address, "handle", ray.put(data), timeout)   # Ray copies it store to store
        elif self._lanes_usable():
            replies = await self._send_on_lane(address, data, timeout)
        else:
            replies = await self._call(address, "handle", data, timeout)            # inlined in the call
        self.received_bytes += sum(len(r) for r in replies)
        return replies

    def _lanes_usable(self) -> bool:
        if self._in_actor is None:
            self._in_actor = ray.get_runtime_context().get_actor_id() is not None
        return self.use_lanes and self._in_actor

    async def _lane(self, address: str, timeout: float) -> Lane:
        """The lane to `address`, opened on first use (concurrent first sends share one opening)."""
        pending = self._lanes.get(address)
        if pending is None or (pending.done() and (pending.cancelled() or pending.exception() is not None)):
            pending = self._lanes[address] = asyncio.ensure_future(connect(address, self._handle(address)))
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(pending)
        except TimeoutError:
            raise TransportError(address, "DEADLINE_EXCEEDED", f"no lane within {timeout:g} s") from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            self._forget(address)
            raise TransportError(address, "UNAVAILABLE", f"actor died: {_one_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - channels are a developer API of Ray: any other failure means none
            self._lanes.pop(address, None)
            raise _NoLane(_one_line(exc)) from None

    async def _send_on_lane(self, address: str, data: bytes, timeout: float) -> list[bytes]:
        try:
            lane = await self._lane(address, timeout)
        except _NoLane as exc:
            # a Ray whose channels do not open so (another version): every frame goes by actor call instead
            log.warning("no lane to %s (%s); sending by actor call from now on", address, exc)
            self.use_lanes = False
            return await self._call(address, "handle", data, timeout)
        self.on_lanes += 1
        try:
            return await lane.send(data, timeout)
        except TimeoutError:
            raise TransportError(address, "DEADLINE_EXCEEDED", f"no reply within {timeout:g} s") from None
        except LaneBroken as exc:
            self._forget(address)
            raise TransportError(address, "UNAVAILABLE", f"actor died: {exc}") from None

    def _forget(self, address: str, dead: bool = True) -> None:
        """Drop what this transport holds of a stage (that died, unless `dead` is false): handle and lane."""
        self._handles.pop(address, None)
        pending = self._lanes.pop(address, None)
        if pending is not None and pending.done() and not pending.cancelled() and pending.exception() is None:
            lane = pending.result()
            if dead:
                lane.fail(RuntimeError("the receiver died"))     # a dead receiver is told nothing
            else:
                lane.close()

    async def health(self, address: str, *, timeout: float = 5.0) -> dict[str, Any]:
        return await self._call(address, "health", None, timeout)

    async def close(self) -> None:
        for address in list(self._lanes):
            self._forget(address, dead=False)
        self._handles.clear()


class _LaneReceiver:
    """What an actor that frames are sent to offers the senders' lanes (runtime.ray_lanes.connect)."""

    lanes: LaneHost

    async def node_id(self, _: Any = None) -> str:
        return ray.get_runtime_context().get_node_id()

    async def open_lane(self, inbound: Any, sender: Any, sender_node: str) -> tuple[int, Any]:
        return await self.lanes.open(inbound, sender, sender_node)

    async def watch_lane(self, key: int) -> None:
        await self.lanes.watch(key)

    async def close_lane(self, key: int) -> None:
        self.lanes.close_lane(key)


@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1000)
class StageHost(_LaneReceiver):
    """One network node's stage: a runtime.worker.Worker whose transport is RayTransport."""

    def __init__(self, name: str, model: str, state_timeout_s: float, release_unused: bool,
                 threads: int | None) -> None:
        import torch

        from runtime.worker import Worker

        torch.set_num_threads(threads or 1)
        self.worker = Worker(name, model, transport=RayTransport(), state_timeout_s=state_timeout_s,
                             release_unused=release_unused)
        self.lanes = LaneHost(self.worker.handle)
        self._reaper: asyncio.Task | None = None

    async def ready(self, _: Any = None) -> dict[str, Any]:
        if self._reaper is None:          # idle request state is dropped, as a gRPC worker does (Worker.start)
            self._reaper = asyncio.create_task(self.worker._reap_loop())
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    async def handle(self, frame: bytes) -> list[bytes]:
        return await self.worker.handle(frame)

    async def health(self, _: Any = None) -> dict[str, Any]:
        return self.worker.health()

    async def transport_bytes(self, _: Any = None) -> dict[str, int]:
        t = self.worker.transport
        assert isinstance(t, RayTransport)
        return {"sent_bytes": t.sent_bytes, "received_bytes": t.received_bytes, "by_ref": t.by_ref,
                "on_lanes": t.on_lanes}


@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1000)
class ReplyInbox(_LaneReceiver):
    """Where stages send a request's `result` and `error` frames; the driver takes them with `take`."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.arrived: asyncio.Event | None = None
        self.lanes = LaneHost(self.handle)

    def _event(self) -> asyncio.Event:
        if self.arrived is None:
            self.arrived = asyncio.Event()
        return self.arrived

    async def handle(self, frame: bytes | memoryview) -> list[bytes]:
        self.frames.append(bytes(frame))
        self._event().set()
        return []

    async def health(self, _: Any = None) -> dict[str, Any]:
        return {"ok": True, "client": True}

    async def take(self, wait_s: float) -> list[bytes]:
        event = self._event()
        if not self.frames:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await event.wait()
        out, self.frames = self.frames, []
        event.clear()
        return out


class RayClient(Client):
    """A runtime.client.Client whose requests reach Ray actors, with its results taken at a ReplyInbox."""

    def __init__(self, plan: StagePlan, **kwargs: Any) -> None:
        kwargs.pop("reply_listen", None)          # the inbox is the reply address
        kwargs.pop("tls", None)
        kwargs.pop("token", None)
        kwargs.pop("controller_token", None)
        kwargs["transport"] = kwargs.get("transport") or RayTransport()
        super().__init__(plan, **kwargs)
        self._inbox: Any = None
        self._poller: asyncio.Task | None = None

    async def start(self, apply: bool = True) -> None:
        name = f"inbox-{secrets.token_hex(6)}"
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._inbox = ReplyInbox.options(name=name, namespace=NAMESPACE, scheduling_strategy=here).remote()
        self.reply_address = SCHEME + name
        self._poller = asyncio.create_task(self._poll())
        if apply:
            try:
                await self.apply()
            except BaseException:
                await self.close()
                raise

    async def _ensure_replies(self, plan: StagePlan) -> None:
        """Every actor replies to the one inbox: no reply server, no route to find (a Ray address is no
        host:port)."""
        assert self.reply_address is not None, "start() names the inbox first"
        for node in plan.hosting_nodes():
            self._replies[self._address(node, plan)] = self.reply_address

    async def _poll(self) -> None:
        assert self._inbox is not None
        transport = self.transport
        while True:
            try:
                frames = await self._inbox.take.remote(INBOX_POLL_S)
            except ray.exceptions.RayError as exc:
                log.warning("the reply inbox failed: %s", _one_line(exc))
                return
            for f in frames:
                if isinstance(transport, RayTransport):
                    transport.received_bytes += len(f)
                await self._on_reply(f)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await super().close()
        if self._inbox is not None:
            with contextlib.suppress(Exception):
                ray.kill(self._inbox)
            self._inbox = None


class RayStages:
    """One StageHost actor per network node, pinned by its resource; the shape of runtime.local.LocalWorkers."""

    def __init__(self, model: str, names: Sequence[str], *, session: str, token: str | None = None,
                 threads: int | None = None, controller_token: str | None = None, state_timeout_s: float = 120.0,
                 release_unused: bool = False) -> None:
        self.model = model
        self.names = list(dict.fromkeys(names))
        self.session = session
        # kept for the interface; a Ray cluster admits its members only, there is no token to present
        self.token = token or secrets.token_hex(16)
        self.controller_token = controller_token or secrets.token_hex(16)
        self.threads = threads
        self.state_timeout_s = state_timeout_s
        self.release_unused = release_unused
        self.actors: dict[str, Any] = {}
        self.addresses: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.ray_nodes: dict[str, str] = {}       # network node -> the Ray node id its stage runs on
        self._generation: dict[str, int] = {}

    def __enter__(self) -> RayStages:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _missing(self, names: Sequence[str]) -> list[str]:
        have = ray.available_resources() | ray.cluster_resources()
        alive = {r for node in ray.nodes() if node.get("Alive") for r in node.get("Resources", {})}
        return [n for n in names if have.get(node_resource(n), 0) < PIN_UNITS or node_resource(n) not in alive]

    def _spawn(self, name: str) -> tuple[str, Any]:
        gen = self._generation.get(name, 0) + 1
        self._generation[name] = gen
        actor = f"{self.session}-{name}-{gen}"
        handle = StageHost.options(name=actor, namespace=NAMESPACE,
                                   resources={node_resource(name): PIN_UNITS}).remote(
            name, self.model, self.state_timeout_s, self.release_unused, self.threads)
        return actor, handle

    def _await(self, names: Sequence[str], pending: dict[str, tuple[str, Any]], timeout_s: float) -> None:
        """Wait for each pending stage's `ready`; a stage whose Ray node leaves the cluster meanwhile (a node
        killed without warning is dropped by the GCS some seconds later) fails at once, not at the deadline."""
        refs = {name: handle.ready.remote() for name, (_, handle) in pending.items()}
        deadline = time.monotonic() + timeout_s
        for name in names:
            while not ray.wait([refs[name]], timeout=min(1.0, max(0.01, deadline - time.monotonic())))[0]:
                if self._missing([name]):
                    raise WorkerStartError(f"stage {name}: no Ray node offers {node_resource(name)} any more")
                if time.monotonic() >= deadline:
                    raise WorkerStartError(f"stage {name} did not start in {timeout_s:g} s")
            try:
                info = ray.get(refs[name])
            except ray.exceptions.RayError as exc:
                raise WorkerStartError(f"stage {name} failed to start: {_one_line(exc)}") from None
            actor, handle = pending[name]
            self.actors[name] = handle
            self.addresses[name] = SCHEME + actor
            self.pids[name] = int(info["pid"])
            self.ray_nodes[name] = str(info["node_id"])

    def start(self, timeout_s: float = 300.0) -> dict[str, str]:
        missing = self._missing(self.names)
        if missing:
            raise WorkerStartError(f"no Ray node offers {', '.join(node_resource(n) for n in missing)}")
        pending = {name: self._spawn(name) for name in self.names}
        try:
            self._await(self.names, pending, timeout_s)
        except BaseException:
            for _, handle in pending.values():
                with contextlib.suppress(Exception):
                    ray.kill(handle)
            self.actors.clear()
            raise
        return dict(self.addresses)

    def alive(self, name: str) -> bool:
        handle = self.actors.get(name)
        if handle is None:
            return False
        try:
            ray.get(handle.health.remote(), timeout=2.0)
        except Exception:  # noqa: BLE001 - dead, unreachable or stuck: not alive for a restart's purpose
            return False
        return True

    def pid(self, name: str) -> int | None:
        return self.pids.get(name)

    def restart(self, name: str, timeout_s: float = 300.0) -> str:
        """A new actor for `name` (after its actor died); refused at once when its Ray node is gone."""
        old = self.actors.pop(name, None)
        if old is not None:
            with contextlib.suppress(Exception):
                ray.kill(old)
        if self._missing([name]):
            raise WorkerStartError(f"no Ray node offers {node_resource(name)} (the node is gone)")
        pending = {name: self._spawn(name)}
        try:
            self._await([name], pending, min(timeout_s, 60.0))
        except BaseException:
            with contextlib.suppress(Exception):
                ray.kill(pending[name][1])
            raise
        return self.addresses[name]

    def stop(self, grace_s: float = 5.0) -> None:
        actors, self.actors = self.actors, {}
        for handle in actors.values():
            with contextlib.suppress(Exception):
                ray.kill(handle)


def _child_pids() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True)}


def _stop_children_since(before: set[int], grace_s: float = 5.0) -> None:
    """Stop the processes this one started after `before` was taken (a failed Ray start's GCS, raylets
    and agents): SIGTERM, then SIGKILL for those still alive after `grace_s`."""
    new = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
    for child in new:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(new, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


class LocalRayCluster:
    """A Ray cluster on this machine with one Ray node per network node (each offering its
    `aiflow.node/<name>` resource); the first node is the head, where the driver and reply inboxes run.
    Everything binds loopback addresses."""

    def __init__(self, nodes: Sequence[str], *, object_store_bytes: int = OBJECT_STORE_BYTES) -> None:
        if not nodes:
            raise BackendError("--backend ray: a local Ray cluster needs at least one network node")
        self.nodes = list(dict.fromkeys(nodes))
        self.object_store_bytes = object_store_bytes
        self.cluster: Any = None
        self.ray_nodes: dict[str, Any] = {}
        self._saved: tuple[str | None, bool] | None = None

    def _args(self, node: str) -> dict[str, Any]:
        return {"num_cpus": 1, "resources": {node_resource(node): 1.0},
                "object_store_memory": self.object_store_bytes}

    def start(self) -> LocalRayCluster:
        if ray.is_initialized():
            raise BackendError("--backend ray: this process is already connected to a Ray cluster")
        t0 = time.perf_counter()
        # Ray waits 30 s for its GCS server to write its port; on a busy 2-core host it took longer (a CI
        # run's test suite beside other work timed out), so allow GCS_START_S unless the user set it.
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(GCS_START_S))
        for attempt in range(1, START_TRIES + 1):
            before = _child_pids()
            try:
                self._start_once()
                break
            except BaseException as exc:
                # Ray's wait for a raylet to register is a fixed 30 s (CI timed out there beside other
                # tests); a node that failed mid-start is known to no Cluster, so its processes are ours
                # to stop, before the next try or before the error (an interrupt included) goes up.
                self.close()
                _stop_children_since(before)
                if not isinstance(exc, Exception) or attempt == START_TRIES:
                    raise
                log.warning("local Ray cluster: start %d of %d failed (%s); starting it again",
                            attempt, START_TRIES, _one_line(exc))
        log.info("local Ray cluster: %d node(s) in %.1f s", len(self.nodes), time.perf_counter() - t0)
        return self

    def _start_once(self) -> None:
        from ray.cluster_utils import Cluster

        self._loopback(True)
        head = {**self._args(self.nodes[0]), "include_dashboard": False}
        self.ray_nodes = {}
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.ray_nodes[self.nodes[0]] = self.cluster.head_node
        for node in self.nodes[1:]:
            self.ray_nodes[node] = self.cluster.add_node(**self._args(node))
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING, include_dashboard=False)

    def _loopback(self, on: bool) -> None:
        """Ray binds a node's services to the address it reaches the outside by (eth0 here), and turns
        127.0.0.1 into that address; with its "local cluster" switch (the one it sets on macOS and Windows)
        every node, the GCS and the driver bind and dial 127.0.0.1 only. The environment carries the switch
        to the processes the cluster starts; the module constant to this one."""
        from ray._private import ray_constants

        key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
        if on:
            self._saved = (os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER)
            os.environ[key] = "0"
            ray_constants.ENABLE_RAY_CLUSTER = False
        elif self._saved is not None:
            env, const = self._saved
            if env is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = env
            ray_constants.ENABLE_RAY_CLUSTER = const
            self._saved = None

    def remove(self, node: str, graceful: bool = True) -> None:
        """Take the Ray node of `node` out (its stage dies with it): the kill-a-node test."""
        self.cluster.remove_node(self.ray_nodes.pop(node), allow_graceful=graceful)

    def close(self) -> None:
        try:
            if ray.is_initialized():
                ray.shutdown()
            if self.cluster is not None:
                self.cluster.shutdown()
        finally:
            self.cluster = None
            self._loopback(False)


class RayBackend(Backend):
    """Stages as Ray actors: on the cluster at `address`, else on a LocalRayCluster of `nodes`."""

    name = "ray"

    def __init__(self, nodes: Sequence[str] = (), *, address: str | None = None) -> None:
        self.session = f"s{secrets.token_hex(4)}"
        self.local: LocalRayCluster | None = None
        self._connected = False
        if address:
            if not ray.is_initialized():
                try:
                    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                             logging_level=logging.WARNING)
                except Exception as exc:  # noqa: BLE001 - any failure to join is one line for the user
                    raise BackendError(f"--ray-address {address}: {_one_line(exc)}") from None
                self._connected = True
        elif ray.is_initialized():
            pass                                    # already connected (a test's cluster): use it
        else:
            self.local = LocalRayCluster(nodes).start()

    def workers(self, model: str, names: Sequence[str], *, token: str | None = None, threads: int | None = None,
                controller_token: str | None = None, state_timeout_s: float = 120.0,
                release_unused: bool = False, host: str = "127.0.0.1") -> RayStages:
        # `host` is where gRPC workers listen; actors are reached through Ray, so it has no use here
        return RayStages(model, names, session=self.session, token=token, threads=threads,
                         controller_token=controller_token, state_timeout_s=state_timeout_s,
                         release_unused=release_unused)

    def transport(self, token: str | None = None, *, controller_token: str | None = None,
                  tls: Tls | None = None) -> RayTransport:
        return RayTransport()

    def client(self, plan: StagePlan, **kwargs: Any) -> RayClient:
        return RayClient(plan, **kwargs)

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
            self.local = None
        elif self._connected:
            ray.shutdown()
            self._connected = False
