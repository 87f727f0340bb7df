"""The daemon end to end, driven through its HTTP API with local worker processes on an emulated network:
a link cut 20-fold is noticed by probing and the plan migrates with no request lost or wrong; a
switch with requests in flight; a killed worker is restarted; history rows; graceful stop."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from orchestrator.daemon.api import create_app
from orchestrator.daemon.dashboard import dashboard_state
from orchestrator.daemon.service import Daemon
from orchestrator.daemon.settings import DaemonSettings
from orchestrator.demo import unsplit_captions, write_test_images
from orchestrator.network import load_network
from orchestrator.store import Store, queries
from profiler.models import load_adapter
from profiler.profile import load_profile
from runtime.stages import dilation_factor
from tests.orchestrator.test_store_postgres import pg_url, server  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "examples" / "tiny-captioner.profile.json"
NETWORK = ROOT / "examples" / "daemon.network.yaml"
PROBE_S = 1.5


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    folder = tmp_path_factory.mktemp("daemon-images")
    paths = [im.path for im in write_test_images(folder, 4)]
    return paths, unsplit_captions(load_adapter("tiny-captioner"), paths)


def body(path: Path) -> dict[str, str]:
    return {"image": base64.b64encode(path.read_bytes()).decode()}


# SQLite only: the daemon on PostgreSQL is tested through a server restart in test_history_outage.py,
# and the store's every query in test_store_postgres.py (one scenario less keeps `make test` in budget).
@pytest.mark.parametrize("database", ["sqlite"])
def test_daemon_adapts_migrates_and_recovers(tmp_path: Path, images: tuple[list[Path], list[str]], database: str,
                                             request: pytest.FixtureRequest) -> None:
    paths, reference = images
    profile = load_profile(PROFILE)
    net = load_network(NETWORK)
    # K as low as this machine can play the phone and the edge: the cloud's tiny units may overrun their
    # stretched time (counted in overrun_s); no assertion below depends on the cloud's compute time
    k = min(dilation_factor(profile, net, profile.hardware_classes[0]), 6.0)
    url = f"sqlite:///{tmp_path / 'history.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    store = Store.open(url)
    settings = DaemonSettings(probe_interval_s=PROBE_S, solve_interval_s=5.0, drain_s=20.0)
    daemon = Daemon("tiny-captioner", net, profile, load_adapter("tiny-captioner"), settings=settings,
                    store=store, dilation=k)
    outputs: list[tuple[int, str, str, float, float]] = []       # (version, caption, reference, measured, predicted)

    async def scenario() -> None:
        await daemon.start()
        pids = {s.name: s.pid for s in daemon.nodes.values()}
        app = create_app(daemon)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://daemon", timeout=120) as api:
            async def ask(i: int) -> dict:
                r = await api.post("/v1/requests", json=body(paths[i % 4]))
                assert r.status_code == 200, r.text
                j = r.json()
                outputs.append((j["plan_version"], j["output"], reference[i % 4], j["latency_s"],
                                j["predicted_latency_s"]))
                return j

            status = (await api.get("/v1/status")).json()
            v1 = status["plan"]
            assert v1["version"] == 1 and set(v1["assignment"]) != {"phone"}     # the first plan offloads
            assert {n["name"]: n["state"] for n in status["nodes"]} == {"phone": "up", "edge": "up", "cloud": "up"}
            for i in range(3):
                await ask(i)

            # -- a step: phone-edge cut 20-fold; the daemon is not told --------------------------------
            r = await api.post("/v1/emulation/links", json={"a": "phone", "b": "edge", "bandwidth_bps": 1e6})
            assert r.status_code == 200
            t_cut = datetime.now(UTC)
            for i in range(40):
                j = await ask(i)
                if j["plan_version"] > 1:
                    break
            plan = (await api.get("/v1/plan")).json()
            assert plan["version"] == 2, "the daemon never switched plans"
            # noticed by probing, under load: a request must cross the cut link (2-3 s of wall time here),
            # then a probe round confirms it and re-solves at once. At the default 5 s interval that is
            # within two intervals (bench/daemon.py reports the figure); on a loaded 2-core CI machine a
            # confirmation can miss, and the scheduled re-solve is the fallback: bounded by both.
            switched_after = (datetime.fromisoformat(plan["applied_at"]) - t_cut).total_seconds()
            decided = [(d["at"], d["trigger"], d["reason"]) for d in daemon.decisions]
            assert switched_after < 6 * PROBE_S + settings.solve_interval_s, (switched_after, decided)
            assert plan["assignment"] == ["phone"] * len(plan["assignment"])
            steady = [await ask(i) for i in range(4)]
            ratios = [s["latency_s"] / s["predicted_latency_s"] for s in steady]
            assert 0.85 <= statistics.median(ratios) <= 1.15, (ratios, daemon.slowdown)

            # -- a switch with requests in flight: the link comes back, streams of requests keep going ----
            await api.post("/v1/emulation/links", json={"a": "phone", "b": "edge", "bandwidth_bps": 2e7})
            spans: list[tuple[datetime, datetime, int]] = []

            async def stream(j: int) -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    answer = await ask(j)
                    version, t1 = answer["plan_version"], datetime.now(UTC)
                    # when the daemon sent it on its plan (the HTTP call began earlier, before its decoding)
                    spans.append((t1 - timedelta(seconds=answer["wall_s"]), t1, version))
                    if version == 3:
                        return

            await asyncio.gather(*(stream(j) for j in range(3)))
            assert daemon.current.number == 3
            switched_at = daemon.current.applied_at
            overlapping = [v for t0, t1, v in spans if t0 < switched_at < t1]
            assert overlapping and set(overlapping) == {2}       # in flight at the switch: finished on v2

            # -- a worker killed: restarted and used again ------------------------------------------------
            os.kill(pids["edge"], signal.SIGKILL)
            for _ in range(int(10 * PROBE_S / 0.25)):
                await asyncio.sleep(0.25)
                if daemon.nodes["edge"].pid != pids["edge"] and daemon.nodes["edge"].state == "up":
                    break
            assert daemon.nodes["edge"].pid != pids["edge"] and daemon.nodes["edge"].state == "up"
            await asyncio.sleep(PROBE_S)
            await ask(1)

            # the dashboard's state agrees with what happened: three switches and the plan re-applied at the
            # restarted worker's new address (v4), every request, the decisions
            board = (await api.get("/v1/dashboard")).json()
            assert board["plan"]["version"] == 4 and [s["version"] for s in board["switches"]] == [1, 2, 3, 4]
            # (concurrent requests may be answered in another order than they were logged)
            logged = sorted((p["version"], p["latency_s"]) for p in board["requests"])
            assert logged == sorted((o[0], o[3]) for o in outputs)
            switched = [d["switched_to"] for d in board["decisions"] if d["outcome"] == "switched"]
            assert switched == [v for v in (1, 2, 3) if v in switched] and 3 in switched
            assert all(d["outcome"] == "kept" for d in board["decisions"] if not d["apply"])
            metrics = (await api.get("/metrics")).text
            assert 'aiflow_plan_switches_total{outcome="applied"}' in metrics
            assert "aiflow_link_bandwidth_bps" in metrics and "aiflow_node_slowdown" in metrics
            assert 'aiflow_worker_restarts_total{node="edge"} 1.0' in metrics
        final_pids = [s.pid for s in daemon.nodes.values()]
        assert dashboard_state(daemon, with_requests=False)["plan"]["nodes"]["phone"]["units"] \
            == [u for u, n in enumerate(daemon.current.plan.assignment) if n == "phone"]
        await daemon.drain()
        await daemon.close()
        assert not any(alive(p) for p in final_pids)

    try:
        asyncio.run(scenario())
    finally:
        if daemon.workers is not None:
            daemon.workers.stop()
    # nothing lost, nothing wrong
    assert outputs and all(o[1] == o[2] for o in outputs), [o for o in outputs if o[1] != o[2]]
    with store.engine.connect() as c:
        applied = c.execute(text("SELECT COUNT(*) FROM decisions WHERE applied")).scalar()
        apps = c.execute(text("SELECT version, outcome FROM plan_applications ORDER BY id")).all()
        runs = c.execute(text("SELECT COUNT(*), COUNT(DISTINCT plan_version) FROM runs")).one()
        probes = c.execute(text("SELECT COUNT(*) FROM probes WHERE kind LIKE 'estimate:%'")).scalar()
        nodes = c.execute(text("SELECT COUNT(*) FROM node_samples WHERE node = 'edge'")).scalar()
        decisions = queries.history(c, "decisions", limit=None)
        switches = queries.history(c, "migrations", limit=None)
        check_named_queries(c)
    store.close()
    # the named queries agree with the raw rows
    assert sum(d["applied"] for d in decisions) == applied and decisions[-1]["trigger"] == "start"
    # v4: the plan in force applied again at the restarted worker's new address
    assert [m["version"] for m in switches] == [4, 3, 2, 1]
    assert switches[-1]["previous"] is None and switches[2]["placement"] == "phone[0-9]"
    assert switches[1]["previous"] == "phone[0-9]" and switches[0]["placement"] == switches[1]["placement"]
    assert all(m["duration_s"] >= 0 and m["runs_during"] >= 0 for m in switches)
    assert applied == 3 and [v for v, _ in apps] == [1, 2, 3, 4]
    assert all(o is not None and o.startswith(("switched", "applied")) for _, o in apps)
    assert runs[0] == len(outputs) and runs[1] == 4
    assert probes > 0 and nodes > 0


def test_daemon_cli_serves_reports_status_and_stops_cleanly(tmp_path: Path) -> None:
    """`aiflow daemon` as a user runs it: one serving line, `aiflow status` reads it, SIGTERM stops it
    and every worker it started, exit 0."""
    secrets = ("api-secret-7f3a9c", "worker-secret-2b8e4d", "controller-secret-5c1d0e")
    env = dict(os.environ, AIFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'h.db'}", AIFLOW_CONTROLLER_TOKEN=secrets[2])
    aiflow = str(Path(sys.executable).parent / "aiflow")
    proc = subprocess.Popen([aiflow, "daemon", "--model", "tiny-captioner", "--network", str(NETWORK),
                             "--profile", str(PROFILE), "--api", "127.0.0.1:0", "--probe-interval", "2",
                             "--token", secrets[0], "--worker-token", secrets[1], "--request-timeout", "90",
                             "--max-retries", "1", "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("aiflow daemon: serving http://127.0.0.1:"), (line, proc.stderr.read())
        url = line.split()[-1]
        st = subprocess.run([aiflow, "status", "--url", url, "--json"], capture_output=True, text=True, env=env,
                            timeout=60)
        assert st.returncode == 0, st.stderr
        import json
        doc = json.loads(st.stdout)
        pids = [n["pid"] for n in doc["nodes"]]
        assert len(pids) == 3 and all(alive(p) for p in pids)
        assert doc["settings"]["request_timeout_s"] == 90 and doc["settings"]["max_retries"] == 1
        shown = subprocess.run([aiflow, "status", "--url", url], capture_output=True, text=True, env=env, timeout=60)
        assert "plan v1" in shown.stdout and "phone" in shown.stdout
        live = subprocess.run([aiflow, "plan", "show", "--live", "--url", url], capture_output=True, text=True,
                              env=env, timeout=60)
        assert live.returncode == 0 and "v1" in live.stdout, live.stderr
        # state changes need the token; a wrong one is refused, and no secret is echoed back
        assert httpx.post(f"{url}/v1/resolve", timeout=60, trust_env=False).status_code == 401
        wrong = httpx.post(f"{url}/v1/resolve", headers={"Authorization": "Bearer nope"}, timeout=60, trust_env=False)
        assert wrong.status_code == 403 and not any(x in wrong.text for x in secrets)
        ok = httpx.post(f"{url}/v1/resolve", headers={"Authorization": f"Bearer {secrets[0]}"}, timeout=60,
                        trust_env=False)
        assert ok.status_code == 200
        # a worker killed (warnings logged, plan re-applied) and bad requests: none of it shows a secret
        os.kill(pids[1], signal.SIGKILL)
        bad = httpx.post(f"{url}/v1/requests", json={"image": "nope"}, timeout=60, trust_env=False,
                         headers={"Authorization": f"Bearer {secrets[0]}"})
        assert bad.status_code == 422 and not any(x in bad.text for x in secrets)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            doc = json.loads(subprocess.run([aiflow, "status", "--url", url, "--json"], capture_output=True,
                                            text=True, env=env, timeout=60).stdout)
            if doc["plan"]["version"] > 1 and all(n["state"] == "up" for n in doc["nodes"]):
                break
            time.sleep(0.5)
        assert not any(x in json.dumps(doc) for x in secrets)
        pids = [n["pid"] for n in doc["nodes"]]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        time.sleep(0.5)
        assert not any(alive(p) for p in pids)
        gone = subprocess.run([aiflow, "status", "--url", url], capture_output=True, text=True, env=env, timeout=60)
        assert gone.returncode == 2 and "no aiflow daemon answers" in gone.stderr
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr
        # secrets appear nowhere: not in the daemon's log, not in the history database
        history = b"".join(f.read_bytes() for f in tmp_path.glob("h.db*") if f.is_file())   # the WAL file too
        worker_logs = b"".join(f.read_bytes() for f in (tmp_path / "h.db.state" / "logs").glob("*.log"))
        for secret in secrets:
            assert secret not in stderr and secret.encode() not in history and secret.encode() not in worker_logs
        # the workers' credentials file (mode 0600) is gone with them
        assert not list((tmp_path / "h.db.state").glob("workers-*.secret"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_worker_joins_and_profiles_its_own_hardware(tmp_path: Path, images: tuple[list[Path], list[str]]) -> None:
    """`aiflow worker --join URL`: the daemon re-solves and uses the node (a fast class, one short link from
    the phone); it leaves the plan when it stops answering and is used again when it returns. A hardware
    class the profile lacks is measured by the joined worker on its own hardware and merged."""
    paths, reference = images
    profile = load_profile(PROFILE)
    net = load_network(NETWORK)
    store = Store.open(f"sqlite:///{tmp_path / 'history.db'}")
    settings = DaemonSettings(probe_interval_s=2.0, solve_interval_s=60.0)
    daemon = Daemon("tiny-captioner", net, profile, load_adapter("tiny-captioner"), settings=settings, store=store,
                    dilation=min(dilation_factor(profile, net, profile.hardware_classes[0]), 6.0),
                    token="join-test-token")
    aiflow = str(Path(sys.executable).parent / "aiflow")
    stop = asyncio.Event()
    joined: dict[str, object] = {}

    async def start_worker(url: str) -> tuple[asyncio.subprocess.Process, str]:
        proc = await asyncio.create_subprocess_exec(
            aiflow, "worker", "--name", "edge2", "--model", "tiny-captioner", "--token", "join-test-token",
            "--join", url, "--hardware", "h200", "--mem-bytes", "4e9", "--tier", "edge",
            "--link", "phone=1e8,0.001", "--link", "cloud=1e8,0.02",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        lines: list[str] = []
        while not any(x.startswith(("JOINED", "aiflow: error")) for x in lines):
            line = (await asyncio.wait_for(proc.stdout.readline(), 300)).decode()
            assert line, (await proc.stderr.read()).decode()
            lines.append(line)
        return proc, lines[-1]

    async def wait_for(condition: object, seconds: float = 30) -> bool:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return bool(condition())

    async def scenario(url: str) -> None:
        proc, line = await start_worker(url)
        try:
            assert line.startswith("JOINED") and "in the profile" in line, line
            # a class the profile lacks: the joined worker measures every unit on its own hardware
            how = await daemon._profile_hardware("edge2", daemon.nodes["edge2"].address, "cpu-joined")
            joined["profiled"] = how
            joined["hardware"] = "cpu-joined" in daemon.profile.hardware_classes
            joined["node"] = daemon.nodes["edge2"].state
            async with httpx.AsyncClient(base_url=url, timeout=120, trust_env=False) as api:
                status = (await api.get("/v1/status")).json()
                joined["nodes"] = [n["name"] for n in status["nodes"]]
                joined["assignment"] = status["plan"]["assignment"]
                r = await api.post("/v1/requests", json=body(paths[0]))
                joined["caption"] = r.json()["output"]
                # a second join under a taken name that is a local worker is refused with a reason
                bad = await api.post("/v1/nodes", json={"name": "phone", "hardware": "x", "mem_bytes": 1,
                                                        "address": "127.0.0.1:1", "links": []})
                joined["refusal"] = (bad.status_code, bad.json()["detail"])
                # the joined node stops answering: taken out of the plan at once; requests still right
                proc.kill()
                await proc.wait()
                joined["left"] = await wait_for(lambda: daemon.nodes["edge2"].state == "down"
                                                and "edge2" not in daemon.current.plan.assignment)
                r = await api.post("/v1/requests", json=body(paths[1]))
                joined["caption_without"] = r.json()["output"]
                # it comes back (joins again under its name): used again
                proc, line = await start_worker(url)
                joined["again"] = line
                joined["back"] = await wait_for(lambda: daemon.nodes["edge2"].state == "up"
                                                and "edge2" in daemon.current.plan.assignment)
                triggers = [d["trigger"] for d in daemon.decisions if d["apply"]]
                joined["triggers"] = triggers
        finally:
            proc.terminate()
            await proc.wait()
            stop.set()

    async def main() -> None:
        from orchestrator.daemon.run import serve

        tasks = []            # held, so the scenario is not garbage-collected while it runs

        def ready(url: str) -> None:
            tasks.append(asyncio.get_running_loop().create_task(scenario(url)))

        await serve(daemon, "127.0.0.1", 0, on_ready=ready, stop=stop)

    asyncio.run(main())
    with store.engine.connect() as c:
        (network,) = c.execute(text("SELECT network FROM daemon_states")).one()
    store.close()
    network = json.loads(network) if isinstance(network, str) else network
    assert "edge2" in [n["name"] for n in network["nodes"]]            # a daemon resuming this one knows it
    assert joined["profiled"] == "measured on edge2" and joined["hardware"] and joined["node"] == "up"
    assert "edge2" in joined["nodes"] and "edge2" in joined["assignment"]     # a fast, near node: used
    assert joined["caption"] == reference[0]
    assert joined["refusal"][0] == 422 and "local worker" in joined["refusal"][1]
    assert joined["left"] and joined["caption_without"] == reference[1]
    assert joined["again"].startswith("JOINED") and joined["back"]
    assert joined["triggers"][-2:] == ["node-down", "node-up"], joined["triggers"]


def test_a_killed_daemon_leaves_no_worker_behind(tmp_path: Path) -> None:
    """SIGKILL gives the daemon no chance to stop its workers: they keep running (so a new daemon could adopt
    them) until no call from a controller came for --worker-lease seconds, then exit by themselves."""
    env = dict(os.environ, AIFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'h.db'}")
    aiflow = str(Path(sys.executable).parent / "aiflow")
    lease_s = 6.0
    proc = subprocess.Popen([aiflow, "daemon", "--model", "tiny-captioner", "--network", str(NETWORK),
                             "--profile", str(PROFILE), "--api", "127.0.0.1:0", "--probe-interval", "1",
                             "--worker-lease", str(lease_s), "--state-dir", str(tmp_path / "state")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    pids: list[int] = []
    try:
        url = proc.stdout.readline().split()[-1]
        doc = httpx.get(f"{url}/v1/status", timeout=30, trust_env=False).json()
        pids = [n["pid"] for n in doc["nodes"]]
        assert all(alive(p) for p in pids)
        time.sleep(lease_s + 1)                          # the daemon's health checks keep them leased
        assert all(alive(p) for p in pids)
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        time.sleep(1.0)
        assert all(alive(p) for p in pids)               # still there for the next daemon to adopt
        deadline = killed + lease_s + 15
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(p) for p in pids)
        logs = "".join(f.read_text() for f in (tmp_path / "state" / "logs").glob("*.log"))
        assert logs.count("no controller call for") == len(pids), logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:                                 # not our children: stopped by pid if still there
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def check_named_queries(c) -> None:
    """Every named query over the history a real daemon wrote, against values computed here from the raw rows."""
    import numpy as np

    raw = c.execute(text("SELECT plan_version, measured_s, predicted_s FROM runs")).all()
    apps = c.execute(text("SELECT version, applied_at, plan_id, decision_id FROM plan_applications ORDER BY id")).all()
    gains = dict(c.execute(text("SELECT id, gain_s FROM decisions")).all())
    plans = queries.history(c, "plans", limit=None)
    assert [p["version"] for p in plans] == [a.version for a in reversed(apps)]
    for p in plans:
        assert p["requests"] == sum(r.plan_version == p["version"] for r in raw)
    by_version = {p["version"]: p for p in plans}
    for a, b in zip(apps, apps[1:], strict=False):
        assert by_version[a.version]["lasted_s"] == pytest.approx(
            (queries.history(c, "plans", limit=None, filters=queries.Filters(plan=b.version))[0]["applied_at"]
             - by_version[a.version]["applied_at"]).total_seconds())
        assert by_version[b.version]["predicted_gain_s"] == gains[b.decision_id]
    solves = queries.history(c, "solves", limit=None)
    assert len(solves) == c.execute(text("SELECT COUNT(*) FROM plans")).scalar()
    assert {s["id"] for s in solves if s["applied"]} == {a.plan_id for a in apps}
    assert all(s["why"] for s in solves)  # every daemon solve has its decision's reason
    summary = {r["plan_version"]: r for r in queries.requests_summary(c)}
    for version, row in summary.items():
        m = np.array([r.measured_s for r in raw if r.plan_version == version])
        ratio = np.array([r.measured_s / r.predicted_s for r in raw if r.plan_version == version])
        assert row["requests"] == len(m) and row["p90_s"] == pytest.approx(np.percentile(m, 90))
        assert row["ratio_median"] == pytest.approx(np.median(ratio))
    probes = c.execute(text("SELECT link, bandwidth_bps FROM probes")).all()
    for row in queries.links_summary(c, window_s=86400):
        bw = np.array([p.bandwidth_bps for p in probes if p.link == row["link"]])
        assert row["samples"] == len(bw) and row["bandwidth_p50_bps"] == pytest.approx(np.percentile(bw, 50))
    samples = dict(c.execute(text("SELECT node, COUNT(*) FROM node_samples GROUP BY node")).all())
    assert {r["node"]: r["samples"] for r in queries.nodes_summary(c, window_s=86400)} == samples
    from orchestrator.store.tables import PlanRow, RunRow

    docs = {i: d for i, d in c.execute(select(PlanRow.id, PlanRow.document))}
    run_plans = [pid for (pid,) in c.execute(select(RunRow.plan_id))]
    for node in {n for d in docs.values() for n in d["assignment"]}:
        on_node = queries.history(c, "runs", limit=None, filters=queries.Filters(node=node))
        assert len(on_node) == sum(node in docs[pid]["assignment"] for pid in run_plans), node
