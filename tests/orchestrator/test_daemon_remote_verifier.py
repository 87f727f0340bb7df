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


def start_verifier() -> tuple[subprocess.Popen, str]:
    """`aiflow verifier` for the edge, on loopback; (process, its READY address)."""
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "verifier", "--name", "edge",
                             "--model", "captioner-target", "--token", TOKEN, "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("READY "):
        proc.kill()
        raise AssertionError(f"aiflow verifier did not start: {line!r}")
    return proc, line.split()[1]


def test_daemon_verifies_on_a_remote_verifier(tmp_path: Path) -> None:
    paths = [im.path for im in write_test_images(tmp_path, 3)]
    target = load_adapter("captioner-target")
    reference = unsplit_captions(target, paths)
    worker = LocalWorkers("captioner-target", ["edge"], token=TOKEN, threads=1)
    verifier, verifier_address = start_verifier()
    try:
        net = family_network(address=worker.start()["edge"], verifier_address=verifier_address)
        daemon = Daemon("captioner-target", net, load_profile(TARGET), target, token=TOKEN,
                        settings=DaemonSettings(probe_interval_s=1.0, solve_interval_s=30.0, drain_s=10.0),
                        draft=(load_profile(DRAFT), load_adapter("captioner-draft")))

        async def scenario() -> list[tuple[int, str]]:
            await daemon.start()
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(daemon)),
                                             base_url="http://daemon", timeout=120) as api:
                    status = (await api.get("/v1/status")).json()
                    assert status["plan"]["mode"] == "cooperative" and status["plan"]["assignment"][-1] == "edge"
                    assert status["verifiers"]["edge"]["address"] == verifier_address
                    answers = [(await api.post("/v1/requests", json=body(p))).json() for p in paths]
                    assert daemon.coop is not None and not daemon.coop.verifiers     # none started here
                    return [(a["plan_version"], a["output"]) for a in answers]
            finally:
                await daemon.drain()
                await daemon.close()

        outputs = asyncio.run(scenario())
        assert outputs == [(1, ref) for ref in reference]
        assert verifier.poll() is None and alive(worker.pid("edge"))      # the remote ones are not the daemon's
    finally:
        worker.stop()
        verifier.terminate()
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
