"""Cooperative mode with the verifier on a remote node: the network names the node's worker (`address`)
and its verifier (`verifier_address`, served by `aiflow verifier`); the daemon verifies there without
starting a verifier of its own, and every caption equals the target's own. A remote node that names no
verifier is refused in one line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from orchestrator.daemon.api import create_app
from orchestrator.daemon.coop import CoopServing
from orchestrator.daemon.service import Daemon
from orchestrator.daemon.settings import DaemonSettings
from orchestrator.demo import unsplit_captions, write_test_images
from orchestrator.network import parse_network
from profiler.models import load_adapter
from profiler.profile import load_profile
from runtime.local import LocalWorkers
from tests.orchestrator.test_daemon import alive, body

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "examples" / "captioner-target.profile.json"
DRAFT = ROOT / "examples" / "captioner-draft.profile.json"
NETWORK = ROOT / "examples" / "family.network.yaml"
TOKEN = "remote-verifier-test-token"


def family_network(**edge: str) -> object:
    doc = yaml.safe_load(NETWORK.read_text())
    for node in doc["nodes"]:
        if node["name"] == "edge":
            node.update(edge)
    return parse_network(doc)


def start_verifier(listen: str = "127.0.0.1:0") -> tuple[subprocess.Popen, str]:
    """`aiflow verifier` for the edge, on loopback; (process, its READY address)."""
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "verifier", "--name", "edge",
                             "--model", "captioner-target", "--token", TOKEN, "--threads", "1", "--listen", listen],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("READY "):
        proc.kill()
        raise AssertionError(f"aiflow verifier did not start: {line!r}")
    return proc, line.split()[1]


def test_daemon_verifies_on_a_remote_verifier_and_plans_around_it_while_it_is_dead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon verifies on the verifier the network names for a remote node, starting none of its own
    (and its probe leaves that verifier be). It cannot restart a verifier it did not start: when it dies,
    the request that found it dead is answered anyway (the daemon re-plans without verifiers there: a split
    plan, or verifying on a node of its own, as the measurements say, and runs the request again), and
    when a verifier answers at that address again the probe finds it and the daemon goes back to verifying
    there. Every caption is the target's own. (Plan versions after the
    first are not asserted: the probes' measurements may re-plan between these steps.)"""
    paths = [im.path for im in write_test_images(tmp_path, 3)]
    target = load_adapter("captioner-target")
    reference = unsplit_captions(target, paths)
    monkeypatch.setenv("AIFLOW_CONTROLLER_TOKEN", "remote-verifier-test-controller")   # split plans use the edge
    worker = LocalWorkers("captioner-target", ["edge"], token=TOKEN, threads=1,
                          controller_token="remote-verifier-test-controller")
    verifier, verifier_address = start_verifier()
    try:
        net = family_network(address=worker.start()["edge"], verifier_address=verifier_address)
        # a short window: the load of starting the verifier again on these two cores ages out of the estimates
        daemon = Daemon("captioner-target", net, load_profile(TARGET), target, token=TOKEN,
                        settings=DaemonSettings(probe_interval_s=1.0, solve_interval_s=30.0, drain_s=10.0,
                                                window_s=5.0),
                        draft=(load_profile(DRAFT), load_adapter("captioner-draft")))
        seen: dict[str, object] = {}

        async def scenario() -> None:
            nonlocal verifier
            await daemon.start()
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(daemon)),
                                             base_url="http://daemon", timeout=120) as api:
                    async def caption(path: Path) -> tuple[int, int, str, str]:
                        r = await api.post("/v1/requests", json=body(path))
                        plan = (await api.get("/v1/status")).json()["plan"]
                        edge = plan["mode"] == "cooperative" and plan["assignment"][-1] == "edge"
                        on = "edge" if edge else "not edge"                     # where it verifies, if at all
                        return r.status_code, r.json().get("plan_version"), on, r.json().get("output")

                    def verifying_on_edge() -> bool:
                        plan = daemon.current.plan
                        return plan.mode == "cooperative" and plan.assignment[-1] == "edge"

                    status = (await api.get("/v1/status")).json()
                    assert status["plan"]["mode"] == "cooperative" and status["plan"]["assignment"][-1] == "edge"
                    assert status["verifiers"]["edge"]["address"] == verifier_address
                    seen["before"] = await caption(paths[0])
                    assert daemon.coop is not None and not daemon.coop.verifiers     # none started here
                    await daemon.probe()                    # the probe's verifier check leaves a remote one be
                    assert "aiflow_job_errors_total{" not in daemon.metrics.render().decode()
                    verifier.kill()
                    verifier.wait(timeout=20)
                    seen["dead"] = await caption(paths[1])
                    seen["unanswered"] = sorted(daemon.coop.unanswered)
                    verifier, _ = start_verifier(verifier_address)          # back, at the address named
                    deadline = asyncio.get_running_loop().time() + 60
                    while not verifying_on_edge() and asyncio.get_running_loop().time() < deadline:
                        await asyncio.sleep(0.2)
                    seen["returned"] = verifying_on_edge()
                    seen["back"] = await caption(paths[2])
                    seen["switches"] = [d["trigger"] for d in daemon.decisions if d.get("switched_to")]
                    seen["triggers"] = [d["trigger"] for d in daemon.decisions]
                    seen["metrics"] = daemon.metrics.render().decode()
            finally:
                await daemon.drain()
                await daemon.close()

        asyncio.run(scenario())
        assert verifier.poll() is None and alive(worker.pid("edge"))      # the remote ones are not the daemon's
        assert seen["before"] == (200, 1, "edge", reference[0])
        assert seen["dead"][0] == 200 and seen["dead"][2:] == ("not edge", reference[1]), seen["dead"]
        assert seen["unanswered"] == ["edge"]
        assert seen["returned"] and seen["back"][0] == 200 and seen["back"][3] == reference[2], seen["back"]
        # the switch away is the verifier's doing; the way back may be the check that found it, or a later
        # re-solve (a link's measurement) when the load of the verifier's own start made it look slower then
        assert seen["switches"][:2] == ["start", "verifier-down"], seen["switches"]
        assert "verifier-up" in seen["triggers"], seen["triggers"]
        assert 'outcome="retried"' in seen["metrics"] and "aiflow_job_errors_total{" not in seen["metrics"]
    finally:
        worker.stop()
        verifier.kill()
        verifier.wait(timeout=20)


def test_a_remote_node_without_a_verifier_is_refused() -> None:
    target, draft = load_adapter("captioner-target"), load_adapter("captioner-draft")
    profile, draft_profile = load_profile(TARGET), load_profile(DRAFT)
    from orchestrator.candidate import best_plan

    net = family_network(address="127.0.0.1:1")
    plan, _ = best_plan(profile, net, draft=draft_profile)
    assert plan.mode == "cooperative" and plan.assignment[-1] == "edge"
    coop = CoopServing("captioner-target", target, draft, profile, draft_profile, token=None)
    with pytest.raises(ValueError, match="node edge is remote and names no verifier_address"):
        asyncio.run(coop.prepare(1, plan, net))
