"""Workers on other hosts: every node in its own network namespace with its own address, its worker
started there with `aiflow worker`, the controller in another namespace reaching it only by address.

Layout (one module-scoped fixture, torn down by pid and namespace): a hub namespace holds a bridge;
the `edge`, `cloud` and `phone` namespaces and a controller namespace `ctl` each hang on it by a veth
with an address in 10.215.<inst>.0/24, and so does the root namespace (where this process, the
controller of the in-process tests, lives). Nothing routes between the namespaces but that bridge,
so a worker can send a result only to an address the client advertised on it: its own loopback
would be a dead end.

The runtime's exactness tests, this way: `aiflow caption --token --reply-listen` and `aiflow run
--token`, started in the ctl namespace in the background while the other tests run (the caption
one with its own local phone worker there, which edge and cloud must reach), give the unsplit
model's captions and tokens; a split generation from this process equals the unsplit one; a wrong
token is refused; the daemon serves captions over the hosts, exactly. Root and network namespaces
are needed; elsewhere those tests skip with the reason (the address helpers are tested anyway).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from orchestrator.network import parse_network
from profiler.errors import InputError
from runtime.client import RequestFailed
from runtime.hosts import local_address_for, reply_host, split_host_port, worker_listen_host
from runtime.local import reap
from runtime.netns import PREFIX, netns_unavailable

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hosts-test-token"
UNAVAILABLE = netns_unavailable()
_skip = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"network namespaces unavailable: {UNAVAILABLE}")


def needs_netns(test: Any) -> Any:
    """Root and network namespaces, else skipped with the reason; multi-process, so marked slow."""
    return pytest.mark.slow(_skip(test))


CAPTION_ASSIGNMENT = ["phone"] * 2 + ["edge"] * 3 + ["cloud"] * 3 + ["edge"] * 2      # 10 units, 4 cuts
LLM_ASSIGNMENT = ["edge", "cloud", "edge", "cloud", "cloud"]                           # tiny-gpt2: 5 units
LLM_PROMPT = "the cat sat on"
LLM_TOKENS = 8


# -- without root: the address helpers ------------------------------------------------------------------
def test_split_and_join_host_port() -> None:
    assert split_host_port("10.0.0.1:7000") == ("10.0.0.1", 7000)
    assert split_host_port("[::1]:80") == ("::1", 80)
    assert split_host_port("::1") == ("::1", None)
    assert split_host_port("edge.example") == ("edge.example", None)
    with pytest.raises(InputError, match="expected HOST:PORT"):
        split_host_port("host:port")


def test_routed_addresses_on_loopback() -> None:
    assert local_address_for("127.0.0.1:9") == "127.0.0.1"
    assert reply_host("127.0.0.1:9") == "127.0.0.1"
    assert reply_host("127.0.0.1:9", "0.0.0.0") == "127.0.0.1"          # a wildcard: the routed address
    assert reply_host("127.0.0.1:9", "192.0.2.7") == "192.0.2.7"          # a named host is taken as given
    assert worker_listen_host([]) == "127.0.0.1"
    assert worker_listen_host(["127.0.0.1:5"], "10.1.2.3:0") == "10.1.2.3"
    assert worker_listen_host(["127.0.0.1:5"], "[::1]:0") == "[::1]"            # ready for HOST:PORT
    with pytest.raises(InputError, match="cannot resolve"):
        local_address_for("no-such-host.invalid:1")


def test_client_replies_per_routed_address_and_forgets_its_plans_on_close(folders) -> None:
    """Workers on two loopback addresses: each is told a reply address it reaches (a named --reply-listen
    host as given, a wildcard one as the routed address with the bound port); close() frees the plans."""
    import asyncio

    from runtime.client import Client
    from tests.runtime.conftest import TOKEN as WORKER_TOKEN
    from tests.runtime.conftest import adapter, running_workers, stage_plan

    ad = adapter(folders, "gpt2")
    prompt = torch.tensor([[3, 1, 4, 1, 5]])

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B")) as (workers, addresses):
            sp = stage_plan(ad, ["A", "B", "A", "B"], addresses)
            want = None
            for listen in (None, "127.0.0.1", "0.0.0.0:0"):
                async with Client(sp, token=WORKER_TOKEN, reply_listen=listen) as client:
                    got = (await client.generate(prompt, max_new_tokens=4)).tokens
                    want = got if want is None else want
                    assert torch.equal(got, want)
                    assert {r.rpartition(":")[0] for r in client._replies.values()} == {"127.0.0.1"}
                    assert len(client._servers) == 1
                    assert all(w.plans for w in workers.values())
                assert all(not w.plans for w in workers.values()), "close() left plans on the workers"
            with pytest.raises(InputError, match="expected HOST:PORT"):
                Client(sp, token=WORKER_TOKEN, reply_listen="host:port")
            with pytest.raises(InputError, match="cannot listen there"):
                async with Client(sp, token=WORKER_TOKEN, reply_listen="192.0.2.1"):
                    pass

    asyncio.run(scenario())


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_workers_on_ipv6_get_a_bracketed_reply_address(folders) -> None:
    import asyncio

    from runtime.client import Client
    from runtime.worker import Worker
    from tests.runtime.conftest import TOKEN as WORKER_TOKEN
    from tests.runtime.conftest import adapter, stage_plan

    ad = adapter(folders, "gpt2")
    prompt = torch.tensor([[3, 1, 4, 1, 5]])

    async def scenario() -> None:
        workers = {n: Worker(n, adapter=ad, token=WORKER_TOKEN) for n in ("A", "B")}
        try:
            addresses = {n: await w.start("[::1]:0") for n, w in workers.items()}
            async with Client(stage_plan(ad, ["A", "B", "A", "B"], addresses), token=WORKER_TOKEN) as client:
                got = (await client.generate(prompt, max_new_tokens=4)).tokens
                assert set(client._replies.values()) == {client.reply_address}
                assert client.reply_address is not None and client.reply_address.startswith("[::1]:")
            from profiler.generate import greedy_generate
            assert torch.equal(got, greedy_generate(ad, prompt, new_tokens=4).tokens)
        finally:
            for w in workers.values():
                await w.stop()

    asyncio.run(scenario())


# -- the hosts --------------------------------------------------------------------------------------------
def _ip(*args: str, ns: str | None = None, check: bool = True) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class Hosts:
    """The namespaces, their addresses and the workers started in them."""

    def __init__(self) -> None:
        pid = os.getpid()
        used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
        self.inst = next(i for i in [*range(pid % 200 + 20, 250), *range(20, 250)] if f"10.215.{i}." not in used)
        self.ns: dict[str, str] = {}
        self.addr: dict[str, str] = {}
        self.root_dev = f"ahr{self.inst}"
        self.procs: list[subprocess.Popen] = []
        self.workers: dict[str, str] = {}        # "model/node" -> HOST:PORT
        self.caption_cli: subprocess.Popen = None  # type: ignore[assignment]
        self.run_cli: subprocess.Popen = None  # type: ignore[assignment]

    def build(self) -> None:
        net = f"10.215.{self.inst}"
        hub = self._ns("hub")
        _ip("link", "add", "br0", "type", "bridge", ns=hub)
        _ip("link", "set", "br0", "up", ns=hub)
        for i, name in enumerate(("edge", "cloud", "ctl", "phone"), start=1):
            ns = self._ns(name)
            self.addr[name] = f"{net}.{i}"
            self._wire(f"ah{self.inst}n{i}", ns, "eth0", self.addr[name])
        # the root namespace (the in-process controller) on the same bridge
        self.addr["root"] = f"{net}.100"
        _ip("link", "add", self.root_dev, "type", "veth", "peer", "name", f"ah{self.inst}h0", "netns", hub)
        _ip("link", "set", f"ah{self.inst}h0", "master", "br0", "up", ns=hub)
        _ip("addr", "add", f"{self.addr['root']}/24", "dev", self.root_dev)
        _ip("link", "set", self.root_dev, "up")

    def _ns(self, name: str) -> str:
        ns = f"{PREFIX}{os.getpid()}-hosts-{name}"
        _ip("netns", "add", ns)
        _ip("link", "set", "lo", "up", ns=ns)
        self.ns[name] = ns
        return ns

    def _wire(self, hub_dev: str, ns: str, dev: str, address: str) -> None:
        hub = self.ns["hub"]
        _ip("link", "add", hub_dev, "type", "veth", "peer", "name", dev, "netns", ns, ns=hub)
        _ip("link", "set", hub_dev, "master", "br0", "up", ns=hub)
        _ip("addr", "add", f"{address}/24", "dev", dev, ns=ns)
        _ip("link", "set", dev, "up", ns=ns)

    def start_worker(self, node: str, model: str, where: str | None = None) -> subprocess.Popen:
        where = where or node
        env = {**os.environ, "AIFLOW_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
        env.pop("AIFLOW_CONTROLLER_TOKEN", None)
        cmd = ["ip", "netns", "exec", self.ns[where], sys.executable, "-m", "orchestrator.cli", "worker",
               "--name", node, "--model", model, "--listen", f"{self.addr[where]}:0", "--threads", "1"]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Stop every process started here by its pid (SIGTERM, then SIGKILL after a short grace: a worker has
        stopped serving by then), then remove the namespaces and the root namespace's veth."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 1.0
        for proc in self.procs:
            reap(proc, max(0.1, deadline - time.monotonic()))
        _ip("link", "del", self.root_dev, check=False)
        for ns in self.ns.values():
            _ip("netns", "del", ns, check=False)


def _ready(proc: subprocess.Popen, deadline: float) -> str:
    """The HOST:PORT a worker prints once it serves."""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return line.split()[1]
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {proc.stderr.read().strip()[-300:] if proc.stderr else ''}")
    raise RuntimeError("worker did not start in time")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    from orchestrator.demo import unsplit_captions, write_test_images
    from profiler.models import load_adapter

    paths = [im.path for im in write_test_images(tmp_path_factory.mktemp("hosts-images"), 2)]
    return paths, unsplit_captions(load_adapter("tiny-captioner"), paths)


@pytest.fixture(scope="module")
def hosts(images: tuple[list[Path], list[str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """The namespaces; edge and cloud workers of both models and the captioner's phone worker in theirs;
    and, in the background (collected by the last two tests), `aiflow caption` and `aiflow run` started
    from the ctl namespace."""
    if UNAVAILABLE is not None:
        pytest.skip(f"network namespaces unavailable: {UNAVAILABLE}")
    h = Hosts()
    try:
        h.build()
        started = {f"{m}/{n}": h.start_worker(n, m) for m in ("tiny-captioner", "tiny-gpt2") for n in ("edge", "cloud")}
        started["tiny-captioner/phone"] = h.start_worker("phone", "tiny-captioner")     # the daemon's phone
        deadline = time.monotonic() + 120
        folder = tmp_path_factory.mktemp("hosts-cli")
        for key, proc in started.items():              # each controller starts as soon as its workers serve
            h.workers[key] = _ready(proc, deadline)
            if key == "tiny-captioner/cloud":
                h.caption_cli = _start_caption_cli(h, images[0], folder)
            elif key == "tiny-gpt2/cloud":
                h.run_cli = _start_run_cli(h, folder)
        yield h
    finally:
        h.stop()


def _start_caption_cli(h: Hosts, paths: list[Path], folder: Path) -> subprocess.Popen:
    """`aiflow caption --token --reply-listen` in the ctl namespace: it reaches edge and cloud only by
    address, and the phone worker it starts itself listens on the ctl address they reach."""
    net_file, plan_file = folder / "net.json", folder / "plan.json"
    net_file.write_text(json.dumps(_network(h, "tiny-captioner")))
    plan_file.write_text(_plan_doc("tiny-captioner", CAPTION_ASSIGNMENT))
    return _in_ctl(h, ["caption", *map(str, paths), "--network", str(net_file), "--plan", str(plan_file), "--json",
                       "--token", TOKEN, "--reply-listen", h.addr["ctl"]], folder)


def _plan_doc(model: str, assignment: list[str]) -> str:
    return json.dumps({"format": "aiflow.plan/v1", "model": model, "assignment": assignment,
                       "predicted_latency_s": 0.0, "status": "heuristic", "solver": "hand"})


def _in_ctl(h: Hosts, args: list[str], folder: Path) -> subprocess.Popen:
    """An `aiflow` command in the ctl namespace (history in `folder`, no token in its environment)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIFLOW_DATABASE_URL": f"sqlite:///{folder / 'history.db'}"}
    env.pop("AIFLOW_TOKEN", None)
    cmd = ["ip", "netns", "exec", h.ns["ctl"], sys.executable, "-m", "orchestrator.cli", *args]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    h.procs.append(proc)
    return proc


