"""Mixed faults under load: `aiflow daemon`, a process of its own, serving streams of requests over its HTTP
API while its workers, its links, itself and its history database fail; every answer is counted.

    python -m bench.soak [--minutes 30] [--streams 3] [--fault-every 20] [--seed 1] [--db auto|postgres|sqlite]
                         [--faults kill,cut,...] [--out bench/results]

Everything runs on this machine: the trained tiny captioner, examples/daemon.network.yaml, three local
worker processes under emulated links (time dilation K), the daemon started as `aiflow daemon` and driven
only over HTTP, its history in a fresh PostgreSQL schema (127.0.0.1:5432, user postgres, database test,
reached through a TCP proxy the soak controls; dropped at the end) or, with `--db sqlite` or when no
PostgreSQL answers, a SQLite file. Every `--fault-every` seconds one fault is drawn (from a shuffled deck of
`--faults`, so that each comes as often as the others):

- kill: SIGKILL a worker of the plan in force (the daemon restarts it; requests in flight run again);
- cut: phone-edge bandwidth divided by 20 (the daemon must notice by probing and may switch plans);
- stall: phone-edge at 1 kbit/s for 3 s, then back (requests crossing it meet their deadline or a new plan);
- restore: every link back to the configured figures;
- bad: a burst of bad input (not base64, not an image, NaN in the body, an oversized body, an unknown
  model, too many tokens), each of which must get its documented 4xx;
- daemon-kill: SIGKILL the daemon and start it again with the same arguments: it must resume from history
  and adopt its workers (the same pids); requests whose connection died with it are sent again by the client;
- db-outage: the proxy to PostgreSQL cut (connections dropped, new ones refused) for 5-10 s, then back: the
  daemon keeps serving and writes the records it kept once the database answers (PostgreSQL only);
- switch-kill: phone-edge changed so that the daemon re-plans, and a worker of the new plan SIGKILLed as
  soon as the daemon decides to switch (during prepare or just after commit).

Each request's answer is one of: served (200 and exactly the unsplit model's caption), served after client
retry (the same, on a second send after its connection died with a killed daemon), wrong (200 and another
caption), failed (a 502 or 503 with a reason, before its deadline), lost (anything else: a 500, no answer, an
exception, an answer after the deadline). `retried` is the daemon's count of requests it ran again after a
node died, summed over its lives. At the end every 200 answer is looked for in the history's `runs` rows (by
plan version and measured latency): nothing recorded may be lost. Writes bench/results/soak.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import random
import signal
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.results_io import write_results
from bench.soak_parts import DaemonProcess, History, postgres_reachable

ROOT = Path(__file__).resolve().parent.parent
NETWORK = ROOT / "examples" / "daemon.network.yaml"
PROFILE = ROOT / "examples" / "tiny-captioner.profile.json"
FAULTS = ("kill", "cut", "stall", "restore", "bad", "daemon-kill", "db-outage", "switch-kill")
DEADLINE_S = 120.0          # each request's deadline: the daemon is given it (--request-timeout)
LATE_S = 5.0                # an answer this long after the deadline still counts as on time
PHONE_EDGE_BPS, EDGE_CLOUD_BPS, CUT_BPS = 2e7, 1e8, 1e6


def bad_inputs(image: str) -> list[tuple[str, bytes, int]]:
    """(name, raw body, the status it must get)."""
    return [("not base64", b'{"image": "not base64!"}', 422),
            ("not an image", b'{"image": "' + base64.b64encode(b"GIF89a nonsense") + b'"}', 422),
            ("NaN in the body", b'{"image": NaN}', 422),
            ("oversized body", b'{"image": "' + b"A" * (13 << 20) + b'"}', 413),
            ("unknown model", ('{"image": "' + image + '", "model": "gpt2"}').encode(), 404),
            ("too many tokens", ('{"image": "' + image + '", "max_new_tokens": 100000}').encode(), 422)]


@dataclass
class Tally:
    """Everything counted during a run."""

    counts: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)       # emulated network's (the API's latency_s)
    wall: list[float] = field(default_factory=list)            # at the client, retries included
    answered: list[tuple[int, float]] = field(default_factory=list)   # (plan_version, latency_s) of each 200
    examples: dict[str, str] = field(default_factory=dict)
    daemon_restarts: list[dict[str, Any]] = field(default_factory=list)
    outages: list[dict[str, Any]] = field(default_factory=list)
    switch_kills: list[dict[str, Any]] = field(default_factory=list)
    load: list[float] = field(default_factory=list)             # 1-minute load average, sampled at each fault


@dataclass
class Soak:
    """One run: the daemon, its history database, the streams of requests and the fault injector."""

    daemon: DaemonProcess
    history: History
    api: httpx.AsyncClient
    images: list[str]
    reference: list[str]
    faults: tuple[str, ...]
    rng: random.Random
    stop_at: float
    tally: Tally = field(default_factory=Tally)
    phone_edge_bps: float = PHONE_EDGE_BPS

    # -- the load ------------------------------------------------------------------------------------
    async def stream(self, j: int, streams: int) -> None:
        i = j
        while time.monotonic() < self.stop_at:
            i += streams
            await self.request(i % len(self.images))

    async def request(self, n: int) -> None:
        """One request, sent again (once the daemon is back) only when its connection died with a killed
        daemon; classified once, at the end."""
        t0 = time.monotonic()
        deadline = t0 + DEADLINE_S + LATE_S
        resent = False
        while True:
            if not await self._daemon_up_before(deadline):
                return self._lost("daemon not back before the deadline", t0)
            generation = self.daemon.generation
            try:
                r = await self.api.post("/v1/requests", json={"image": self.images[n]},
                                        timeout=max(1.0, deadline - time.monotonic()))
            except httpx.TransportError as exc:
                if self.daemon.generation != generation or not self.daemon.up.is_set():
                    resent = True               # the daemon was killed under it: the client's retry
                    continue
                return self._lost(f"{type(exc).__name__}: {exc}", t0)
            return self._classify(r, n, t0, resent)

    async def _daemon_up_before(self, deadline: float) -> bool:
        try:
            await asyncio.wait_for(self.daemon.up.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return False
        return True

    def _classify(self, r: httpx.Response, n: int, t0: float, resent: bool) -> None:
        took = time.monotonic() - t0
        body = _json(r)
        detail = body.get("detail") if r.status_code != 200 else None
        on_time = took <= DEADLINE_S + LATE_S
        t = self.tally
        if r.status_code == 200 and on_time:
            t.answered.append((body.get("plan_version"), body["latency_s"]))
            if body["output"] != self.reference[n]:
                t.counts["wrong"] += 1
                t.examples.setdefault("wrong", f"{body['output']!r} instead of {self.reference[n]!r}")
                return
            t.counts["served after client retry" if resent else "served"] += 1
            t.latencies.append(body["latency_s"])
            t.wall.append(took)
        elif r.status_code in (502, 503) and detail and on_time:
            t.counts["failed"] += 1
            t.examples.setdefault(f"failed {r.status_code}", str(detail)[:300])
        else:
            if r.status_code == 200:
                t.answered.append((body.get("plan_version"), body["latency_s"]))
            self._lost(f"{r.status_code} {str(detail)[:300]}", t0)

    def _lost(self, why: str, t0: float) -> None:
        self.tally.counts["lost"] += 1
        self.tally.examples.setdefault(f"lost ({why.split(':')[0][:40]})", f"{time.monotonic() - t0:.1f} s: {why}")

    # -- the faults ----------------------------------------------------------------------------------
    async def injector(self, every: float) -> None:
        deck: list[str] = []
        while time.monotonic() < self.stop_at - every:
            await asyncio.sleep(every)
            if not deck:                # drawn from a shuffled deck: every fault as often as the others, in any order
                deck = list(self.faults)
                self.rng.shuffle(deck)
            fault = deck.pop()
            self.tally.faults[fault] += 1
            self.tally.load.append(os.getloadavg()[0])
            try:
                await getattr(self, "fault_" + fault.replace("-", "_"))()
            except Exception as exc:  # noqa: BLE001 - a fault that could not be played is counted, the run goes on
                self.tally.counts["fault errors"] += 1
                self.tally.examples.setdefault(f"fault error ({fault})", f"{type(exc).__name__}: {exc}"[:300])

    async def _link(self, a: str, b: str, bandwidth_bps: float) -> None:
        r = await self.api.post("/v1/emulation/links", json={"a": a, "b": b, "bandwidth_bps": bandwidth_bps})
        r.raise_for_status()
        if (a, b) == ("phone", "edge"):
            self.phone_edge_bps = bandwidth_bps

    async def _kill_worker(self, nodes: list[str]) -> str | None:
        """SIGKILL one of `nodes` that has a process; its name (None: none had one)."""
        status = await self.daemon.status(self.api)
        pids = {n["name"]: n["pid"] for n in status["nodes"] if n["pid"] and n["name"] in nodes}
        if not pids:
            return None
        name = self.rng.choice(sorted(pids))
        try:
            os.kill(pids[name], signal.SIGKILL)
        except ProcessLookupError:           # died meanwhile (a fault before): the daemon restarts it anyway
            pass
        return name

    async def fault_kill(self) -> None:
        status = await self.daemon.status(self.api)
        await self._kill_worker(sorted(set(status["plan"]["assignment"])))

    async def fault_cut(self) -> None:
        await self._link("phone", "edge", PHONE_EDGE_BPS / 20)

    async def fault_stall(self) -> None:
        await self._link("phone", "edge", 1e3)
        await asyncio.sleep(3.0)
        await self._link("phone", "edge", PHONE_EDGE_BPS)

    async def fault_restore(self) -> None:
        await self._link("phone", "edge", PHONE_EDGE_BPS)
        await self._link("edge", "cloud", EDGE_CLOUD_BPS)

    async def fault_bad(self) -> None:
        for name, raw, want in bad_inputs(self.images[0]):
            r = await self.api.post("/v1/requests", content=raw, headers={"content-type": "application/json"})
            ok = r.status_code == want and _json(r).get("detail")
            self.tally.bad["as documented" if ok else f"{name}: {r.status_code}"] += 1

    async def fault_daemon_kill(self) -> None:
        self.tally.daemon_restarts.append(await self.daemon.kill_and_restart(self.api))

    async def fault_db_outage(self) -> None:
        """Cut the database for 5-10 s; how many requests were served meanwhile, and when it was written."""
        seconds = self.rng.uniform(5.0, 10.0)
        served_before = self.tally.counts["served"]
        self.history.cut()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.history.restore()
        # compared with the run's mean rate in the report: the daemon must keep serving, not only survive
        self.tally.outages.append({"seconds": round(seconds, 1),
                                   "served_meanwhile": self.tally.counts["served"] - served_before})

    async def fault_switch_kill(self) -> None:
        """Move phone-edge to the other side of the plans' crossover, wait for the daemon's decision to switch
        (it decides, then prepares and commits), and SIGKILL a worker of the new plan at that moment."""
        status = await self.daemon.status(self.api)
        seen = {d["at"] for d in status["decisions"]}
        target = PHONE_EDGE_BPS if self.phone_edge_bps < PHONE_EDGE_BPS else CUT_BPS
        await self._link("phone", "edge", target)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 40.0:
            status = await self.daemon.status(self.api)
            new = [d for d in status["decisions"] if d["at"] not in seen and d.get("apply")]
            if new:
                victim = await self._kill_worker(sorted(set(new[-1]["assignment"])))
                self.tally.switch_kills.append({"caught": True, "after_s": round(time.monotonic() - t0, 2),
                                                "victim": victim, "bandwidth_bps": target})
                return
            await asyncio.sleep(0.1)
        victim = await self._kill_worker(sorted(set(status["plan"]["assignment"])))     # no switch: kill anyway
        self.tally.switch_kills.append({"caught": False, "victim": victim, "bandwidth_bps": target})


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _match(answered: list[tuple[int, float]], rows: list[tuple[int | None, float]]) -> dict[str, int]:
    """Every 200 answer is a `runs` row with its plan version and latency (the same float: JSON keeps it)."""
    left = Counter(rows)
    missing = 0
    for a in answered:
        if left[a] > 0:
            left[a] -= 1
        else:
            missing += 1
    return {"runs_rows": len(rows), "answers_200": len(answered), "answers_without_row": missing,
            "rows_without_answer": sum(left.values())}


def _pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * q))], 4) if xs else None


async def soak(minutes: float, streams: int, fault_every: float, seed: int, db: str,
               faults: tuple[str, ...], verbose: bool = False) -> dict[str, Any]:
    from orchestrator.demo import unsplit_captions, write_test_images
    from orchestrator.network import load_network
    from profiler.models import load_adapter
    from profiler.profile import load_profile
    from runtime.stages import dilation_factor

    run_dir = Path(tempfile.mkdtemp(prefix="aiflow-soak-"))
    paths = [im.path for im in write_test_images(run_dir, 4)]
    reference = unsplit_captions(load_adapter("tiny-captioner"), paths)
    profile, net = load_profile(PROFILE), load_network(NETWORK)
    k = min(dilation_factor(profile, net, profile.hardware_classes[0]), 6.0)
    history = History(db, run_dir)
    if not history.can_cut:
        faults = tuple(f for f in faults if f != "db-outage")
    args = ["--model", "tiny-captioner", "--network", str(NETWORK), "--profile", str(PROFILE),
            "--probe-interval", "2", "--solve-interval", "10", "--dilation", f"{k:.6g}", "--url", history.url,
            "--request-timeout", f"{DEADLINE_S:g}",
            "--state-dir", str(run_dir / "state")] + (["-v"] if verbose else [])
    env = {key: v for key, v in os.environ.items() if key not in ("AIFLOW_STATE_DIR", "AIFLOW_DATABASE_URL")}
    daemon = DaemonProcess(args, run_dir, env)
    load_start = os.getloadavg()
    started = await daemon.start()
    pids: list[int] = []
    limits = httpx.Limits(keepalive_expiry=2.0)       # under uvicorn's 5 s: never reuse a connection it closed
    try:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=60, trust_env=False, limits=limits) as api:
            run = Soak(daemon, history, api, [base64.b64encode(p.read_bytes()).decode() for p in paths], reference,
                       faults, random.Random(seed), time.monotonic() + 60 * minutes)
            await asyncio.gather(run.injector(fault_every), *(run.stream(j, streams) for j in range(streams)))
            pids = [n["pid"] for n in (await daemon.status(api))["nodes"] if n["pid"]]
            final = await daemon.stop(api)
    except BaseException:
        daemon.kill_all(pids)
        history.close()
        raise
    rows = history.runs()
    history.close()
    print(f"bench.soak: the daemons' logs are in {run_dir} (daemon-N.log, state/logs/)", flush=True)
    t = run.tally
    c = daemon.counters
    return {"minutes": minutes, "streams": streams, "fault_every_s": fault_every, "seed": seed, "dilation": k,
            "db": db, "faults_drawn_from": list(faults), "counts": dict(t.counts),
            "retried": int(c.get("aiflow_requests_total{outcome=retried}", 0)),
            "faults": dict(t.faults), "bad_inputs": dict(t.bad),
            "worker_restarts": {key.split("node=")[1].rstrip("}"): int(v) for key, v in c.items()
                                if key.startswith("aiflow_worker_restarts_total")},
            "plan_switches": {key.split("outcome=")[1].rstrip("}"): int(v) for key, v in c.items()
                              if key.startswith("aiflow_plan_switches_total")},
            "history_errors": int(c.get("aiflow_history_errors_total", 0)),
            "history_dropped": int(c.get("aiflow_history_dropped_total", 0)),
            "first_start_s": round(started, 2), "daemon_restarts": t.daemon_restarts, "db_outages": t.outages,
            "switch_kills": t.switch_kills, "history": _match(t.answered, rows), "final_stop": final,
            "latency_p50_s": _pct(t.latencies, 0.5), "latency_p95_s": _pct(t.latencies, 0.95),
            "wall_p50_s": _pct(t.wall, 0.5), "wall_p95_s": _pct(t.wall, 0.95),
            "load_average": {"start": [round(x, 2) for x in load_start],
                             "end": [round(x, 2) for x in os.getloadavg()],
                             "during_mean_1m": round(statistics.mean(t.load), 2) if t.load else None,
                             "during_max_1m": round(max(t.load), 2) if t.load else None},
            "daemon_log_warnings": _log_warnings(run_dir),
            "examples": t.examples, "at": datetime.now(UTC).isoformat(),
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}


def _log_warnings(run_dir: Path) -> dict[str, int]:
    """Lines of the daemons' and the workers' logs that say something went wrong inside, by their first words."""
    found: Counter[str] = Counter()
    for log in sorted(run_dir.glob("daemon-*.log")) + sorted(run_dir.glob("state/logs/*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if any(w in line for w in ("Traceback", "Task exception", "Task was destroyed", "ERROR", "Error")):
                found[line.strip()[:100]] += 1
    return dict(found.most_common(20))


def report(r: dict[str, Any]) -> str:
    c, h = r["counts"], r["history"]
    restarts = [d["restart_s"] for d in r["daemon_restarts"]]
    lines = [f"# Soak: mixed faults under load ({r['minutes']:g} min, {r['streams']} streams, a fault every "
             f"{r['fault_every_s']:g} s, seed {r['seed']}, history on {r['db']})", "",
             "| served | served after client retry | retried by the daemon | failed (clear error) | lost | wrong |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {c.get('served', 0)} | {c.get('served after client retry', 0)} | {r['retried']} | "
             f"{c.get('failed', 0)} | {c.get('lost', 0)} | {c.get('wrong', 0)} |", "",
             "| fault | times |", "|---|---:|"]
    lines += [f"| {f} | {n} |" for f, n in sorted(r["faults"].items())]
    lines += ["", f"Daemon restarts (SIGKILL to serving again): {restarts} s; every worker adopted (same pids): "
              f"{all(d['same_pids'] for d in r['daemon_restarts'])}.",
              f"Database outages: {r['db_outages']} (served per second over the whole run: "
              f"{c.get('served', 0) / (60 * r['minutes']):.2f}).",
              f"Switch-kills: {r['switch_kills']}.",
              f"History: {h['runs_rows']} `runs` rows, {h['answers_200']} answers 200; answers without their row: "
              f"{h['answers_without_row']}; rows without an answer: {h['rows_without_answer']}; history write "
              f"errors {r['history_errors']}, records dropped {r['history_dropped']}.",
              f"Bad input bursts: {dict(r['bad_inputs'])}; worker restarts: {r['worker_restarts']}; plan switches: "
              f"{r['plan_switches']}.",
              f"Latency of served requests (emulated network's, wall / K = {r['dilation']:.3g}): p50 "
              f"{r['latency_p50_s']} s, p95 {r['latency_p95_s']} s; at the client (wall, retries included): p50 "
              f"{r['wall_p50_s']} s, p95 {r['wall_p95_s']} s.",
              f"Load average: {r['load_average']} ({r['cpus']} CPUs).",
              f"Clean stop at the end: {r['final_stop']}.", ""]
    if r["examples"]:
        lines += ["Examples of answers that were not served:", ""]
        lines += [f"- {k}: {v}" for k, v in r["examples"].items()]
    if r["daemon_log_warnings"]:
        lines += ["", "Log lines (daemon and workers) that look like errors (count):", ""]
        lines += [f"- {n} x `{k}`" for k, n in r["daemon_log_warnings"].items()]
    return "\n".join(lines) + "\n"


def choose_db(wanted: str) -> str:
    """postgres when asked or when it answers (auto); say which and why."""
    if wanted == "sqlite":
        return "sqlite"
    why = postgres_reachable()
    if why is None:
        return "postgres"
    if wanted == "postgres":
        raise SystemExit(f"bench.soak: --db postgres: no PostgreSQL at 127.0.0.1:5432 ({why})")
    print(f"bench.soak: no PostgreSQL at 127.0.0.1:5432 ({why}): history on SQLite, no db-outage fault", flush=True)
    return "sqlite"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--streams", type=int, default=3)
    ap.add_argument("--fault-every", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--db", choices=("auto", "postgres", "sqlite"), default="auto",
                    help="history database: PostgreSQL at 127.0.0.1:5432 (auto: when it answers) or SQLite")
    ap.add_argument("--faults", default=",".join(FAULTS), help="the faults drawn from, comma-separated")
    ap.add_argument("--verbose", "-v", action="store_true", help="the daemon logs every decision and switch")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where soak.json and .md go")
    a = ap.parse_args(argv)
    faults = tuple(f.strip() for f in a.faults.split(",") if f.strip())
    if unknown := set(faults) - set(FAULTS):
        ap.error(f"--faults: unknown {sorted(unknown)}; known: {', '.join(FAULTS)}")
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    db = choose_db(a.db)
    print(f"bench.soak: history on {db}", flush=True)
    result = asyncio.run(soak(a.minutes, a.streams, a.fault_every, a.seed, db, faults, a.verbose))
    md = report(result)
    write_results(a.out, "soak", result, md)
    print(md)
    return result


if __name__ == "__main__":
    main()
