"""Kernel-shaped links: each node in its own network namespace, each link a veth pair under `tc tbf`.

The transport's emulated links (runtime.links) work anywhere, unprivileged. Where the machine allows
it (root, `ip netns`, `tc` with tbf), a network can instead be played by the kernel:

- every node gets a namespace `aiflow-<pid>-<seq>-n<i>` with an identity address 10.213.<inst>.<i+1>/32 on
  its loopback, which its worker listens on;
- every link of the network file is a veth pair between the two namespaces (its own /30 in
  10.214.<inst>.0/24), and each end's egress is shaped by a token bucket (tbf) at the link's rate
  divided by the time dilation K (for a directed link only the a -> b end is shaped; the reverse
  carries the TCP acknowledgements);
- static routes follow the planning model's cheapest path for a 64 KiB message, with forwarding
  switched on inside the namespaces (never in the root namespace);
- the client (this process, playing the source) sits in the root namespace, joined to the source's
  namespace by an unshaped veth: the source is the device it runs on.

Kernels here have tbf and htb but no netem, so a link's one-way latency is still added in user space
by the transport (its rate is left to the kernel; see `kernel_rate` in runtime.stages.LinkSpec).
Traces cannot be replayed by a fixed tbf: a network with a trace is refused in this mode.

Everything is removed on exit, and namespaces left by a process that died are removed by the next one.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from profiler.errors import InputError
from runtime.stages import LinkSpec, NodeSpec, best_link, route

PREFIX = "aiflow-"
ROUTE_BYTES = 64 * 1024          # the message size static routes are chosen for
# A tbf bucket lets `burst` bytes pass unshaped after an idle spell, so it is kept to one full frame
# (veth MTU 1500 + Ethernet header) or 0.5 ms at the rate, whichever is larger: a message then arrives
# at most one packet or 0.5 ms early. (A 32 KB burst let a 12 KB activation through a 1 Mbit/s link
# in 0.3 ms instead of 98 ms.)
MIN_BURST_BYTES = 1600
BURST_S = 0.0005


class NetnsError(RuntimeError):
    pass


def _in_ns(ns: str | None, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `cmd` inside namespace `ns` (None: this one); a failure is a NetnsError unless `check` is off."""
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    done = subprocess.run(full, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(full)}: {done.stderr.strip() or f'exit code {done.returncode}'}")
    return done


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _in_ns(ns, "ip", *args, check=check)


def refuse_traces(links: Iterable[Any]) -> None:
    """Kernel-shaped links cannot replay a bandwidth trace: refuse a link (a network file's or a
    LinkSpec) that has one."""
    for lk in links:
        if getattr(lk, "trace", None):
            raise InputError(f"kernel links: link {lk.a}-{lk.b} replays a trace, which a fixed tbf cannot; "
                             "use the transport's emulated links for traces")


_UNAVAILABLE: list[str | None] = []
_SEQUENCE = itertools.count()     # several networks in one process get distinct names and addresses


def netns_unavailable() -> str | None:
    """Why kernel-shaped links cannot be used here, or None when they can (checked once per process)."""
    if _UNAVAILABLE:
        return _UNAVAILABLE[0]
    reason: str | None = None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        reason = "network namespaces need root"
    elif shutil.which("ip") is None or shutil.which("tc") is None:
        reason = "the ip and tc commands (iproute2) are not installed"
    else:
        probe = f"{PREFIX}{os.getpid()}-probe"
        try:
            _ip("netns", "add", probe)
            _in_ns(probe, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "8mbit", "burst", "32kb",
                   "latency", "50ms")
        except NetnsError as exc:
            reason = f"cannot create a shaped namespace: {exc}"
        finally:
            _ip("netns", "del", probe, check=False)
    _UNAVAILABLE.append(reason)
    return reason