def _start_run_cli(h: Hosts, folder: Path) -> subprocess.Popen:
    """`aiflow run --token` in the ctl namespace: a split LLM generation on edge and cloud, by address only."""
    (folder / "llm.net.json").write_text(json.dumps(_network(h, "tiny-gpt2")))
    (folder / "llm.plan.json").write_text(_plan_doc("tiny-gpt2", LLM_ASSIGNMENT))
    return _in_ctl(h, ["run", LLM_PROMPT, "--model", "tiny-gpt2", "--network", str(folder / "llm.net.json"),
                       "--plan", str(folder / "llm.plan.json"), "--no-emulation", "--json", "--no-record",
                       "--max-new-tokens", str(LLM_TOKENS), "--token", TOKEN], folder)


def _llm_reference() -> list[int]:
    from profiler.generate import greedy_generate
    from profiler.models import load_adapter

    ad = load_adapter("tiny-gpt2")
    return greedy_generate(ad, torch.tensor([ad.encode_text(LLM_PROMPT)]), new_tokens=LLM_TOKENS).tokens[0].tolist()


def _network(h: Hosts, model: str, phone: str | None = None) -> Any:
    """The network file (a dict) with edge and cloud at their workers' addresses; `phone` local or given."""
    return {"format": "aiflow.network/v1", "source": "phone", "nodes": [
        {"name": "phone", "hardware": "phone-a78", "mem_bytes": 4e9, **({"address": phone} if phone else {})},
        {"name": "edge", "hardware": "jetson-orin-nano", "mem_bytes": 8e9, "address": h.workers[f"{model}/edge"]},
        {"name": "cloud", "hardware": "h200", "mem_bytes": 1.41e11, "address": h.workers[f"{model}/cloud"]}],
        "links": [{"a": "phone", "b": "edge", "bandwidth_bps": 1e9, "latency_s": 0.0},
                  {"a": "edge", "b": "cloud", "bandwidth_bps": 1e9, "latency_s": 0.0}]}


