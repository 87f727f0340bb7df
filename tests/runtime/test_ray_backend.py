"""Stages as Ray actors (runtime.ray_backend) on one local Ray cluster, a Ray node per network node, joined
by its address as `--ray-address` joins a user's cluster:
a split LLM and the split captioner (through the daemon) give exactly the unsplit outputs, activations
pass actor to actor (never through the driver), a dead actor answers UNAVAILABLE, and when a Ray node dies
the daemon re-solves without it and the request still gets the exact caption. Skipped where Ray is not
installed (the optional extra aiflow[ray])."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'aiflow[ray]')")

from orchestrator.daemon.service import Daemon  # noqa: E402
from orchestrator.daemon.settings import DaemonSettings  # noqa: E402
from orchestrator.demo import CAPTION_TOKENS, unsplit_captions, write_test_images  # noqa: E402
from orchestrator.network import NetworkState  # noqa: E402
from profiler.generate import greedy_generate  # noqa: E402
from profiler.models import load_adapter  # noqa: E402
from profiler.profile import load_profile  # noqa: E402
from runtime.backends import open_backend  # noqa: E402
from runtime.codec import Frame, encode_frame  # noqa: E402
from runtime.ray_backend import START_TRIES, LocalRayCluster, RayBackend, RayTransport, node_resource  # noqa: E402
from runtime.session import prepare_input  # noqa: E402
from runtime.transport import TransportError  # noqa: E402
from tests.runtime.conftest import adapter, network, stage_plan  # noqa: E402
from tests.runtime.test_distributed import reference_forward  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.alone]   # see the `alone` marker: Ray's fixed start wait
ROOT = Path(__file__).resolve().parents[2]
NODES = ("phone", "cloud")                   # a Ray node each: two keep the module's cluster quick to start
NEW_TOKENS = 8


@ray.remote(num_cpus=0)
class LaneSender:
    """An actor that sends as a stage does (on lanes), keeping its transport between calls."""

    def __init__(self) -> None:
        self.transport = RayTransport()

    async def probe(self, address: str) -> str:
        """"ok", or the code of the TransportError a probe to `address` raised."""
        frame = encode_frame(Frame("probe", tensor=torch.zeros(0, dtype=torch.uint8)))
        try:
            await self.transport.send(address, frame, timeout=10.0)
        except TransportError as exc:
            return exc.code
        return "ok" if self.transport.on_lanes else "not on a lane"


def test_a_failed_start_is_tried_again_and_its_processes_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's node start gives up after a fixed 30 s on a busy host: the cluster starts again, and the
    processes the failed try left (known to no Cluster object) are stopped first."""
    import psutil

    leaked: list[subprocess.Popen[bytes]] = []
    tries: list[int] = []

    def start_once(self: LocalRayCluster) -> None:
        tries.append(1)
        if len(tries) == 1:
            leaked.append(subprocess.Popen(["sleep", "60"]))
            raise RuntimeError("The current node timed out during startup.")

    monkeypatch.setattr(LocalRayCluster, "_start_once", start_once)
    c = LocalRayCluster(NODES).start()
    try:
        assert len(tries) == 2
        assert leaked[0].poll() is not None               # stopped (and reaped) by start, not by this test
        assert leaked[0].pid not in {p.pid for p in psutil.Process().children(recursive=True)}
    finally:
        leaked[0].kill()
        leaked[0].wait()
        c.close()


def test_a_start_that_keeps_failing_raises_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    tries: list[int] = []

    def start_once(self: LocalRayCluster) -> None:
        tries.append(1)
        raise RuntimeError("raylet failed")

    monkeypatch.setattr(LocalRayCluster, "_start_once", start_once)
    with pytest.raises(RuntimeError, match="raylet failed"):
        LocalRayCluster(NODES).start()
    assert len(tries) == START_TRIES


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    """A running Ray cluster this process is not connected to, as a user's own cluster would be."""
    c = LocalRayCluster(NODES).start()
    ray.shutdown()                               # the driver leaves; the cluster's nodes keep running
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def backend(cluster: LocalRayCluster) -> Iterator[RayBackend]:
    """The back-end joined to that cluster by its address (`--ray-address`); `open_backend("ray")`
    without one starts such a cluster itself (test_backends checks that path's refusals)."""
    b = open_backend("ray", nodes=NODES, ray_address=cluster.cluster.address)
    assert isinstance(b, RayBackend) and b.local is None and ray.is_initialized()
    try:
        yield b
    finally:
        b.close()
    assert not ray.is_initialized()


