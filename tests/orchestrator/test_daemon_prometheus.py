"""A real Prometheus (Debian's package) scrapes a running daemon's /metrics, and `promtool check metrics`
accepts what it serves. Skips with the reason where the binaries are not installed (.ci/run installs them)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from orchestrator.daemon.service import Daemon
from orchestrator.daemon.settings import DaemonSettings
from orchestrator.network import load_network
from profiler.models import load_adapter
from profiler.profile import load_profile

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                    reason="prometheus and promtool are not installed (apt-get install prometheus)")
def test_prometheus_scrapes_the_daemon(tmp_path: Path) -> None:
    profile = load_profile(ROOT / "examples" / "tiny-captioner.profile.json")
    net = load_network(ROOT / "examples" / "daemon.network.yaml")
    daemon = Daemon("tiny-captioner", net, profile, load_adapter("tiny-captioner"),
                    settings=DaemonSettings(probe_interval_s=1.0), dilation=6.0)
    stop = asyncio.Event()
    found: dict[str, object] = {}

    async def scenario(url: str) -> None:
        host_port = url.removeprefix("http://")
        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text("global: {scrape_interval: 1s}\n"
                          "scrape_configs:\n"
                          f"  - job_name: aiflow\n    static_configs: [{{targets: ['{host_port}']}}]\n")
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                text = (await client.get(f"{url}/metrics")).text
                check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
                found["promtool"] = (check.returncode, check.stdout + check.stderr)
                for _ in range(120):
                    await asyncio.sleep(0.5)
                    try:
                        r = await client.get(f"http://127.0.0.1:{prom_port}/api/v1/query",
                                             params={"query": 'aiflow_plan_version{job="aiflow"}'})
                    except httpx.HTTPError:
                        continue
                    result = r.json().get("data", {}).get("result", [])
                    if result:
                        found["plan_version"] = float(result[0]["value"][1])
                        break
        finally:
            prom.terminate()
            prom.wait(timeout=30)
            stop.set()

    async def main() -> None:
        from orchestrator.daemon.run import serve

        tasks = []            # held, so the scenario is not garbage-collected while it runs
        await serve(daemon, "127.0.0.1", 0, stop=stop,
                    on_ready=lambda url: tasks.append(asyncio.get_running_loop().create_task(scenario(url))))

    asyncio.run(main())
    code, out = found["promtool"]
    assert code == 0, out
    assert found.get("plan_version") == 1.0
