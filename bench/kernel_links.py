"""Kernel-shaped links against the transport's emulated links: shaping accuracy and measured vs predicted.

    python -m bench.kernel_links [--requests 10] [--bandwidths 5,20,100] [--out bench/results]

Needs root and `ip netns` / `tc` (runtime.netns); elsewhere it says why and exits 2.

1. TCP through one tbf-shaped veth link (no dilation): the time of a 12 KB message (the captioner's
   raw image) after an idle spell, and the rate a 1 MiB transfer reaches, at 1, 20, 100 and 1000 Mbit/s.
2. The trained tiny-captioner on the shipped three-tier network (the demo's cached profile: this
   machine measured, the devices estimated) at several phone-edge bandwidths: edge-only and
   cloud-only (the raw image crosses the links) and best-cut (an activation does), each run twice
   through local workers under the same time dilation K, once with the transport's emulated links
   and once with every node in its own namespace and the link rates shaped by the kernel. Per run:
   the plan's prediction, the measured median (divided by K) and their ratio.

Writes OUT/kernel_links.json and OUT/kernel_links.md.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.aiflow_experiment import md_cell
from bench.results_io import write_results

ROOT = Path(__file__).resolve().parent.parent
MBIT = 1e6
SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("up", flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    head = b""
    while len(head) < 8:
        b = c.recv(8 - len(head))
        if not b:
            raise SystemExit
        head += b
    want, n = int.from_bytes(head, "big"), 0
    while n < want:
        n += len(c.recv(min(1 << 16, want - n)))
    c.sendall(b"k")
"""


def tcp_through_tbf(rates_bps: list[float]) -> list[dict[str, float]]:
    from runtime.netns import KernelNetwork
    from runtime.stages import LinkSpec, NodeSpec

    rows = []
    for rate in rates_bps:
        nodes = (NodeSpec("a", "x", 1.0, None), NodeSpec("b", "x", 1.0, None))
        with KernelNetwork(nodes, (LinkSpec("a", "b", rate, 0.0),), "a") as kn:
            sink = subprocess.Popen([*kn.launcher("b"), sys.executable, "-c", SINK, kn.addresses["b"], "9200"],
                                    stdout=subprocess.PIPE, text=True)
            try:
                assert sink.stdout is not None and sink.stdout.readline().strip() == "up"
                with socket.create_connection((kn.addresses["b"], 9200), timeout=120) as c:
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

                    def send(n: int) -> float:
                        time.sleep(0.2)                  # idle: the bucket refills
                        t0 = time.perf_counter()
                        c.sendall(n.to_bytes(8, "big") + b"x" * n)
                        c.recv(1)
                        return time.perf_counter() - t0

                    small = statistics.median(send(12_288) for _ in range(5))
                    big_n = 1 << 20 if rate >= 10 * MBIT else 1 << 17
                    big = statistics.median(send(big_n) for _ in range(3))
            finally:
                sink.kill()
                sink.wait()
        rows.append({"rate_mbps": rate / MBIT, "small_bytes": 12_288, "small_ms": 1e3 * small,
                     "small_ideal_ms": 1e3 * 8 * 12_288 / rate, "big_bytes": big_n,
                     "big_mbps": 8 * big_n / big / MBIT, "big_fraction": 8 * big_n / big / rate})
        print(f"tbf {rate / MBIT:g} Mbit/s: 12 KB in {1e3 * small:.2f} ms (ideal {1e3 * 8 * 12_288 / rate:.2f}); "
              f"{big_n >> 10} KiB at {8 * big_n / big / MBIT:.2f} Mbit/s", flush=True)
    return rows