def remove_stale_namespaces() -> list[str]:
    """Delete aiflow namespaces whose creating process is gone (a run killed before it cleaned up)."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    removed = []
    for line in listed:
        name = line.split(" ")[0]
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass
class KernelNetwork:
    """Namespaces, veth pairs, tbf and routes for `nodes` and `links`. Use as a context manager."""

    nodes: Sequence[NodeSpec]
    links: Sequence[LinkSpec]
    source: str
    dilation: float = 1.0
    namespaces: dict[str, str] = field(default_factory=dict)      # node -> namespace
    addresses: dict[str, str] = field(default_factory=dict)       # node -> identity address
    _root_links: list[str] = field(default_factory=list)
    _inst: int = 0
    _seq: int = 0

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if self.source not in names:
            raise InputError(f"kernel links: source {self.source!r} is not a node")
        if len(names) > 250 or len(self.links) > 60:       # the address plan below
            raise InputError("kernel links: at most 250 nodes and 60 links")
        refuse_traces(self.links)
        self._seq = next(_SEQUENCE)
        self._inst = (os.getpid() + 17 * self._seq) % 250 + 1

    # -- set-up and tear-down ---------------------------------------------------------------------
    def __enter__(self) -> KernelNetwork:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        reason = netns_unavailable()
        if reason:
            raise InputError(f"kernel links: {reason}")
        remove_stale_namespaces()
        used = _ip("-4", "addr", check=False).stdout + _ip("route", check=False).stdout
        if f"10.213.{self._inst}." in used or f"10.214.{self._inst}." in used:
            raise InputError(f"kernel links: 10.213.{self._inst}.0/24 or 10.214.{self._inst}.0/24 is already in use")
        try:
            self._build()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for dev in self._root_links:
            _ip("link", "del", dev, check=False)      # deleting one end removes the pair
        self._root_links.clear()
        for ns in self.namespaces.values():
            _ip("netns", "del", ns, check=False)      # removes its veth ends and routes with it
        self.namespaces.clear()

    def _build(self) -> None:
        pid, inst = os.getpid(), self._inst
        for i, node in enumerate(self.nodes):
            ns = f"{PREFIX}{pid}-{self._seq}-n{i}"
            _ip("netns", "add", ns)
            self.namespaces[node.name] = ns
            self.addresses[node.name] = f"10.213.{inst}.{i + 1}"
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("addr", "add", f"{self.addresses[node.name]}/32", "dev", "lo", ns=ns)
            _in_ns(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        # (node, link index) -> (device, address) of that node's end of the link's veth pair
        ends: dict[tuple[str, int], tuple[str, str]] = {}
        for k, lk in enumerate(self.links):
            dev_a, dev_b = f"af{inst}l{k}a", f"af{inst}l{k}b"
            ip_a, ip_b = f"10.214.{inst}.{4 * k + 1}", f"10.214.{inst}.{4 * k + 2}"
            _ip("link", "add", dev_a, "netns", self.namespaces[lk.a], "type", "veth", "peer", "name", dev_b,
                "netns", self.namespaces[lk.b])
            for node, dev, ip in ((lk.a, dev_a, ip_a), (lk.b, dev_b, ip_b)):
                ns = self.namespaces[node]
                _ip("addr", "add", f"{ip}/30", "dev", dev, ns=ns)
                _ip("link", "set", dev, "up", ns=ns)
                ends[(node, k)] = (dev, ip)
            rate = lk.bandwidth_bps / self.dilation
            for node, dev in ((lk.a, dev_a),) if lk.directed else ((lk.a, dev_a), (lk.b, dev_b)):
                burst = max(MIN_BURST_BYTES, int(rate / 8 * BURST_S))
                _in_ns(self.namespaces[node], "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                       f"{int(rate)}bit", "burst", str(burst), "limit", str(max(4 * burst, 1 << 20)))  # queue, not drop
        self._routes(ends)
        self._join_client()

    def _routes(self, ends: dict[tuple[str, int], tuple[str, str]]) -> None:
        names = [n.name for n in self.nodes]
        for src in names:
            for dst in names:
                if src == dst:
                    continue
                hops = route(self.nodes, self.links, src, dst, ROUTE_BYTES)
                if not hops:
                    continue                     # no path: the planner never sends this way
                a, b = hops[0]
                k = self.links.index(best_link(self.links, a, b, ROUTE_BYTES))
                dev, _ = ends[(a, k)]
                _, via = ends[(b, k)]
                # `src`: connections leave with the node's identity address, which every node routes to.
                # The client (root namespace, behind the source) is reached the way the source is.
                targets = [self.addresses[dst]] + ([self.client_address] if dst == self.source else [])
                for target in targets:
                    _ip("route", "add", f"{target}/32", "via", via, "dev", dev, "src", self.addresses[src],
                        ns=self.namespaces[src])

    def _join_client(self) -> None:
        """The root namespace (the client) talks to every node through the source's namespace."""
        inst, src_ns = self._inst, self.namespaces[self.source]
        root_dev, src_dev = f"af{inst}c0", f"af{inst}c1"
        root_ip, src_ip = self.client_address, f"10.213.{inst}.254"
        _ip("link", "add", root_dev, "type", "veth", "peer", "name", src_dev, "netns", src_ns)
        self._root_links.append(root_dev)
        _ip("addr", "add", f"{root_ip}/32", "peer", f"{src_ip}/32", "dev", root_dev)
        _ip("link", "set", root_dev, "up")
        _ip("addr", "add", f"{src_ip}/32", "peer", f"{root_ip}/32", "dev", src_dev, ns=src_ns)
        _ip("link", "set", src_dev, "up", ns=src_ns)
        _ip("route", "add", f"10.213.{inst}.0/24", "via", src_ip, "dev", root_dev, "src", root_ip)

    # -- workers --------------------------------------------------------------------------------
    @property
    def client_address(self) -> str:
        """The root namespace's address on the veth to the source: where workers reach the client."""
        return f"10.213.{self._inst}.253"

    def launcher(self, node: str) -> list[str]:
        """The command prefix that runs a process inside `node`'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[node]]
