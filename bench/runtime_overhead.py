"""What the runtime costs and how well it plays a network: per-hop overhead, link throughput, measured vs predicted.

    python -m bench.runtime_overhead [--quick] [--requests 5] [--profile examples/tiny-captioner.profile.json]

1. Per-hop overhead on loopback for a small activation ([1, 1, 64] float32): the round trip of one
   frame to a gRPC endpoint that decodes it and acks (codec + transport), and the added latency per
   extra hop of a real pipeline (tiny-gpt2 forward pass, all units on one worker vs alternating
   between two; in-process workers, no emulation).
2. Throughput of a large activation (8 MiB) through an emulated link followed by the real gRPC
   send, as a fraction of the link's rate.
3. Measured end-to-end latency against the plan's prediction (orchestrator.costmodel.evaluate) on a
   three-tier network (phone-a78 device, jetson-orin-nano edge, h200 cloud, hardware classes of the
   profile) at three device-edge bandwidths: the tiny-captioner architecture, planned by
   orchestrator.planner.solve, run by three worker processes with emulated links and time dilation.

Writes bench/results/runtime_overhead.json and .md; prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.results_io import write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SMALL = (1, 1, 64)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# -- 1. per-hop overhead ---------------------------------------------------------------------------------
async def rpc_round_trip(n: int) -> dict[str, float]:
    from runtime.codec import Frame, ack_frame, decode_frame, encode_frame
    from runtime.transport import FrameServer, GrpcTransport

    async def handler(data: bytes) -> list[bytes]:
        f = decode_frame(data)
        return [ack_frame(f.request_id)]

    server = FrameServer(handler, lambda: {"ok": True}, token="t")
    address = await server.start("127.0.0.1:0")
    transport = GrpcTransport("t")
    x = torch.randn(*SMALL)
    times, codec = [], []
    for i in range(n + 100):
        t0 = time.perf_counter()
        data = encode_frame(Frame("data", "r", 1, "decode", 1, i, i, x))
        decode_frame(data)
        t1 = time.perf_counter()
        await transport.send(address, data)
        t2 = time.perf_counter()
        if i >= 100:
            codec.append(t1 - t0)
            times.append(t2 - t1)
    await transport.close()
    await server.stop()
    from runtime.overheads import socket_round_trip
    floor = socket_round_trip(len(data), repeats=n)     # the same bytes over a plain TCP socket
    return {"rpc_median_ms": 1e3 * statistics.median(times), "rpc_p90_ms": 1e3 * pct(times, 0.9),
            "codec_median_ms": 1e3 * statistics.median(codec), "frame_bytes": len(data),
            "socket_floor_ms": 1e3 * floor}


async def pipeline_hops(n: int) -> dict[str, float]:
    """The pipeline's extra time per hop, and hop_s / pass_s as the profile stores them (runtime.overheads)."""
    from runtime.overheads import derive, pipeline_costs

    c = await pipeline_costs(n)
    t1, t2, hops = c["single_s"], c["alternating_s"], c["cuts"] + c["result_hops"]
    hop_s, request_s, pass_s = derive(c)
    return {"single_ms": 1e3 * t1, "alternating_ms": 1e3 * t2, "extra_hops": hops, "per_hop_ms": 1e3 * (t2 - t1) / hops,
            "hop_s_ms": 1e3 * hop_s, "pass_s_ms": 1e3 * pass_s, "request_s_ms": 1e3 * request_s}


