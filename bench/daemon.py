"""The daemon under a moving network: how fast it adapts, what it costs, whether it flaps.

    python -m bench.daemon [--quick] [--scenarios step,noise,trace,migration,idle] [--out bench/results]
                           [--trace-phone-slowdown S] [--merge]

Everything runs on this machine: the tiny captioner (trained), examples/daemon.network.yaml (a low-end
phone, an edge box, a cloud GPU), local worker processes, emulated links with time dilation K, the
daemon's HTTP API driven in-process. Latencies are the emulated network's (wall / K); compute and
links are emulated, so agreement with the prediction after a switch tests the estimates the daemon
made by probing (it is never told the true network), not the cost model against real hardware.

1. step: a steady stream of requests; phone-edge cut 20-fold (20 -> 1 Mbit/s) through the emulation
   API at the default intervals (probe 5 s, re-solve 10 s). Time from the cut to the new plan in
   force, in probe intervals; requests lost or wrong; measured / predicted after the switch.
2. noise: a stationary link with real noise (an FCC broadband trace whose median sits near the
   point where offloading and phone-only trade places) for 10 minutes (2 with --quick): plan switches.
3. trace: phone-edge replays a real 3G trace (norway_bus_5) in which the best plan changes, under a
   stream of requests, for the daemon and for each static plan (phone-only, offload). The trace is
   replayed faster than real time by the factor K (so the daemon's wall-clock probe interval meets the
   trace's changes as it would on a real link); an oracle's mean is the prediction of the best plan
   for the true bandwidth at each request's start (predicted, not measured). With the example's phone
   (slowdown 3) offloading pays only above about 5 Mbit/s, which this trace never reaches; with
   `--trace-phone-slowdown 6` the crossover (about 1.5 Mbit/s) lies inside the trace's range and the
   best plan really changes (results under `trace_phone_slowdown_6`; `--merge` keeps the others).
4. migration: the network held still, the plan switched every 10 s between two placements (the
   offload to the cloud and the same through the edge) under three concurrent streams of requests;
   p99 latency of the requests in flight across a switch against the p99 of the others.
5. idle: an idle daemon at the default intervals for 60 s: CPU use of the daemon process and of its
   workers; probe traffic as a share of each link's capacity.

Writes bench/results/daemon.json and .md; prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.results_io import write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NETWORK = ROOT / "examples" / "daemon.network.yaml"
NOISE_TRACE = ROOT / "data" / "traces" / "fcc" / "trace_799296_http---www.amazon_part4.tsv"
TRACE_3G = ROOT / "data" / "traces" / "norway-3g" / "norway_bus_5.tsv"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Setup:
    """The model, profile, images and their unsplit captions, shared by every scenario."""

    def __init__(self) -> None:
        from orchestrator.demo import cached_profile, unsplit_captions, write_test_images
        from orchestrator.network import load_network
        from profiler.models import load_adapter

        self.adapter = load_adapter("tiny-captioner")
        self.net = load_network(NETWORK)
        self.profile, _, _ = cached_profile(self.adapter, self.net)
        folder = Path(tempfile.mkdtemp(prefix="aiflow-bench-daemon-"))
        self.images = [im.path for im in write_test_images(folder, 4)]
        self.reference = unsplit_captions(self.adapter, self.images)
        self.bodies = [{"image": base64.b64encode(p.read_bytes()).decode()} for p in self.images]
        self.folder = folder
        self.trace_phone_slowdown: float | None = None

    def dilation(self) -> float:
        from orchestrator.demo import local_dilation
        return local_dilation(self.profile, self.net)


async def with_daemon(setup: Setup, net: Any, settings: Any, body: Any, trace_base: Path | None = None) -> Any:
    """Start a daemon on `net`, run `body(daemon, api)`, stop it; body's result."""
    import httpx

    from orchestrator.daemon.api import create_app
    from orchestrator.daemon.service import Daemon

    daemon = Daemon("tiny-captioner", net, setup.profile, setup.adapter, settings=settings,
                    dilation=setup.dilation(), trace_base=trace_base)
    await daemon.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(daemon)), base_url="http://d",
                                     timeout=300) as api:
            return await body(daemon, api)
    finally:
        await daemon.close()