@needs_netns
def test_the_controller_replies_on_the_address_that_routes_to_the_workers(hosts: Hosts) -> None:
    for address in hosts.workers.values():
        assert local_address_for(address) == hosts.addr["root"]
    assert worker_listen_host(hosts.workers.values()) == hosts.addr["root"]
    # a worker on this host too: it reaches the routed address as well, so that one is still the answer
    assert worker_listen_host([*hosts.workers.values(), "127.0.0.1:9"]) == hosts.addr["root"]


@needs_netns
def test_split_llm_over_hosts_equals_the_unsplit_model(hosts: Hosts) -> None:
    from profiler.models import load_adapter
    from runtime.session import run_on_network

    ad = load_adapter("tiny-gpt2")
    want = _llm_reference()
    net = parse_network(_network(hosts, "tiny-gpt2"))
    plan = SimpleNamespace(assignment=LLM_ASSIGNMENT, compression=None)
    (res,) = run_on_network("tiny-gpt2", net, plan, [LLM_PROMPT], max_new_tokens=LLM_TOKENS, adapter=ad,
                            emulate=False, token=TOKEN)
    assert res.tokens == want
    assert set(res.result.compute_s) == {"edge", "cloud"}


@needs_netns
def test_every_cut_batches_and_concurrency_over_hosts_equal_the_unsplit_model(hosts: Hosts) -> None:
    """Every single cut of the LLM between edge and cloud, and an alternation: all-position logits of a
    batch of 2 `torch.equal` to the unsplit model's, three concurrent generations equal to greedy_generate."""
    import asyncio

    from profiler.generate import greedy_generate
    from profiler.models import load_adapter
    from runtime.client import Client
    from runtime.session import make_stage_plan

    ad = load_adapter("tiny-gpt2")
    n = len(ad.units())
    x = torch.randint(0, ad.model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    state = ad.new_state()
    state.extra["batch"] = 2
    expect_logits = ad.run(0, n - 1, x, phase="prefill", position=0, state=state, all_logits=True)
    expect_tokens = greedy_generate(ad, x, new_tokens=6).tokens
    net = parse_network(_network(hosts, "tiny-gpt2"))
    plans = [["edge"] * k + ["cloud"] * (n - k) for k in range(1, n)] + [LLM_ASSIGNMENT]

    async def scenario() -> None:
        for version, assignment in enumerate(plans, start=1):
            sp = make_stage_plan(ad, net, SimpleNamespace(assignment=assignment, compression=None), addresses={},
                                 emulate=False, version=version)
            async with Client(sp, token=TOKEN) as client:
                fwd = await client.forward(x, all_logits=True)
                assert torch.equal(fwd.output, expect_logits), assignment
                gens = await asyncio.gather(*(client.generate(x, max_new_tokens=6) for _ in range(3)))
                assert all(torch.equal(g.tokens, expect_tokens) for g in gens), assignment

    asyncio.run(scenario())


@needs_netns
def test_a_wrong_token_is_refused_by_the_hosts(hosts: Hosts) -> None:
    from profiler.models import load_adapter
    from runtime.session import run_on_network

    net = parse_network(_network(hosts, "tiny-gpt2"))
    plan = SimpleNamespace(assignment=LLM_ASSIGNMENT, compression=None)
    # the worker refuses the stream, and the client writes nothing before a worker accepted it, so the refusal
    # arrives as UNAUTHENTICATED every time (tests/runtime/test_worker_security.py repeats it on loopback)
    with pytest.raises(RequestFailed, match="UNAUTHENTICATED"):
        run_on_network("tiny-gpt2", net, plan, [LLM_PROMPT], max_new_tokens=2, adapter=load_adapter("tiny-gpt2"),
                       emulate=False, token="not-the-token")


@needs_netns
def test_the_daemon_serves_over_the_hosts(hosts: Hosts, images: tuple[list[Path], list[str]]) -> None:
    import asyncio

    from orchestrator.daemon.service import Daemon
    from orchestrator.daemon.settings import DaemonSettings
    from profiler.models import load_adapter
    from profiler.profile import load_profile
    from runtime.session import prepare_input

    paths, reference = images
    ad = load_adapter("tiny-captioner")
    net = parse_network(_network(hosts, "tiny-captioner", phone=hosts.workers["tiny-captioner/phone"]))
    settings = DaemonSettings(probe_interval_s=30.0, solve_interval_s=60.0, drain_s=5.0)
    daemon = Daemon("tiny-captioner", net, load_profile(ROOT / "examples" / "tiny-captioner.profile.json"), ad,
                    settings=settings, token=TOKEN)

    async def scenario() -> list[str]:
        await daemon.start()
        try:
            assert daemon.workers is None          # every node is a worker on its own host
            assert daemon.current is not None and {"edge", "cloud"} & set(daemon.current.plan.assignment)
            out = []
            for p in paths:
                res, _, _ = await daemon.run_request(prepare_input(ad, str(p)), 32)
                assert res.tokens is not None
                out.append(ad.decode_tokens([int(t) for t in res.tokens[0]]))
            return out
        finally:
            await daemon.close()

    assert asyncio.run(scenario()) == reference


@needs_netns
def test_aiflow_caption_from_another_namespace(hosts: Hosts, images: tuple[list[Path], list[str]]) -> None:
    """The `aiflow caption` the fixture started in the ctl namespace: the unsplit model's captions."""
    out, err = hosts.caption_cli.communicate(timeout=120)
    assert hosts.caption_cli.returncode == 0, err[-800:]
    assert [row["caption"] for row in json.loads(out)] == images[1]


@needs_netns
def test_aiflow_run_from_another_namespace(hosts: Hosts) -> None:
    """The `aiflow run --token` the fixture started in the ctl namespace: the unsplit model's tokens."""
    out, err = hosts.run_cli.communicate(timeout=120)
    assert hosts.run_cli.returncode == 0, err[-800:]
    (row,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert row["tokens"] == _llm_reference()
    assert set(row["breakdown"]["compute_s"]) == {"edge", "cloud"}
