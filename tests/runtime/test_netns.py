"""Kernel-shaped links: nodes in network namespaces, link rates under tc tbf (root only, else skipped)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from orchestrator.network import parse_network
from profiler.errors import InputError
from profiler.generate import greedy_generate
from runtime.netns import PREFIX, KernelNetwork, netns_unavailable
from runtime.session import run_on_network
from runtime.stages import LinkSpec, NodeSpec, links_from_network, nodes_from_network
from tests.runtime.conftest import adapter

UNAVAILABLE = netns_unavailable()
needs_netns = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"kernel-shaped links unavailable: {UNAVAILABLE}")

NET = parse_network({"format": "aiflow.network/v1", "source": "phone", "nodes": [
    {"name": "phone", "hardware": "cpu", "mem_bytes": 4e9},
    {"name": "edge", "hardware": "cpu", "mem_bytes": 4e9},
    {"name": "cloud", "hardware": "cpu", "mem_bytes": 4e9}], "links": [
    {"a": "phone", "b": "edge", "bandwidth_bps": 8e6, "latency_s": 0.002},
    {"a": "edge", "b": "cloud", "bandwidth_bps": 4e7, "latency_s": 0.002}]})


def _namespaces() -> set[str]:
    """This process's aiflow namespaces (named PREFIX<pid>-...): other test processes may hold their own."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split(" ")[0] for line in out.splitlines() if line.startswith(f"{PREFIX}{os.getpid()}-")}


def _sink(kn: KernelNetwork, node: str, port: int) -> subprocess.Popen:
    """A TCP sink in `node`'s namespace that answers with the byte count it received."""
    code = (f"import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(({kn.addresses[node]!r}, {port})); s.listen(1); print('up', flush=True)\n"
            "c,_=s.accept(); n=0\nwhile True:\n    b=c.recv(1<<16)\n    if not b: break\n    n+=len(b)\n"
            "c.sendall(str(n).encode()); c.close()\n")
    proc = subprocess.Popen([*kn.launcher(node), sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    return proc


@needs_netns
@pytest.mark.slow
def test_tbf_shapes_each_link_and_everything_is_removed_after() -> None:
    before = _namespaces()
    with KernelNetwork(nodes_from_network(NET), links_from_network(NET), "phone", dilation=2.0) as kn:
        assert set(kn.namespaces) == {"phone", "edge", "cloud"} and len(_namespaces() - before) == 3
        subnet = kn.client_address.rsplit(".", 1)[0] + "."      # 10.213.<inst>.: this network's routes
        for node in ("edge", "cloud"):          # cloud is two hops away: the thinner link sets the pace
            sink = _sink(kn, node, 9100)
            payload = b"x" * 1_000_000
            with socket.create_connection((kn.addresses[node], 9100), timeout=30) as c:
                t0 = time.perf_counter()
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                got = c.recv(64)
                took = time.perf_counter() - t0
            sink.wait(timeout=30)
            rate = 8 * len(payload) / took
            assert got == str(len(payload)).encode()
            # phone-edge is 8 Mbit/s, divided by K = 2: 4 Mbit/s, within TCP start-up and tbf burst
            assert 0.8 * 4e6 <= rate <= 1.1 * 4e6, (node, rate)
    assert _namespaces() == before
    assert subnet.startswith("10.213.")
    assert subnet not in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout


ACCEPT_ALL = ("import socket, sys\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
              "s.bind((sys.argv[1], 9300)); s.listen(16); print('up', flush=True)\n"
              "while True:\n    s.accept()[0].close()\n")


def _connects(kn: KernelNetwork, frm: str | None, host: str, port: int) -> bool:
    """Whether a TCP connection from `frm`'s namespace (None: the root namespace) to host:port opens."""
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=5).close()"
    prefix = kn.launcher(frm) if frm else []
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True).returncode == 0


@needs_netns
@pytest.mark.slow
def test_every_node_and_the_client_reach_each_other() -> None:
    """Workers call each other (and the client) in both directions, over one or two links."""
    with KernelNetwork(nodes_from_network(NET), links_from_network(NET), "phone") as kn:
        sinks = [subprocess.Popen([*kn.launcher(n), sys.executable, "-c", ACCEPT_ALL, kn.addresses[n]],
                                  stdout=subprocess.PIPE, text=True) for n in kn.namespaces]
        client = socket.socket()
        try:
            for p in sinks:
                assert p.stdout is not None and p.stdout.readline().strip() == "up"
            client.bind((kn.client_address, 0))
            client.listen(16)
            port = client.getsockname()[1]
            for frm in kn.namespaces:
                assert _connects(kn, frm, kn.client_address, port), f"{frm} -> client"
                assert _connects(kn, None, kn.addresses[frm], 9300), f"client -> {frm}"
                for to in kn.namespaces:
                    if to != frm:
                        assert _connects(kn, frm, kn.addresses[to], 9300), f"{frm} -> {to}"
        finally:
            client.close()
            for p in sinks:
                p.kill()
                p.wait()


@needs_netns
@pytest.mark.slow
def test_generation_through_namespaced_workers_equals_the_unsplit_model(folders) -> None:
    ad = adapter(folders, "gpt2")
    plan = SimpleNamespace(assignment=["phone", "edge", "cloud", "edge"], compression=None)
    prompt = "abc"
    want = greedy_generate(ad, torch.tensor([ad.encode_text(prompt)]), new_tokens=5).tokens[0].tolist()
    before = _namespaces()
    (res,) = run_on_network(str(folders["gpt2"]), NET, plan, [prompt], max_new_tokens=5, adapter=ad,
                            kernel_links=True, threads=1)
    assert res.tokens == want
    assert _namespaces() == before


def test_kernel_links_refuse_traces_and_remote_workers() -> None:
    traced = NET.with_link("phone", "edge", trace="t.tsv")
    with pytest.raises(InputError, match="replays a trace"):
        KernelNetwork(nodes_from_network(NET), [LinkSpec("phone", "edge", 1e6, trace=((0.0, 1.0),))], "phone")
    with pytest.raises(InputError, match="source 'nowhere'"):
        KernelNetwork([NodeSpec("a", "x", 1.0, None)], [], "nowhere")
    from runtime.session import _kernel_network

    with pytest.raises(InputError, match="replays a trace"):
        _kernel_network(traced, {}, 1.0)
    with pytest.raises(InputError, match="have addresses"):
        _kernel_network(NET, {"cloud": "10.0.0.1:7000"}, 1.0)
