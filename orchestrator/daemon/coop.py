"""How the daemon serves cooperative plans (docs/daemon.md, "Cooperative mode").

The draft runs in the daemon's process, as the source (the daemon is where requests arrive); the
target verifies in a verifier process (`python -m runtime.cooperative`) on the plan's verifier node,
started by the daemon the first time a plan verifies there and kept until the daemon stops. A plan
version is a route (runtime.cooperative.CoopRoute): `prepare` starts the verifier if needed and
checks that it answers, a request keeps the route of the version it started on, `forget` drops a
version once its last request finished. Under emulation the draft's and the verifier's steps are
paced like the split workers' (K x slowdown x the profiles' times) and messages held on the daemon's
emulated links, which the emulation API changes under running requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable

import torch

from orchestrator.network import NetworkState
from orchestrator.plan import Plan
from profiler.adapters.base import ModelAdapter
from profiler.profile import Profile
from runtime.backends import exited
from runtime.client import RequestFailed, RequestResult
from runtime.cooperative import CoopClient, CoopRoute, coop_route
from runtime.cooperative_session import pacing_from_profiles
from runtime.links import EmulatedNetwork, Emulation
from runtime.local import LocalWorkers
from runtime.transport import GrpcTransport, Tls, TransportError

log = logging.getLogger("aiflow.daemon")


class CoopServing:
    """The cooperative side of one daemon: its verifier processes, routes per plan version and requests in flight."""

    def __init__(self, model: str, target: ModelAdapter, draft: ModelAdapter, target_profile: Profile,
                 draft_profile: Profile, *, token: str | None, threads: int | None = 1,
                 host: str = "127.0.0.1", on_restart: Callable[[str], None] | None = None,
                 tls: Tls | None = None) -> None:
        self.model, self.target, self.draft = model, target, draft
        self.target_profile, self.draft_profile = target_profile, draft_profile
        self.token, self.threads, self.host = token, threads, host
        self.verifiers: dict[str, LocalWorkers] = {}
        self.addresses: dict[str, str] = {}
        self.routes: dict[int, CoopRoute] = {}
        self.in_flight: dict[int, int] = defaultdict(int)
        self.transport = GrpcTransport(token, tls=tls)      # verifiers serve TLS when the workers do
        self.network: EmulatedNetwork | None = None
        self.truth: Emulation | None = None
        self.restarts: dict[str, int] = defaultdict(int)     # node -> verifiers restarted after they died
        # node -> how many verifiers were started there: what a failed request saw (a restarted verifier can
        # get the port, so the address, of the one that died)
        self.started: dict[str, int] = defaultdict(int)
        self.retried = 0                                     # requests run again on a restarted verifier
        # remote verifiers (not started here, so not restarted here) found not answering: the daemon plans
        # no cooperative plan on them until a health check finds them back (check_unanswered)
        self.unanswered: set[str] = set()
        self._revive_lock = asyncio.Lock()
        self._on_restart = on_restart

    def pid(self, node: str) -> int | None:
        workers = self.verifiers.get(node)
        return workers.pid(node) if workers is not None else None

    def set_emulation(self, truth: Emulation | None) -> None:
        """The links and slowdowns really played (the daemon's emulation): requests under way see a change."""
        self.truth = truth
        if truth is None:
            self.network = None
        elif self.network is None:
            self.network = truth.network()
        else:
            self.network = self.network.retune(truth.nodes, truth.links, truth.dilation)

    async def prepare(self, version: int, plan: Plan, network: NetworkState) -> None:
        """Make `version` runnable: its route, and a verifier answering on its node (started here unless
        the node is remote, which the daemon cannot start a verifier on). ValueError / RequestFailed."""
        if plan.draft_assignment is None or plan.k is None:
            raise ValueError("a cooperative plan names its draft_assignment and k")
        route = coop_route(self.target, network.source, plan.assignment, plan.draft_assignment, plan.k)
        node = route.verifier
        if node not in self.addresses:
            spec = network.node(node)
            if spec.verifier_address:              # a verifier serving on that node already: used, not started
                self.addresses[node] = spec.verifier_address
        if node not in self.addresses:
            if network.node(node).address:
                raise ValueError(f"node {node} is remote and names no verifier_address: the daemon starts "
                                 "verifiers on its local nodes only")
            workers = LocalWorkers(self.model, [node], token=self.token, threads=self.threads, host=self.host,
                                   module="runtime.cooperative")
            started = await asyncio.to_thread(workers.start)
            self.verifiers[node] = workers
            self.addresses[node] = started[node]
            self.started[node] += 1
            await self.transport.forget(started[node])          # no channel left from an earlier holder of the port
        try:
            health = await self.transport.health(self.addresses[node], timeout=10.0)
        except (TimeoutError, TransportError, OSError) as exc:
            if node not in self.verifiers:
                self.unanswered.add(node)
            raise RequestFailed(f"verifier on {node} does not answer: {exc}", (node,)) from None
        if health.get("role") != "verifier" or health.get("model") != self.target.name:
            raise ValueError(f"{self.addresses[node]}: not a verifier of {self.target.name}")
        self.routes[version] = route

    def _pacing_network(self, base: NetworkState) -> NetworkState:
        """The configured network with the slowdowns really played (what the pacing follows)."""
        if self.truth is None:
            return base
        doc = base.model_dump(exclude_none=True)
        for n in doc["nodes"]:
            n["slowdown"] = self.truth.slowdown(n["name"])
        return NetworkState.model_validate(doc)

    async def generate(self, version: int, source: torch.Tensor, *, max_new_tokens: int, eos: int | None,
                       deadline: float, base: NetworkState) -> tuple[RequestResult, int, int]:
        """One request on the route of `version`: the target's greedy tokens, made cooperatively; with the
        verification rounds and draft passes it took (what its predicted latency is computed from)."""
        route = self.routes[version]
        pacing = None
        if self.network is not None and self.truth is not None:
            pacing = pacing_from_profiles(self.target_profile, self.draft_profile, self._pacing_network(base), route,
                                          self.target, self.draft, self.truth.dilation)
        self.in_flight[version] += 1
        try:
            for attempt in range(2):
                address, seen = self.addresses[route.verifier], self.started[route.verifier]
                client = CoopClient(self.draft, self.target, route, address, self.transport, network=self.network,
                                    pacing=pacing)
                try:
                    left = deadline - time.monotonic()
                    res = await asyncio.wait_for(client.generate(source, max_new_tokens=max_new_tokens, eos=eos),
                                                 timeout=max(left, 0.001))
                    break
                except TimeoutError:
                    raise RequestFailed("request timed out (cooperative)") from None
                except (RuntimeError, TransportError, OSError) as exc:
                    # a verifier that died is started again and the request run again from its start, once
                    if attempt or time.monotonic() >= deadline or not await self.revive(route.verifier, seen):
                        if route.verifier not in self.verifiers and not await self._answers(address):
                            self.unanswered.add(route.verifier)
                            log.warning("the remote verifier on %s (%s) does not answer", route.verifier, address)
                        raise RequestFailed(f"cooperative request failed on {route.verifier}: {exc}",
                                            (route.verifier,)) from None
                    self.retried += 1
        finally:
            self.in_flight[version] -= 1
        tokens = torch.tensor([res.tokens], dtype=torch.long)
        out = RequestResult(request_id="", tokens=tokens, output=None, steps=res.rounds, measured_s=res.measured_s,
                            dilation=res.dilation, emulated=self.network is not None,
                            transfer_bytes={h: int(b) for h, b in res.bytes_sent.items()}, plan_version=version)
        return out, res.rounds, res.draft_passes

    async def revive(self, node: str, seen: int) -> bool:
        """After a request failed on the `seen`-th verifier started on `node`: True when a verifier there can
        be tried again (restarted here because its process died, or already restarted since)."""
        workers = self.verifiers.get(node)
        if workers is None:
            return False
        async with self._revive_lock:
            if self.started[node] != seen:
                return True
            if not await exited(workers, node):
                return False
            old = self.addresses[node]
            try:
                self.addresses[node] = await asyncio.to_thread(workers.restart, node)
            except Exception as exc:  # noqa: BLE001 - a verifier that will not start: its requests fail
                log.warning("restarting the verifier on %s failed: %s", node, exc)
                return False
            self.started[node] += 1
            await self.transport.forget(old)
            await self.transport.forget(self.addresses[node])     # the new one may have the old one's port
            self.restarts[node] += 1
            if self._on_restart is not None:
                self._on_restart(node)
            log.warning("verifier on %s died: started again at %s", node, self.addresses[node])
            return True

    async def _answers(self, address: str, timeout: float = 2.0) -> bool:
        """Whether a verifier of this model answers a health check at `address`."""
        try:
            health = await self.transport.health(address, timeout=timeout)
        except (TimeoutError, TransportError, OSError):
            return False
        return health.get("role") == "verifier" and health.get("model") == self.target.name

    async def check_unanswered(self, timeout: float = 2.0) -> list[str]:
        """The probe's check of the remote verifiers found not answering: those that answer again (at the
        address the network names) may verify again. Returns them."""
        back = [n for n in sorted(self.unanswered) if n in self.addresses
                and await self._answers(self.addresses[n], timeout)]
        for node in back:
            self.unanswered.discard(node)
            log.warning("the remote verifier on %s answers again", node)
        return back

    async def revive_dead(self) -> list[str]:
        """The probe's check: restart every verifier whose process died; the nodes restarted."""
        dead = [(n, self.started[n]) for n in self.addresses if n in self.verifiers and not self.verifiers[n].alive(n)]
        return [n for n, seen in dead if await self.revive(n, seen)]

    def forget(self, version: int) -> None:
        self.routes.pop(version, None)
        self.in_flight.pop(version, None)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.transport.close()
        for workers in self.verifiers.values():
            await asyncio.to_thread(workers.stop)
        self.verifiers.clear()
        self.addresses.clear()