def captioner(bandwidths: list[float], requests: int) -> list[dict[str, Any]]:
    from orchestrator.demo import PHONE_NETWORK, cached_profile, local_dilation, run_strategy, write_test_images
    from orchestrator.network import load_network
    from orchestrator.strategies import describe_assignment, strategy_plans
    from profiler.models import load_adapter

    base = load_network(PHONE_NETWORK)
    adapter = load_adapter("tiny-captioner")
    profile, path, cached = cached_profile(adapter, base)
    print(f"profile: {'cached' if cached else 'measured'} {path.name}", flush=True)
    K = local_dilation(profile, base)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = [i.path for i in write_test_images(Path(tmp), requests)]
        for bw in bandwidths:
            net = base.with_link("phone", "edge", bandwidth_bps=bw)
            for strategy in strategy_plans(profile, net, names=("edge-only", "cloud-only", "best-cut")):
                if strategy.plan is None:
                    continue
                row: dict[str, Any] = {"phone_edge_mbps": bw / MBIT, "strategy": strategy.name, "dilation": K,
                                       "placement": describe_assignment(strategy.plan.assignment)}
                for mode, kernel in (("emulated", False), ("kernel", True)):
                    run = run_strategy(strategy, "tiny-captioner", net, profile, images, dilation=K, adapter=adapter,
                                       kernel_links=kernel)
                    row["predicted_ms"] = 1e3 * run.predicted_median_s
                    row[f"{mode}_ms"] = 1e3 * run.median_s
                    row[f"{mode}_p90_ms"] = 1e3 * run.p90_s()
                    row[f"{mode}_ratio"] = run.median_s / run.predicted_median_s
                print(f"{bw / MBIT:g} Mbit/s {strategy.name:<10} {row['placement']:<22} predicted "
                      f"{row['predicted_ms']:7.1f} ms  emulated {row['emulated_ms']:7.1f} ({row['emulated_ratio']:.2f})"
                      f"  kernel {row['kernel_ms']:7.1f} ({row['kernel_ratio']:.2f})", flush=True)
                rows.append(row)
    return rows


def markdown(res: dict[str, Any]) -> str:
    out = ["# Kernel-shaped links", "", f"Command: `{res['command']}`", "",
           "## TCP through one tbf-shaped veth link (no dilation)", "",
           "| rate | 12 KB after idle | ideal | large transfer | achieved | of rate |",
           "|---:|---:|---:|---:|---:|---:|"]
    for r in res["tbf"]:
        out.append(f"| {r['rate_mbps']:g} Mbit/s | {r['small_ms']:.2f} ms | {r['small_ideal_ms']:.2f} ms | "
                   f"{r['big_bytes'] >> 10} KiB | {r['big_mbps']:.2f} Mbit/s | {100 * r['big_fraction']:.1f}% |")
    k = f" (K = {res['captioner'][0]['dilation']:.2f})" if res["captioner"] else ""
    out += ["", f"## tiny-captioner on the three-tier network{k}", "",
            "| phone-edge | strategy | placement | predicted ms | emulated links ms (ratio) | "
            "kernel links ms (ratio) |", "|---:|---|---|---:|---:|---:|"]
    for r in res["captioner"]:
        out.append(f"| {r['phone_edge_mbps']:g} Mbit/s | {r['strategy']} | {md_cell(r['placement'])} | "
                   f"{r['predicted_ms']:.1f} | {r['emulated_ms']:.1f} ({r['emulated_ratio']:.2f}) | "
                   f"{r['kernel_ms']:.1f} ({r['kernel_ratio']:.2f}) |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    from runtime.netns import netns_unavailable

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10, help="requests per strategy, bandwidth and link mode")
    ap.add_argument("--bandwidths", default="5,20,100", help="phone-edge Mbit/s values")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    reason = netns_unavailable()
    if reason:
        print(f"bench.kernel_links: kernel-shaped links are unavailable here: {reason}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    given = sys.argv[1:] if argv is None else argv
    res: dict[str, Any] = {"command": "python -m bench.kernel_links " + " ".join(given)}
    res["tbf"] = tcp_through_tbf([1 * MBIT, 20 * MBIT, 100 * MBIT, 1000 * MBIT])
    res["captioner"] = captioner([float(b) * MBIT for b in args.bandwidths.split(",")], args.requests)
    text = markdown(res)
    write_results(args.out, "kernel_links", res, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
