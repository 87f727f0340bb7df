"""The gRPC workers against the Ray actors, side by side in one run on this machine.

    python -m bench.backends [--hops 300] [--transfers 20] [--requests 10]

Both back-ends serve tiny-captioner on three nodes (phone, edge, cloud: worker processes on loopback
gRPC, or StageHost actors on a local Ray cluster with one Ray node per network node), one torch thread
each, natively (no emulated links, no dilation), so every number is the runtime's own cost.

- per hop: a 400-byte frame (a small activation's size) sent by the phone's sender to the edge's stage
  and acked, median of `--hops` sends. The sender is what a stage sends with: the transport of that
  back-end in another process (for Ray an actor pinned to the phone's Ray node, sending on its lane to
  the edge's actor, runtime.ray_lanes; for gRPC this process, on the stream a worker keeps open).
  For Ray also: the same hop with every frame by actor call (no lane), and a bare actor call between
  the two Ray nodes (no aiflow code: Ray's own floor for a call).
- transfer: 1 MiB and 8 MiB frames the same way, median of `--transfers`; rate = bytes / seconds.
  On Ray these travel as object references (ray.put by the sender, fetched by the receiver's node).
- end to end: captions of test images through the Client, median of `--requests` after a warm-up, on
  the demo plan (the planner's optimum of examples/low-end.network.yaml with the example profile) and on
  a three-way split (phone x5 | edge x3 | cloud x2, the decode loop crossing edge <-> cloud each token).
- driver bytes (Ray): what the driver's transport sent and received (inputs, control frames, results)
  against what the actors sent each other (the activations), over the end-to-end requests.

Writes bench/results/backends.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.results_io import write_results
from runtime.codec import Frame, encode_frame
from runtime.transport import Transport

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODEL = "tiny-captioner"
NODES = ("phone", "edge", "cloud")
SMALL = 400
SIZES = {"1 MiB": 1 << 20, "8 MiB": 8 << 20}
SPLIT3 = ["phone"] * 5 + ["edge"] * 3 + ["cloud"] * 2
WARMUP = 20


def probe_frame(nbytes: int) -> bytes:
    """A probe frame whose whole size is `nbytes` (the stage acks it at once)."""
    head = len(encode_frame(Frame("probe", tensor=torch.zeros(0, dtype=torch.uint8))))
    return encode_frame(Frame("probe", tensor=torch.zeros(max(0, nbytes - head), dtype=torch.uint8)))


async def time_sends(transport: Transport, address: str, sizes: dict[str, tuple[int, int]]) -> dict[str, list[float]]:
    """Seconds of each send-and-ack of a frame of each size (label -> (bytes, repeats)), after a warm-up."""
    out: dict[str, list[float]] = {}
    for label, (nbytes, repeats) in sizes.items():
        frame = probe_frame(nbytes)
        times = []
        for k in range(min(WARMUP, repeats) + repeats):
            t0 = time.perf_counter()
            await transport.send(address, frame, timeout=60.0)
            if k >= min(WARMUP, repeats):
                times.append(time.perf_counter() - t0)
        out[label] = times
    return out


def plans() -> dict[str, tuple[Any, Any]]:
    """label -> (network, plan): the demo's optimum and the three-way split."""
    from orchestrator.network import load_network
    from orchestrator.planner.result import make_plan
    from orchestrator.planner.solve import solve
    from profiler.profile import load_profile

    profile = load_profile(ROOT / "examples" / "tiny-captioner.profile.json")
    low = load_network(ROOT / "examples" / "low-end.network.yaml")
    three = load_network(ROOT / "examples" / "three-tier.network.yaml")
    return {"demo plan (low-end optimum)": (low, solve(profile, low)),
            "3-way split": (three, make_plan(profile, three, SPLIT3, status="heuristic", solver="hand"))}


def rename(network: Any, plan: Any) -> tuple[Any, list[str]]:
    """The plan's nodes played by the bench's three stages (phone, edge, cloud), in network order."""
    mapping = {n.name: NODES[i] for i, n in enumerate(network.nodes)}
    nodes = [type(n)(**{**n.model_dump(), "name": mapping[n.name]}) for n in network.nodes]
    links = [type(lk)(**{**lk.model_dump(), "a": mapping[lk.a], "b": mapping[lk.b]}) for lk in network.links]
    doc = network.model_copy(update={"nodes": nodes, "links": links, "source": mapping[network.source],
                                     "sink": mapping[network.sink] if network.sink else None})
    return doc, [mapping[a] for a in plan.assignment]