def test_split_llm_on_ray_equals_unsplit(backend: RayBackend, cluster: LocalRayCluster,
                                         folders: dict[str, Path]) -> None:
    ad = adapter(folders, "llama")
    n = len(ad.units())
    x = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(3))
    expect = greedy_generate(ad, x, new_tokens=NEW_TOKENS).tokens
    assert len(set(expect[0].tolist())) > 1
    stages = backend.workers(str(folders["llama"]), ["phone", "cloud"])
    addresses = stages.start()
    try:
        assert set(stages.ray_nodes.values()) == {cluster.ray_nodes[m].node_id for m in NODES}
        # phone: the embedding and the first half; cloud: the rest (the decode loop crosses both ways)
        assignment = ["phone"] * (n // 2) + ["cloud"] * (n - n // 2)
        sp = stage_plan(ad, assignment, addresses, net=network(NODES))

        async def scenario() -> dict[str, Any]:
            async with backend.client(sp, timeout_s=60) as client:
                gen = await client.generate(x, max_new_tokens=NEW_TOKENS)
                fwd = await client.forward(x)
                t = client.transport
                assert isinstance(t, RayTransport)
                return {"gen": gen, "fwd": fwd, "driver": t.sent_bytes + t.received_bytes}

        out = asyncio.run(scenario())
        assert torch.equal(out["gen"].tokens, expect)
        assert torch.equal(out["fwd"].output, reference_forward(ad, x))
        hops = out["gen"].transfer_bytes
        assert hops.get("phone->cloud", 0) > 0 and hops.get("cloud->phone", 0) > 0, hops
        # the driver sent the input and control frames and took the result: not the activations
        bytes_by_actor = {m: ray.get(stages.actors[m].transport_bytes.remote()) for m in NODES}
        assert bytes_by_actor["phone"]["sent_bytes"] >= hops["phone->cloud"]
        assert bytes_by_actor["phone"]["on_lanes"] > 0 and bytes_by_actor["cloud"]["on_lanes"] > 0

        # a stage whose actor died answers UNAVAILABLE, as a gRPC worker whose port refuses: to the driver's
        # actor call and on a lane opened while it lived
        sender = LaneSender.options(resources={node_resource("phone"): 0.01}).remote()
        assert ray.get(sender.probe.remote(addresses["cloud"])) == "ok"
        ray.kill(stages.actors["cloud"])
        assert ray.get(sender.probe.remote(addresses["cloud"]), timeout=30) == "UNAVAILABLE"
        ray.kill(sender)
        with pytest.raises(TransportError) as info:
            asyncio.run(RayTransport().health(addresses["cloud"], timeout=10))
        assert info.value.code == "UNAVAILABLE"
        assert not stages.alive("cloud") and stages.alive("phone")
    finally:
        stages.stop()


def test_daemon_on_ray_captions_exactly_and_resolves_when_a_node_dies(backend: RayBackend, cluster: LocalRayCluster,
                                                                       tmp_path: Path) -> None:
    profile = load_profile(ROOT / "examples" / "tiny-captioner.profile.json")
    # examples/daemon.network.yaml's phone and cloud, one Wi-Fi + WAN link between them
    net = NetworkState.model_validate({
        "format": "aiflow.network/v1", "source": "phone",
        "nodes": [{"name": "phone", "hardware": "phone-a78", "mem_bytes": 4.0e9, "slowdown": 3, "tier": "device"},
                  {"name": "cloud", "hardware": "h200", "mem_bytes": 1.41e11, "tier": "cloud"}],
        "links": [{"a": "phone", "b": "cloud", "bandwidth_bps": 2.0e7, "latency_s": 0.025}]})
    paths = [im.path for im in write_test_images(tmp_path, 2)]
    reference = unsplit_captions(load_adapter("tiny-captioner"), paths)
    ad = load_adapter("tiny-captioner")
    settings = DaemonSettings(probe_interval_s=60.0, solve_interval_s=60.0, drain_s=5.0)
    daemon = Daemon("tiny-captioner", net, profile, ad, settings=settings, dilation=1.0, backend=backend)

    def pixels(p: Path) -> torch.Tensor:
        return prepare_input(ad, str(p))

    async def scenario() -> None:
        await daemon.start()
        try:
            assert daemon.current is not None
            first = list(daemon.current.plan.assignment)
            assert len(set(first)) > 1, first                           # split across Ray nodes
            for p, want in zip(paths, reference, strict=True):
                res, _, _ = await daemon.run_request(pixels(p), CAPTION_TOKENS)
                assert ad.decode_tokens([int(t) for t in res.tokens[0]]) == want
            victim = next(m for m in first if m != net.source)
            await asyncio.to_thread(cluster.remove, victim)
            res, version, _ = await daemon.run_request(pixels(paths[0]), CAPTION_TOKENS)
            assert ad.decode_tokens([int(t) for t in res.tokens[0]]) == reference[0]
            assert victim not in version.plan.assignment and version.number > 1
            assert daemon.nodes[victim].state == "down"
        finally:
            await daemon.close()

    asyncio.run(scenario())