class Stream:
    """Sequential requests until stopped; every answer checked against the unsplit caption."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.rows: list[dict[str, Any]] = []
        self.failed = 0
        self.stop = asyncio.Event()

    async def run(self, api: Any) -> None:
        i = 0
        while not self.stop.is_set():
            t0 = datetime.now(UTC)
            r = await api.post("/v1/requests", json=self.setup.bodies[i % 4])
            if r.status_code != 200:
                self.failed += 1
            else:
                j = r.json()
                self.rows.append({"start": t0, "end": datetime.now(UTC), "version": j["plan_version"],
                                  "passes": len(j["tokens"]),
                                  "latency_s": j["latency_s"], "predicted_s": j["predicted_latency_s"],
                                  "wrong": j["output"] != self.setup.reference[i % 4]})
            i += 1

    def summary(self) -> dict[str, Any]:
        lat = [r["latency_s"] for r in self.rows]
        return {"served": len(self.rows), "failed": self.failed, "wrong": sum(r["wrong"] for r in self.rows),
                "mean_s": statistics.fmean(lat) if lat else None, "p95_s": pct(lat, 0.95) if lat else None}


# -- 1. step ---------------------------------------------------------------------------------------------
async def step(setup: Setup, quick: bool) -> dict[str, Any]:
    from orchestrator.daemon.settings import DaemonSettings

    settings = DaemonSettings()            # the defaults: probe 5 s, re-solve 10 s

    async def body(daemon: Any, api: Any) -> dict[str, Any]:
        stream = Stream(setup)
        task = asyncio.create_task(stream.run(api))
        await asyncio.sleep(3 * settings.probe_interval_s)
        v0 = daemon.current.number
        cut = datetime.now(UTC)
        await api.post("/v1/emulation/links", json={"a": "phone", "b": "edge", "bandwidth_bps": 1e6})
        deadline = time.monotonic() + 10 * settings.probe_interval_s
        while daemon.current.number == v0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        switched = daemon.current.number != v0
        after = (daemon.current.applied_at - cut).total_seconds() if switched else None
        await asyncio.sleep(4 * settings.probe_interval_s)
        stream.stop.set()
        await task
        steady = [r for r in stream.rows if switched and r["start"] > daemon.current.applied_at]
        ratios = [r["latency_s"] / r["predicted_s"] for r in steady]
        overlap = [r for r in stream.rows if switched and r["start"] < daemon.current.applied_at < r["end"]]
        return {"probe_interval_s": settings.probe_interval_s, "switched": switched,
                "switch_after_s": after, "switch_after_probe_intervals": after / settings.probe_interval_s
                if after is not None else None,
                "new_plan": list(daemon.current.plan.assignment), **stream.summary(),
                "ratio_after_median": statistics.median(ratios) if ratios else None, "requests_after": len(ratios),
                "requests_across_switch": len(overlap)}

    return await with_daemon(setup, setup.net, settings, body)


# -- 2. noise --------------------------------------------------------------------------------------------
def speed_up_trace(src: Path, factor: float, folder: Path) -> Path:
    """A copy of a trace with its time axis divided by `factor` (replayed that much faster)."""
    from runtime.links import read_trace_samples

    out = folder / f"{src.stem}.x{factor:.3g}.tsv"
    out.write_text("".join(f"{t / factor:.6f}\t{r}\n" for t, r in read_trace_samples(src)))
    return out


def with_trace(net: Any, trace: Path) -> Any:
    doc = net.model_dump(exclude_none=True)
    for lk in doc["links"]:
        if {lk["a"], lk["b"]} == {"phone", "edge"}:
            lk["trace"] = str(trace)
    return type(net).model_validate(doc)


async def noise(setup: Setup, quick: bool) -> dict[str, Any]:
    from orchestrator.daemon.settings import DaemonSettings

    minutes = 2 if quick else 10
    k = setup.dilation()
    trace = speed_up_trace(NOISE_TRACE, k, setup.folder)
    settings = DaemonSettings()

    async def body(daemon: Any, api: Any) -> dict[str, Any]:
        stream = Stream(setup)
        task = asyncio.create_task(stream.run(api))
        v0 = daemon.current.number
        await asyncio.sleep(60 * minutes)
        stream.stop.set()
        await task
        return {"minutes": minutes, "trace": NOISE_TRACE.name, "switches": daemon.current.number - v0,
                "decisions": len(daemon.decisions), **stream.summary()}

    return await with_daemon(setup, with_trace(setup.net, trace), settings, body)


# -- 3. trace --------------------------------------------------------------------------------------------
async def trace_replay(setup: Setup, quick: bool) -> dict[str, Any]:
    from orchestrator.costmodel import latency_for_steps
    from orchestrator.daemon.settings import DaemonSettings
    from orchestrator.planner import solve
    from runtime.links import load_trace

    minutes = 1.5 if quick else 5.0
    k = setup.dilation()
    trace_file = speed_up_trace(TRACE_3G, k, setup.folder)
    true = load_trace(trace_file)
    base = setup.net
    if setup.trace_phone_slowdown is not None:     # a slower phone: the crossover falls inside the trace's range
        base = base.model_copy(update={"nodes": [n.model_copy(update={"slowdown": setup.trace_phone_slowdown})
                                                 if n.name == "phone" else n for n in base.nodes]})
    net = with_trace(base, trace_file)
    units = [u.name for u in setup.profile.units]
    phone_only = ["phone"] * len(units)
    offload = solve(setup.profile, base).assignment
    pinned = {"phone-only": phone_only, "offload": offload}
    rows: dict[str, Any] = {}

    def oracle_s(at: float, passes: int) -> float:
        """The best plan's prediction for the true bandwidth at `at`, for this request's decoder passes."""
        bw = true.rate_at(at)
        moved = base.with_link("phone", "edge", bandwidth_bps=max(bw, 1e4))
        return min(latency_for_steps(setup.profile, moved, a, passes) for a in (phone_only, offload))

    for name, assignment in [("daemon", None), *pinned.items()]:
        this = net if assignment is None else net.with_constraints(pins={u: [n] for u, n in zip(units, assignment,
                                                                                                 strict=True)})
        settings = DaemonSettings(probe_interval_s=2.0, solve_interval_s=5.0)

        async def body(daemon: Any, api: Any) -> dict[str, Any]:
            stream = Stream(setup)
            origin = datetime.now(UTC)          # about when the workers' emulated links (and the replay) began
            v0 = daemon.current.number
            task = asyncio.create_task(stream.run(api))
            await asyncio.sleep(60 * minutes)
            stream.stop.set()
            await task
            # the replayed file's time runs 1/K as fast as the wall clock (time dilation)
            oracle = [oracle_s((r["start"] - origin).total_seconds() / k, r["passes"]) for r in stream.rows]
            return {**stream.summary(), "switches": daemon.current.number - v0,
                    "oracle_mean_s_predicted": statistics.fmean(oracle) if oracle else None}

        rows[name] = await with_daemon(setup, this, settings, body, trace_base=None)
        print(f"  trace: {name}: {rows[name]}", flush=True)
    best_static = min(rows[n]["mean_s"] for n in pinned)
    return {"minutes": minutes, "trace": TRACE_3G.name, "speed_up": k, "runs": rows,
            "phone_slowdown": base.node("phone").slowdown,
            "daemon_over_best_static": rows["daemon"]["mean_s"] / best_static,
            "daemon_over_oracle": rows["daemon"]["mean_s"] / rows["daemon"]["oracle_mean_s_predicted"]}


# -- 4. migration ----------------------------------------------------------------------------------------
async def migration(setup: Setup, quick: bool) -> dict[str, Any]:
    from orchestrator.daemon.settings import DaemonSettings
    from orchestrator.planner import solve

    switches = 4 if quick else 12
    settings = DaemonSettings(solve_interval_s=3600.0)     # no re-solve of its own: the bench switches
    units = [u.name for u in setup.profile.units]
    cloud = solve(setup.profile, setup.net)
    edge = solve(setup.profile, setup.net.with_constraints(pins={u: ["phone" if i == 0 else "edge"]
                                                                for i, u in enumerate(units)}))

    async def body(daemon: Any, api: Any) -> dict[str, Any]:
        streams = [Stream(setup) for _ in range(3)]
        tasks = [asyncio.create_task(st.run(api)) for st in streams]
        times = []
        await asyncio.sleep(10)
        for i in range(switches):
            plan = edge if i % 2 == 0 else cloud
            await daemon.switch(plan, daemon.snapshot, None, None)
            times.append(daemon.current.applied_at)
            await asyncio.sleep(10)
        for st in streams:
            st.stop.set()
        await asyncio.gather(*tasks)
        rows = [r for st in streams for r in st.rows]
        across = [r["latency_s"] for r in rows if any(r["start"] < t < r["end"] for t in times)]
        steady = [r["latency_s"] for r in rows if not any(r["start"] < t < r["end"] for t in times)]
        return {"switches": len(times), "requests_across": len(across), "requests_steady": len(steady),
                "p99_across_s": pct(across, 0.99), "p99_steady_s": pct(steady, 0.99),
                "p99_ratio": pct(across, 0.99) / pct(steady, 0.99) if across and steady else None,
                "failed": sum(st.failed for st in streams), "wrong": sum(r["wrong"] for r in rows),
                "plans": [list(edge.assignment), list(cloud.assignment)]}

    return await with_daemon(setup, setup.net, settings, body)


# -- 5. idle ---------------------------------------------------------------------------------------------
async def idle(setup: Setup, quick: bool) -> dict[str, Any]:
    from orchestrator.daemon.settings import DaemonSettings

    seconds = 30 if quick else 60
    settings = DaemonSettings()

    async def body(daemon: Any, api: Any) -> dict[str, Any]:
        await asyncio.sleep(2 * settings.probe_interval_s)          # past the first rounds
        pids = {n: s.pid for n, s in daemon.nodes.items() if s.pid}
        sent0 = dict(daemon.probes_sent_bytes)
        cpu0 = {"daemon": cpu_seconds(os.getpid()), **{n: cpu_seconds(p) for n, p in pids.items()}}
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        wall = time.monotonic() - t0
        cpu = {n: (cpu_seconds(os.getpid() if n == "daemon" else pids[n]) - c) / wall for n, c in cpu0.items()}
        capacity = {f"{lk.a}~{lk.b}" if lk.a < lk.b else f"{lk.b}~{lk.a}": lk.bandwidth_bps
                    for lk in daemon.base.links}
        share = {key: 8 * (daemon.probes_sent_bytes.get(key, 0) - sent0.get(key, 0)) * daemon.dilation
                 / (capacity[key] * wall) for key in capacity}
        return {"seconds": seconds, "cpu_share_of_one_core": cpu, "probe_share_of_capacity": share}

    return await with_daemon(setup, setup.net, settings, body)


SCENARIOS = {"step": step, "noise": noise, "trace": trace_replay, "migration": migration, "idle": idle}


def markdown(res: dict[str, Any]) -> str:
    command = "python -m bench.daemon" + (" --quick" if res["quick"] else "")
    out = ["# The daemon under a moving network", "",
           f"Measured {res['date']} on {res['machine']} with `{command}`; K = {res['dilation']:.3g}. "
           "Latencies are the emulated network's (wall / K).", ""]
    if "step" in res:
        s = res["step"]
        out += ["## Step: phone-edge cut 20-fold under a stream of requests", "",
                "| probe interval | switched after | in probe intervals | served | failed | wrong | "
                "measured / predicted after |", "|---|---|---|---|---|---|---|",
                f"| {s['probe_interval_s']:g} s | {s['switch_after_s']:.2f} s | "
                f"{s['switch_after_probe_intervals']:.2f} | {s['served']} | {s['failed']} | {s['wrong']} | "
                f"{s['ratio_after_median']:.3f} (median of {s['requests_after']}) |" if s["switched"] else
                "| no switch | | | | | | |", ""]
    if "noise" in res:
        s = res["noise"]
        out += ["## No flapping: a stationary link with real noise", "",
                "| trace | minutes | switches | decisions | served | failed | wrong |", "|---|---|---|---|---|---|---|",
                f"| {s['trace']} | {s['minutes']:g} | {s['switches']} | {s['decisions']} | {s['served']} | "
                f"{s['failed']} | {s['wrong']} |", ""]
    for key in sorted(k for k in res if k.startswith("trace")):
        t = res[key]
        out += [f"## Real 3G trace ({t['trace']}, replayed {t['speed_up']:.3g}x faster, {t['minutes']:g} min each; "
                f"phone slowdown {t.get('phone_slowdown', 3):g})",
                "", "| run | served | failed | wrong | switches | mean ms | p95 ms |", "|---|---|---|---|---|---|---|"]
        for name, r in t["runs"].items():
            out.append(f"| {name} | {r['served']} | {r['failed']} | {r['wrong']} | {r['switches']} | "
                       f"{r['mean_s'] * 1e3:.1f} | {r['p95_s'] * 1e3:.1f} |")
        out += ["", f"Oracle (the best plan for the true bandwidth at each request, predicted): "
                    f"{t['runs']['daemon']['oracle_mean_s_predicted'] * 1e3:.1f} ms. Daemon / best static: "
                    f"{t['daemon_over_best_static']:.3f}; daemon / oracle: {t['daemon_over_oracle']:.3f}.", ""]
    if "migration" in res:
        s = res["migration"]
        out += ["## Live migration under load (switches forced every 10 s, network held still)", "",
                "| switches | requests across a switch | others | p99 across ms | p99 others ms | ratio | failed | "
                "wrong |", "|---|---|---|---|---|---|---|---|",
                f"| {s['switches']} | {s['requests_across']} | {s['requests_steady']} | "
                f"{s['p99_across_s'] * 1e3:.1f} | {s['p99_steady_s'] * 1e3:.1f} | {s['p99_ratio']:.2f} | "
                f"{s['failed']} | {s['wrong']} |", ""]
    if "idle" in res:
        s = res["idle"]
        out += ["## Idle daemon at the default intervals", "", "| process | CPU (share of one core) |", "|---|---|"]
        out += [f"| {n} | {v:.3%} |" for n, v in s["cpu_share_of_one_core"].items()]
        out += ["", "| link | probe traffic / capacity |", "|---|---|"]
        out += [f"| {n} | {v:.3%} |" for n, v in s["probe_share_of_capacity"].items()]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.daemon", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--scenarios", default="step,noise,trace,migration,idle")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--trace-phone-slowdown", type=float, default=None,
                    help="the trace scenario with this phone slowdown instead of the network file's")
    ap.add_argument("--merge", action="store_true", help="update the scenarios run in an existing daemon.json")
    a = ap.parse_args(argv)
    names = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    bad = [n for n in names if n not in SCENARIOS]
    if bad:
        sys.exit(f"bench.daemon: unknown scenario(s) {', '.join(bad)} (known: {', '.join(SCENARIOS)})")
    import torch
    torch.set_num_threads(1)
    setup = Setup()
    setup.trace_phone_slowdown = a.trace_phone_slowdown
    previous = a.out / "daemon.json"
    res: dict[str, Any] = json.loads(previous.read_text()) if a.merge and previous.is_file() else {}
    res.update({"date": datetime.now(UTC).isoformat(timespec="seconds"), "quick": a.quick,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores", "dilation": setup.dilation()})
    for name in names:
        print(f"bench.daemon: {name} ...", flush=True)
        key = name if name != "trace" or a.trace_phone_slowdown is None else \
            f"trace_phone_slowdown_{a.trace_phone_slowdown:g}"
        res[key] = asyncio.run(SCENARIOS[name](setup, a.quick))
        print(json.dumps(res[key], indent=1, default=str), flush=True)
    md = markdown(res)
    write_results(a.out, "daemon", res, md)
    print(md)


if __name__ == "__main__":
    main()