async def end_to_end(make_client: Any, addresses: dict[str, str], images: list[Path], requests: int,
                     ) -> dict[str, dict[str, Any]]:
    from profiler.models import load_adapter
    from runtime.session import make_stage_plan, prepare_input

    adapter = load_adapter(MODEL)
    sources = [prepare_input(adapter, str(p)) for p in images]
    out: dict[str, dict[str, Any]] = {}
    for version, (label, (network, plan)) in enumerate(plans().items(), start=1):
        net, assignment = rename(network, plan)
        sp = make_stage_plan(adapter, net, plan.model_copy(update={"assignment": assignment}), addresses=addresses,
                             emulate=False, version=version)
        async with make_client(sp) as client:
            await client.generate(sources[0], max_new_tokens=32, eos=adapter.eos_token_id)      # warm-up
            times, steps, hop_bytes, tokens = [], [], 0, []
            for k in range(requests):
                res = await client.generate(sources[k % len(sources)], max_new_tokens=32, eos=adapter.eos_token_id)
                times.append(res.measured_s)
                steps.append(res.steps)
                hop_bytes += sum(res.transfer_bytes.values())
                tokens.append(res.tokens[0].tolist())
            out[label] = {"assignment": assignment, "median_s": statistics.median(times), "p90_s": _p90(times),
                          "steps": statistics.median(steps), "tokens": tokens,
                          "transfer_bytes_per_request": hop_bytes / requests}
    return out


