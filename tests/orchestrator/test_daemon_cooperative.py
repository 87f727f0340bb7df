"""The daemon serving captioner-target with captioner-draft on the family's emulated network: the first
plan is cooperative (the draft proposes on the phone, the target verifies on the near edge); when the
phone-edge link's latency grows 15-fold (the daemon is not told) it re-solves to the split plan, and
back to cooperative when the link recovers. Every caption equals the target's own greedy caption,
requests in flight at a switch finish, and the mode and k are in the status and the history."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from orchestrator.daemon.api import create_app
from orchestrator.daemon.service import Daemon
from orchestrator.daemon.settings import DaemonSettings
from orchestrator.demo import unsplit_captions, write_test_images
from orchestrator.network import load_network
from orchestrator.store import Store, queries
from profiler.models import load_adapter
from profiler.profile import load_profile
from runtime.stages import dilation_factor
from tests.orchestrator.test_daemon import alive, body

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "examples" / "captioner-target.profile.json"
DRAFT = ROOT / "examples" / "captioner-draft.profile.json"
NETWORK = ROOT / "examples" / "family.network.yaml"
PROBE_S = 1.0


async def wait_for(condition: Callable[[], bool], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def test_daemon_switches_between_cooperative_and_split_as_the_link_changes(tmp_path: Path) -> None:
    paths = [im.path for im in write_test_images(tmp_path, 3)]
    target = load_adapter("captioner-target")
    reference = unsplit_captions(target, paths)
    profile, draft_profile, net = load_profile(TARGET), load_profile(DRAFT), load_network(NETWORK)
    k = dilation_factor(profile, net, profile.hardware_classes[0])
    store = Store.open(f"sqlite:///{tmp_path / 'history.db'}")
    settings = DaemonSettings(probe_interval_s=PROBE_S, solve_interval_s=4.0, drain_s=20.0)
    daemon = Daemon("captioner-target", net, profile, target, settings=settings, store=store, dilation=k,
                    draft=(draft_profile, load_adapter("captioner-draft")))
    outputs: list[tuple[int, str, str]] = []          # (plan version, caption, the target's own caption)
    spans: list[tuple[datetime, datetime, int]] = []  # (sent, answered, plan version)
    seen: list[dict] = []                             # the plan in force after each change

    async def scenario() -> None:
        await daemon.start()
        app = create_app(daemon)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://daemon",
                                     timeout=120) as api:
            async def ask(i: int) -> int:
                r = await api.post("/v1/requests", json=body(paths[i % len(paths)]))
                assert r.status_code == 200, r.text
                j = r.json()
                outputs.append((j["plan_version"], j["output"], reference[i % len(paths)]))
                t1 = datetime.now(UTC)     # sent on its plan wall_s before (the HTTP call began earlier)
                spans.append((t1 - timedelta(seconds=j["wall_s"]), t1, j["plan_version"]))
                return j["plan_version"]

            async def until_version(v: int, streams: int = 2, limit_s: float = 30.0) -> None:
                """Requests in `streams` parallel streams until one runs on plan version v."""
                deadline = time.monotonic() + limit_s

                async def stream(j: int) -> None:
                    i = j
                    while time.monotonic() < deadline and daemon.current.number < v:
                        await ask(i)
                        i += streams
                    await ask(j)                       # and one on the new plan

                await asyncio.gather(*(stream(j) for j in range(streams)))
                seen.append((await api.get("/v1/status")).json())

            status = (await api.get("/v1/status")).json()
            seen.append(status)
            assert status["draft"] == "captioner-draft"
            assert list(status["verifiers"]) == [status["plan"]["assignment"][-1]]
            for i in range(2):
                await ask(i)

            # the phone-edge link slows to 30 ms: every verification round pays it; the split plan does not
            await api.post("/v1/emulation/links", json={"a": "phone", "b": "edge", "latency_s": 0.03})
            await until_version(2)
            # and recovers: cooperative again
            await api.post("/v1/emulation/links", json={"a": "phone", "b": "edge", "latency_s": 0.002})
            await until_version(3)

            # the verifier is killed between requests and again under a request: each time it is started
            # again (by the probe, or by the failed request, which then runs again) and the captions hold
            node = seen[-1]["plan"]["assignment"][-1]
            first = daemon.coop.pid(node)
            os.kill(first, signal.SIGKILL)
            await wait_for(lambda: daemon.coop.pid(node) != first, 10 * PROBE_S)     # the probe's restart
            await asyncio.gather(*(ask(i) for i in range(2)))
            second = daemon.coop.pid(node)
            asking = asyncio.gather(*(ask(i) for i in range(2)))
            await wait_for(lambda: daemon.coop.in_flight[3] == 2, 5.0)
            await asyncio.sleep(0.2)                                   # inside their verification rounds
            os.kill(second, signal.SIGKILL)
            await asking
            assert daemon.coop.pid(node) not in (first, second, None) and not alive(first) and not alive(second)
            assert daemon.coop.restarts[node] == 2 and daemon.coop.retried >= 1 and daemon.current.number == 3
            metrics = (await api.get("/metrics")).text
            assert f'aiflow_verifier_restarts_total{{node="{node}"}} 2.0' in metrics
        pids = [s.pid for s in daemon.nodes.values()] + [daemon.coop.pid(n) for n in daemon.coop.verifiers]
        await daemon.drain()
        await daemon.close()
        assert pids and not any(alive(p) for p in pids if p is not None)

    try:
        asyncio.run(scenario())
    finally:
        if daemon.workers is not None:
            daemon.workers.stop()
        if daemon.coop is not None:
            for w in daemon.coop.verifiers.values():
                w.stop()
    modes = [(s["plan"]["version"], s["plan"]["mode"], s["plan"]["k"]) for s in seen]
    assert [m[:2] for m in modes] == [(1, "cooperative"), (2, "split"), (3, "cooperative")], modes
    assert modes[0][2] is not None and modes[1][2] is None
    assert seen[0]["plan"]["draft_assignment"] == ["phone"] * len(load_profile(DRAFT).units)
    assert "edge" not in seen[1]["plan"]["assignment"]              # split: past the phone, the cloud
    # nothing lost, nothing wrong: every caption is the target's own, on every plan version
    assert {v for v, _, _ in outputs} == {1, 2, 3}
    # requests in flight at a switch finished on the version they started on
    overlapping = [(s["plan"]["version"], v) for s in seen[1:] for t0, t1, v in spans
                   if t0 < datetime.fromisoformat(s["plan"]["applied_at"]) < t1]
    assert overlapping and all(v == new - 1 for new, v in overlapping), overlapping
    assert all(o[1] == o[2] for o in outputs), [o for o in outputs if o[1] != o[2]]
    with store.engine.connect() as c:
        stored = c.execute(text("SELECT p.mode, p.k FROM plan_applications a JOIN plans p ON p.id = a.plan_id "
                                "ORDER BY a.version")).all()
        decisions = queries.history(c, "decisions", limit=None)
        runs = c.execute(text("SELECT COUNT(*) FROM runs")).scalar()
    store.close()
    assert stored == [(m[1], m[2]) for m in modes]
    applied = [(d["mode"], d["k"]) for d in reversed(decisions) if d["applied"]]
    assert applied == stored
    assert runs == len(outputs)


class SamePortVerifiers:
    """Stands in for the LocalWorkers of one verifier whose restarts get the address it had (the port a
    dead process held is free again at once, and the kernel may hand it out again)."""

    def __init__(self) -> None:
        self.live = False
        self.restarts = 0

    def alive(self, name: str) -> bool:
        return self.live

    def restart(self, name: str) -> str:
        self.restarts += 1
        self.live = True
        return "127.0.0.1:5"


def test_a_verifier_restarted_on_its_old_port_is_not_taken_for_the_dead_one() -> None:
    """Two requests fail on the verifier that died; the first restarts it, at the same address. The second,
    which saw the dead one, must find it restarted (and try again), not take the new process at that
    address for the one that failed it (which made it wait 2 s and fail: a CI run's 502)."""
    from orchestrator.daemon.coop import CoopServing

    coop = CoopServing("captioner-target", load_adapter("captioner-target"), load_adapter("captioner-draft"),
                       load_profile(TARGET), load_profile(DRAFT), token=None)
    fake = SamePortVerifiers()
    coop.verifiers["edge"] = fake        # type: ignore[assignment]
    coop.addresses["edge"], coop.started["edge"] = "127.0.0.1:5", 1

    async def two_failed_requests() -> tuple[bool, bool, float]:
        first = await coop.revive("edge", 1)
        t0 = time.monotonic()
        second = await coop.revive("edge", 1)
        return first, second, time.monotonic() - t0

    first, second, waited = asyncio.run(two_failed_requests())
    assert first and second and fake.restarts == 1 and coop.started["edge"] == 2
    assert waited < 0.5 and coop.addresses["edge"] == "127.0.0.1:5"


def test_a_worker_restarted_on_its_old_port_is_not_taken_for_the_dead_one() -> None:
    """The split side of the same: a request that failed on a worker remembers the process (its address and
    how many were started on the node), so a plan that sends to a restarted worker at the dead one's
    address counts as moved on (the request runs again), and one that still sends to the dead process does not."""
    from types import SimpleNamespace

    net = load_network(ROOT / "examples" / "daemon.network.yaml")
    daemon = Daemon("tiny-captioner", net, load_profile(ROOT / "examples" / "tiny-captioner.profile.json"),
                    load_adapter("tiny-captioner"))
    daemon.nodes["edge"].address = "127.0.0.1:5"
    nodes = {"edge": SimpleNamespace(address="127.0.0.1:5")}
    daemon.client = SimpleNamespace(plan=SimpleNamespace(hosting_nodes=lambda: ["edge"], node=nodes.__getitem__))
    dead = {"edge": ("127.0.0.1:5", daemon.nodes["edge"].started)}
    assert daemon._still_on(dead)                                   # the dead process: still used
    daemon.nodes["edge"].started += 1                               # restarted (as _restart does), same port
    assert not daemon._still_on(dead)
