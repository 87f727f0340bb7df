"""Mixed faults under load: the daemon serving streams of requests while workers are killed, links cut,
stalled and restored, and hostile input arrives; every answer is counted.

    python -m bench.soak [--minutes 30] [--streams 3] [--fault-every 20] [--seed 1] [--out bench/results]

Everything runs on this machine: the trained tiny captioner, examples/daemon.network.yaml, three local
worker processes under emulated links (time dilation K), the daemon's HTTP API driven in process, a
SQLite history database. Every `--fault-every` seconds one fault is drawn:

- kill: SIGKILL a worker of the plan in force (the daemon restarts it; requests in flight run again);
- cut: phone-edge bandwidth divided by 20 (the daemon must notice by probing and may switch plans);
- stall: phone-edge at 1 kbit/s for 3 s, then back (requests crossing it meet their deadline or a new plan);
- restore: every link back to the configured figures;
- bad: a burst of bad input (not base64, not an image, NaN in the body, an oversized body, an unknown
  model, too many tokens), each of which must get its documented 4xx.

Each request's answer is one of: served (200 and exactly the unsplit model's caption), wrong (200 and
another caption), failed (a 502 with a reason, before its deadline), lost (anything else: a 500, no answer,
an exception, an answer after the deadline). `retried` is the daemon's count of requests run again after a
node died. Writes bench/results/soak.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import random
import signal
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.results_io import write_results

ROOT = Path(__file__).resolve().parent.parent
NETWORK = ROOT / "examples" / "daemon.network.yaml"
PROFILE = ROOT / "examples" / "tiny-captioner.profile.json"
FAULTS = ("kill", "cut", "stall", "restore", "bad")
DEADLINE_S = 60.0


def bad_inputs(image: str) -> list[tuple[str, bytes, int]]:
    """(name, raw body, the status it must get)."""
    return [("not base64", b'{"image": "not base64!"}', 422),
            ("not an image", b'{"image": "' + base64.b64encode(b"GIF89a nonsense") + b'"}', 422),
            ("NaN in the body", b'{"image": NaN}', 422),
            ("oversized body", b'{"image": "' + b"A" * (13 << 20) + b'"}', 413),
            ("unknown model", ('{"image": "' + image + '", "model": "gpt2"}').encode(), 404),
            ("too many tokens", ('{"image": "' + image + '", "max_new_tokens": 100000}').encode(), 422)]


async def soak(minutes: float, streams: int, fault_every: float, seed: int) -> dict[str, Any]:
    import httpx

    from orchestrator.daemon.api import create_app
    from orchestrator.daemon.service import Daemon
    from orchestrator.daemon.settings import DaemonSettings
    from orchestrator.demo import unsplit_captions, write_test_images
    from orchestrator.network import load_network
    from orchestrator.store import Store
    from profiler.models import load_adapter
    from profiler.profile import load_profile
    from runtime.stages import dilation_factor

    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="aiflow-soak-"))
    paths = [im.path for im in write_test_images(tmp, 4)]
    reference = unsplit_captions(load_adapter("tiny-captioner"), paths)
    images = [base64.b64encode(p.read_bytes()).decode() for p in paths]
    profile, net = load_profile(PROFILE), load_network(NETWORK)
    k = min(dilation_factor(profile, net, profile.hardware_classes[0]), 6.0)
    store = Store.open(f"sqlite:///{tmp / 'history.db'}")
    settings = DaemonSettings(probe_interval_s=2.0, solve_interval_s=10.0, request_timeout_s=DEADLINE_S)
    daemon = Daemon("tiny-captioner", net, profile, load_adapter("tiny-captioner"), settings=settings, store=store,
                    dilation=k)
    counts: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    bad: Counter[str] = Counter()
    latencies: list[float] = []
    examples: dict[str, str] = {}
    await daemon.start()
    app = create_app(daemon)
    stop_at = time.monotonic() + 60 * minutes
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d",
                                 timeout=2 * DEADLINE_S) as api:
        async def stream(j: int) -> None:
            i = j
            while time.monotonic() < stop_at:
                i += streams
                t0 = time.monotonic()
                try:
                    r = await api.post("/v1/requests", json={"image": images[i % 4]})
                    took = time.monotonic() - t0
                    detail = r.json().get("detail") if r.status_code != 200 else None
                    if r.status_code == 200 and took <= DEADLINE_S + 5:
                        ok = r.json()["output"] == reference[i % 4]
                        counts["served" if ok else "wrong"] += 1
                        latencies.append(r.json()["latency_s"])
                    elif r.status_code in (502, 503) and detail and took <= DEADLINE_S + 5:
                        counts["failed"] += 1
                        examples.setdefault(f"failed {r.status_code}", str(detail)[:300])
                    else:
                        counts["lost"] += 1
                        examples.setdefault(f"lost {r.status_code}", f"{took:.1f} s: {str(detail)[:300]}")
                except Exception as exc:  # noqa: BLE001 - an exception is a lost request, counted
                    counts["lost"] += 1
                    examples.setdefault("lost exception", f"{type(exc).__name__}: {exc}"[:300])

        async def link(bandwidth_bps: float) -> None:
            await api.post("/v1/emulation/links", json={"a": "phone", "b": "edge", "bandwidth_bps": bandwidth_bps})

        async def injector() -> None:
            while time.monotonic() < stop_at - fault_every:
                await asyncio.sleep(fault_every)
                fault = rng.choice(FAULTS)
                faults[fault] += 1
                if fault == "kill":
                    victims = [n for n in set(daemon.current.plan.assignment) if daemon.nodes[n].pid]
                    name = rng.choice(victims or list(daemon.nodes))
                    os.kill(daemon.nodes[name].pid, signal.SIGKILL)
                elif fault == "cut":
                    await link(1e6)
                elif fault == "stall":
                    await link(1e3)
                    await asyncio.sleep(3.0)
                    await link(2e7)
                elif fault == "restore":
                    await link(2e7)
                    await api.post("/v1/emulation/links", json={"a": "edge", "b": "cloud", "bandwidth_bps": 1e8})
                else:
                    for name, raw, want in bad_inputs(images[0]):
                        r = await api.post("/v1/requests", content=raw, headers={"content-type": "application/json"})
                        bad["as documented" if r.status_code == want and r.json().get("detail") else
                            f"{name}: {r.status_code}"] += 1

        await asyncio.gather(injector(), *(stream(j) for j in range(streams)))
    retried = int(daemon.metrics.requests.labels(outcome="retried")._value.get())
    restarts = {n: int(daemon.metrics.restarts.labels(node=n)._value.get()) for n in daemon.nodes}
    versions = daemon.current.number if daemon.current else 0
    await daemon.drain()
    await daemon.close()
    with store.engine.connect() as c:
        from sqlalchemy import text

        runs = c.execute(text("SELECT COUNT(*) FROM runs")).scalar()
    store.close()
    latencies.sort()
    return {"minutes": minutes, "streams": streams, "fault_every_s": fault_every, "seed": seed, "dilation": k,
            "counts": dict(counts), "retried": retried, "faults": dict(faults), "bad_inputs": dict(bad),
            "worker_restarts": restarts, "plan_versions": versions, "runs_recorded": runs,
            "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
            "latency_p95_s": latencies[int(len(latencies) * 0.95)] if latencies else None,
            "examples": examples, "at": datetime.now(UTC).isoformat(), "machine": platform.processor() or
            platform.machine(), "cpus": os.cpu_count()}


def report(r: dict[str, Any]) -> str:
    c = r["counts"]
    lines = [f"# Soak: mixed faults under load ({r['minutes']:g} min, {r['streams']} streams, a fault every "
             f"{r['fault_every_s']:g} s, seed {r['seed']})", "",
             "| served | retried | failed (clear error) | lost | wrong |", "|---:|---:|---:|---:|---:|",
             f"| {c.get('served', 0)} | {r['retried']} | {c.get('failed', 0)} | {c.get('lost', 0)} | "
             f"{c.get('wrong', 0)} |", "",
             "| fault | times |", "|---|---:|"]
    lines += [f"| {f} | {n} |" for f, n in sorted(r["faults"].items())]
    lines += ["", f"Bad input bursts: {dict(r['bad_inputs'])}; worker restarts: {r['worker_restarts']}; plan versions: "
              f"{r['plan_versions']}; history rows for requests: {r['runs_recorded']} (served: {c.get('served', 0)}).",
              f"Latency of served requests (emulated network's, wall / K = {r['dilation']:.3g}): p50 "
              f"{r['latency_p50_s']} s, p95 {r['latency_p95_s']} s.", ""]
    if r["examples"]:
        lines += ["Examples of answers that were not served:", ""]
        lines += [f"- {k}: {v}" for k, v in r["examples"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--streams", type=int, default=3)
    ap.add_argument("--fault-every", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where soak.json and .md go")
    a = ap.parse_args()
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)     # "job skipped" while a probe round runs long
    result = asyncio.run(soak(a.minutes, a.streams, a.fault_every, a.seed))
    md = report(result)
    write_results(a.out, "soak", result, md)
    print(md)


if __name__ == "__main__":
    main()