# -- 2. throughput of a large activation ------------------------------------------------------------------
async def link_throughput(rates_bps: list[float], nbytes: int) -> list[dict[str, float]]:
    from runtime.codec import Frame, decode_frame, encode_frame
    from runtime.links import EmulatedNetwork, sleep_until
    from runtime.stages import LinkSpec, NodeSpec
    from runtime.transport import FrameServer, GrpcTransport

    async def handler(data: bytes) -> list[bytes]:
        decode_frame(data)
        return []

    server = FrameServer(handler, lambda: {"ok": True})
    address = await server.start("127.0.0.1:0")
    transport = GrpcTransport()
    x = torch.randn(nbytes // 4)
    rows = []
    for rate in rates_bps:
        net = EmulatedNetwork((NodeSpec("a"), NodeSpec("b")), (LinkSpec("a", "b", rate, 0.0),))
        data = encode_frame(Frame("data", tensor=x))
        await transport.send(address, data)              # warm the channel
        took = []
        for _ in range(3):
            # as a worker sends: pace the emulated link (handed to the transport a real send's time before
            # the end), send, the receiver waits for the arrival
            t0 = time.perf_counter()
            arrival, _ = await net.pace("a", "b", len(data), t0)
            await transport.send(address, data)
            await sleep_until(arrival)
            took.append(time.perf_counter() - t0)
        t = statistics.median(took)
        rows.append({"link_mbps": rate / 1e6, "bytes": len(data), "seconds": t,
                     "achieved_mbps": 8 * len(data) / t / 1e6, "fraction": 8 * len(data) / t / rate})
    await transport.close()
    await server.stop()
    return rows


# -- 3. measured vs predicted ---------------------------------------------------------------------------
def captioner_folder(tmp: Path) -> str:
    """The built-in tiny-captioner if installed, else its architecture (random-init) in a temp folder."""
    if (ROOT / "profiler" / "builtin" / "tiny-captioner" / "config.json").is_file():
        return "tiny-captioner"
    from profiler.captioner.model import build_model
    from profiler.captioner.tokenizer import build_tokenizer
    tok = build_tokenizer()
    model = build_model(tok)
    folder = tmp / "tiny-captioner"
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def three_tier(phone_edge_bps: float) -> Any:
    from orchestrator.network import parse_network
    return parse_network({"format": "aiflow.network/v1", "source": "phone", "nodes": [
        {"name": "phone", "hardware": "phone-a78", "mem_bytes": 8e9, "tier": "device"},
        {"name": "edge", "hardware": "jetson-orin-nano", "mem_bytes": 8e9, "tier": "edge"},
        {"name": "cloud", "hardware": "h200", "mem_bytes": 1.41e11, "tier": "cloud"}], "links": [
        {"a": "phone", "b": "edge", "bandwidth_bps": phone_edge_bps, "latency_s": 0.005},
        {"a": "edge", "b": "cloud", "bandwidth_bps": 1e9, "latency_s": 0.01}]})


def with_decode_repeat(profile: Any, repeat: int) -> Any:
    phases = [p.model_copy(update={"repeat": repeat}) if p.name == "decode" else p for p in profile.phases]
    return profile.model_copy(update={"phases": phases})


def end_to_end(profile_path: Path, bandwidths: list[float], requests: int, local_hw: str) -> list[dict[str, Any]]:
    from orchestrator.costmodel import evaluate
    from orchestrator.planner import PlanOptions, solve
    from orchestrator.planner.baselines import memory_proportional, single_node
    from profiler.adapters.base import InputSpec
    from profiler.models import load_adapter
    from profiler.profile import load_profile
    from runtime.client import run_requests
    from runtime.local import LocalWorkers
    from runtime.session import make_stage_plan
    from runtime.stages import dilation_factor

    profile = load_profile(profile_path)
    strategies = [("optimal", lambda p, n: solve(p, n, PlanOptions())),
                  ("cloud-only", lambda p, n: single_node(p, n, "cloud")),
                  ("memory-proportional", memory_proportional)]
    new_tokens = int(profile.input.get("new_tokens", 16))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = captioner_folder(Path(tmp))
        ad = load_adapter(model)
        gen = torch.Generator().manual_seed(0)
        size = int(profile.input.get("image_size", 64))
        sources = [torch.rand(1, 3, size, size, generator=gen) for _ in range(requests)]
        with LocalWorkers(model, ["phone", "edge", "cloud"], threads=1) as workers:
            version = 0
            for bw, (strategy, make) in itertools.product(bandwidths, strategies):
                version += 1
                net = three_tier(bw)
                plan = make(profile, net)
                k = dilation_factor(profile, net, local_hw)
                sp = make_stage_plan(ad, net, plan, addresses=workers.addresses, profile=profile, emulate=True,
                                     dilation=k, version=version)
                results = asyncio.run(run_requests(sp, sources, max_new_tokens=new_tokens, eos=None,
                                                   token=workers.token, controller_token=workers.controller_token))
                steps = results[0].steps
                ev = evaluate(with_decode_repeat(profile, steps - 1), net, plan.assignment)
                scaled = [r.scaled_s for r in results]
                comp = {n: statistics.median(r.compute_s.get(n, 0.0) / k for r in results) for n in ev.compute_s}
                link = {h: statistics.median(r.transfer_s.get(h, 0.0) / k for r in results) for h in ev.transfer_s}
                rows.append({
                    "phone_edge_mbps": bw / 1e6, "strategy": strategy, "assignment": plan.assignment,
                    "dilation": k, "steps": steps,
                    "predicted_s": ev.latency_s,
                    "measured_raw_median_s": statistics.median(r.measured_s for r in results),
                    "measured_scaled_median_s": statistics.median(scaled), "measured_scaled_p90_s": pct(scaled, 0.9),
                    "ratio": statistics.median(scaled) / ev.latency_s,
                    "overrun_raw_s": statistics.median(r.overrun_s for r in results),
                    "compute_measured_s": comp, "compute_predicted_s": ev.compute_s,
                    "transfer_measured_s": link, "transfer_predicted_s": ev.transfer_s,
                    "phases": [p.name for p in ad.phases(InputSpec())]})
    return rows


def stretch_class(profile_path: Path) -> str:
    """The class K is computed from: this machine's class in the profile, else (a profile measured on
    another CPU, as the shipped example is) its first measured class, said on stderr."""
    from profiler.hardware import hardware_class, local_key
    from profiler.profile import load_profile

    profile = load_profile(profile_path)
    here = local_key(profile.hardware, profile.hardware_classes, hardware_class())
    if here in profile.hardware_classes:
        return here
    measured = [hw for hw in profile.hardware_classes if profile.units[0].source.get(hw, "measured") == "measured"]
    print(f"runtime_overhead: {profile_path.name} has no latencies for this machine's class {here}; "
          f"K is computed from {measured[0]} (give --local-hardware to choose)", file=sys.stderr)
    return measured[0]


def markdown(res: dict[str, Any]) -> str:
    o = res["overhead"]
    p = res["pipeline"]
    lines = ["### Per-hop overhead (loopback, [1, 1, 64] float32)", "",
             "| measure | median | p90 |", "|---|---:|---:|",
             f"| encode + decode of one frame ({o['frame_bytes']} bytes) | {o['codec_median_ms']:.3f} ms | |",
             f"| gRPC round trip of one frame (decode + ack) | {o['rpc_median_ms']:.3f} ms "
             f"| {o['rpc_p90_ms']:.3f} ms |",
             f"| raw TCP socket round trip of the same {o['frame_bytes']} bytes (the floor: echo thread, "
             f"no framing, no RPC) | {o['socket_floor_ms']:.3f} ms | |",
             f"| added latency per extra hop in a pipeline (tiny-gpt2 forward, {p['extra_hops']:.0f} extra hops: "
             f"{p['single_ms']:.2f} -> {p['alternating_ms']:.2f} ms; the receiver's pass included) "
             f"| {p['per_hop_ms']:.3f} ms | |",
             f"| `hop_s` as the profile stores it (the same, less the pass a cut starts) | {p['hop_s_ms']:.3f} ms | |",
             f"| `pass_s`, every pass a worker runs | {p['pass_s_ms']:.3f} ms | |", "",
             "### Large activation through an emulated link", "",
             "| link | frame | time | achieved | of link rate |", "|---:|---:|---:|---:|---:|"]
    for r in res["throughput"]:
        lines.append(f"| {r['link_mbps']:.0f} Mbit/s | {r['bytes'] / 2**20:.1f} MiB | {r['seconds']:.3f} s | "
                     f"{r['achieved_mbps']:.1f} Mbit/s | {100 * r['fraction']:.1f}% |")
    if res.get("end_to_end"):
        lines += ["", "### Measured vs predicted (three-tier network, tiny-captioner architecture)", "",
                  "| phone-edge | strategy | plan (p/e/c per unit) | K | predicted | measured / K (median) | p90 "
                  "| ratio | raw measured |",
                  "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in res["end_to_end"]:
            plan = ",".join(n[0] for n in r["assignment"])
            lines.append(f"| {r['phone_edge_mbps']:.0f} Mbit/s | {r['strategy']} | {plan} | {r['dilation']:.2f} | "
                         f"{r['predicted_s']:.4f} s | {r['measured_scaled_median_s']:.4f} s | "
                         f"{r['measured_scaled_p90_s']:.4f} s | {r['ratio']:.3f} | "
                         f"{r['measured_raw_median_s']:.3f} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.runtime_overhead")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no end-to-end part")
    ap.add_argument("--requests", type=int, default=5, help="requests per bandwidth in the end-to-end part")
    ap.add_argument("--profile", type=Path, default=ROOT / "examples" / "tiny-captioner.profile.json")
    ap.add_argument("--local-hardware", default=None, help="this machine's class in the profile (default: detected)")
    ap.add_argument("--bandwidths", default="5,20,100", help="phone-edge Mbit/s values")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for runtime_overhead.{json,md}")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    n = 200 if a.quick else 1000
    res: dict[str, Any] = {"machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                                       "torch": torch.__version__}}
    res["overhead"] = asyncio.run(rpc_round_trip(n))
    res["pipeline"] = asyncio.run(pipeline_hops(50 if a.quick else 200))
    res["throughput"] = asyncio.run(link_throughput([1e8, 1e9], 8 << 20))
    if not a.quick:
        local_hw = a.local_hardware or stretch_class(a.profile)
        bws = [float(b) * 1e6 for b in a.bandwidths.split(",")]
        res["end_to_end"] = end_to_end(a.profile, bws, a.requests, local_hw)
    md = markdown(res)
    write_results(a.out, "runtime_overhead", res, md, indent=2)
    print(md)


if __name__ == "__main__":
    main()