def _p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def summarise(times: dict[str, list[float]], sizes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    out = {}
    for label, ts in times.items():
        med = statistics.median(ts)
        out[label] = {"bytes": sizes[label][0], "median_s": med, "p90_s": _p90(ts), "n": len(ts),
                      "mb_per_s": sizes[label][0] / med / 1e6}
    return out


def run_grpc(images: list[Path], hops: int, transfers: int, requests: int) -> dict[str, Any]:
    from runtime.client import Client
    from runtime.local import LocalWorkers
    from runtime.transport import GrpcTransport

    sizes = {"per hop": (SMALL, hops), **{k: (v, transfers) for k, v in SIZES.items()}}
    with LocalWorkers(MODEL, list(NODES), threads=1) as workers:
        addresses = dict(workers.addresses)

        async def main() -> dict[str, Any]:
            transport = GrpcTransport(workers.token)
            try:
                sends = await time_sends(transport, addresses["edge"], sizes)
            finally:
                await transport.close()

            def make(sp: Any) -> Client:
                return Client(sp, token=workers.token, controller_token=workers.controller_token)

            e2e = await end_to_end(make, addresses, images, requests)
            return {"sends": summarise(sends, sizes), "end_to_end": e2e}

        return asyncio.run(main())


def run_ray(images: list[Path], hops: int, transfers: int, requests: int) -> dict[str, Any]:
    import ray

    from runtime.ray_backend import RayBackend, RayClient, RayTransport, node_resource

    @ray.remote(num_cpus=0)
    class Sender:
        """A process on the phone's Ray node that sends as a StageHost does (RayTransport)."""

        async def run(self, address: str, sizes: dict[str, tuple[int, int]], use_lanes: bool = True,
                      ) -> dict[str, list[float]]:
            transport = RayTransport(use_lanes=use_lanes)
            try:
                return await time_sends(transport, address, sizes)
            finally:
                await transport.close()

        async def floor(self, echo: Any, repeats: int) -> list[float]:
            """Bare actor calls with a 400-byte argument: Ray's own cost, no aiflow code on either end."""
            data, times = b"x" * SMALL, []
            for k in range(WARMUP + repeats):
                t0 = time.perf_counter()
                await echo.noop.remote(data)
                if k >= WARMUP:
                    times.append(time.perf_counter() - t0)
            return times

    @ray.remote(num_cpus=0)
    class Echo:
        async def noop(self, data: bytes) -> list[bytes]:
            return []

    sizes = {"per hop": (SMALL, hops), **{k: (v, transfers) for k, v in SIZES.items()}}
    # the Sender actor imports this module: the cluster's processes inherit the path to it
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    backend = RayBackend(NODES)
    cluster_s = time.perf_counter() - t0
    try:
        stages = backend.workers(MODEL, list(NODES), threads=1)
        t0 = time.perf_counter()
        addresses = stages.start()
        stages_s = time.perf_counter() - t0
        try:
            sender = Sender.options(resources={node_resource("phone"): 0.01}).remote()
            sends = ray.get(sender.run.remote(addresses["edge"], sizes))
            by_call = ray.get(sender.run.remote(addresses["edge"], {"per hop": (SMALL, hops)}, False))["per hop"]
            echo = Echo.options(resources={node_resource("edge"): 0.01}).remote()
            floor = ray.get(sender.floor.remote(echo, hops))
            ray.kill(echo)
            before = {m: ray.get(stages.actors[m].transport_bytes.remote()) for m in NODES}
            transports: list[Any] = []

            def make(sp: Any) -> RayClient:
                client = RayClient(sp, timeout_s=300.0)
                transports.append(client.transport)
                return client

            e2e = asyncio.run(end_to_end(make, addresses, images, requests))
            after = {m: ray.get(stages.actors[m].transport_bytes.remote()) for m in NODES}
            driver = {"sent_bytes": sum(t.sent_bytes for t in transports),
                      "received_bytes": sum(t.received_bytes for t in transports),
                      "by_ref": sum(t.by_ref for t in transports)}
            actors = {m: {k: after[m][k] - before[m][k] for k in after[m]} for m in NODES}
        finally:
            stages.stop()
    finally:
        backend.close()
    return {"sends": summarise(sends, sizes), "end_to_end": e2e, "driver_bytes": driver, "actor_bytes": actors,
            "bare_call_s": statistics.median(floor), "bare_call_p90_s": _p90(floor),
            "hop_by_call_s": statistics.median(by_call), "hop_by_call_p90_s": _p90(by_call),
            "cluster_start_s": cluster_s, "stages_start_s": stages_s}


def markdown(data: dict[str, Any]) -> str:
    g, r = data["grpc"], data["ray"]
    lines = ["# gRPC workers against Ray actors", "",
             f"`python -m bench.backends --hops {data['hops']} --transfers {data['transfers']} --requests "
             f"{data['requests']}` on {data['machine']}, tiny-captioner, one torch thread per stage, native "
             "(no emulated links).", "",
             "| measure | gRPC | Ray | Ray / gRPC |", "|---|---:|---:|---:|"]
    for label in g["sends"]:
        a, b = g["sends"][label], r["sends"][label]
        if label == "per hop":
            lines.append(f"| per hop ({SMALL} B frame, send + ack) | {a['median_s'] * 1e3:.3f} ms | "
                         f"{b['median_s'] * 1e3:.3f} ms | {b['median_s'] / a['median_s']:.2f} |")
        else:
            lines.append(f"| {label} transfer | {a['median_s'] * 1e3:.2f} ms ({a['mb_per_s']:.0f} MB/s) | "
                         f"{b['median_s'] * 1e3:.2f} ms ({b['mb_per_s']:.0f} MB/s) | "
                         f"{b['median_s'] / a['median_s']:.2f} |")
    for label in g["end_to_end"]:
        a, b = g["end_to_end"][label], r["end_to_end"][label]
        same = "same tokens" if a["tokens"] == b["tokens"] else "DIFFERENT tokens"
        lines.append(f"| end to end, {label} ({' '.join(a['assignment'])}; {a['steps']:.0f} passes) | "
                     f"{a['median_s'] * 1e3:.1f} ms | {b['median_s'] * 1e3:.1f} ms | "
                     f"{b['median_s'] / a['median_s']:.2f} ({same}) |")
    hop = g["sends"]["per hop"]["median_s"]
    lines += [f"| per hop by actor call (no lane: how every hop went before) | | {r['hop_by_call_s'] * 1e3:.3f} ms | "
              f"{r['hop_by_call_s'] / hop:.2f} |",
              f"| a bare Ray actor call, phone's node -> edge's node ({SMALL} B, no aiflow code) | | "
              f"{r['bare_call_s'] * 1e3:.3f} ms | {r['bare_call_s'] / hop:.2f} |"]
    d, act = r["driver_bytes"], r["actor_bytes"]
    actor_sent = sum(v["sent_bytes"] for v in act.values())
    lines += ["", f"Driver bytes on Ray over the {2 * (data['requests'] + 1)} end-to-end requests: the driver's "
              f"transport sent {d['sent_bytes']:,} B (inputs and control frames, {d['by_ref']} by reference) and "
              f"received {d['received_bytes']:,} B (acks, stats, results); the actors sent each other "
              f"{actor_sent:,} B ({sum(v['by_ref'] for v in act.values())} frames by reference, "
              f"{sum(v.get('on_lanes', 0) for v in act.values())} on lanes) and results to "
              "the reply inbox: no activation passed through the driver.", "",
              f"Ray cluster start: {r['cluster_start_s']:.1f} s (3 Ray nodes); stages: {r['stages_start_s']:.1f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__.splitlines()[0])
    ap.add_argument("--hops", type=int, default=300)
    ap.add_argument("--transfers", type=int, default=20)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from orchestrator.demo import write_test_images

    images = [im.path for im in write_test_images(Path(os.environ.get("TMPDIR", "/tmp")) / "aiflow-bench-backends",
                                                  4)]
    data: dict[str, Any] = {"hops": a.hops, "transfers": a.transfers, "requests": a.requests,
                            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    data["grpc"] = run_grpc(images, a.hops, a.transfers, a.requests)
    data["ray"] = run_ray(images, a.hops, a.transfers, a.requests)
    path = write_results(a.out, "backends", data, markdown(data))
    print(markdown(data))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
