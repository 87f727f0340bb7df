"""The pieces the soak (bench/soak.py) drives: the daemon as a process of its own (killed and started again
as an operator would), its Prometheus counters summed over its lives, and the history database it writes to
(PostgreSQL behind a proxy the soak can cut, or a SQLite file)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.tcp_proxy import Proxy, free_port
from runtime.local import same_process

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def scrape(text: str) -> Counter[str]:
    """Counters of a /metrics page as 'name{labels}' -> value (only the `_total` samples: what is summed)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_total"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] += s.value
    return out


class DaemonProcess:
    """`aiflow daemon` run as its own process on a fixed API port, so a client can reconnect to the same
    address after it was SIGKILLed and started again with the same arguments."""

    def __init__(self, args: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [str(Path(sys.executable).parent / "aiflow"), "daemon", *args, "--api", f"127.0.0.1:{self.port}"]
        self.log_dir, self.env = log_dir, env
        self.proc: subprocess.Popen[str] | None = None
        self.lives = 0
        # set while the API answers; cleared from the moment it is killed until its successor serves
        self.up = asyncio.Event()
        self.generation = 0          # bumped at each kill: a request sent before it may be retried
        self.counters: Counter[str] = Counter()       # the dead lives' counters, summed

    async def start(self, timeout_s: float = 300.0) -> float:
        """Start it and wait for its 'serving' line; the seconds that took."""
        t0 = time.monotonic()
        self.lives += 1
        log = open(self.log_dir / f"daemon-{self.lives}.log", "w")   # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env)
        log.close()
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)  # type: ignore[union-attr]
        if not line.startswith("aiflow daemon: serving"):
            tail = (self.log_dir / f"daemon-{self.lives}.log").read_text()[-3000:]
            raise RuntimeError(f"the daemon did not start: {line!r}\n{tail}")
        self.up.set()
        return time.monotonic() - t0

    async def metrics(self, api: httpx.AsyncClient) -> Counter[str]:
        r = await api.get("/metrics", timeout=30)
        return scrape(r.text)

    async def kill_and_restart(self, api: httpx.AsyncClient) -> dict[str, Any]:
        """SIGKILL, start again with the same arguments; the restart's time and whether every worker was
        adopted (the same pids before and after)."""
        assert self.proc is not None
        before = await self.status(api)
        self.counters += await self.metrics(api)          # this life's counters die with it
        self.up.clear()
        self.generation += 1
        killed_at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)
        self.proc.stdout.close()  # type: ignore[union-attr]
        await self.start()
        restart_s = time.monotonic() - killed_at
        after = await self.status(api)
        pids_before = {n["name"]: n["pid"] for n in before["nodes"]}
        pids_after = {n["name"]: n["pid"] for n in after["nodes"]}
        return {"restart_s": round(restart_s, 2), "adopted": after.get("adopted"),
                "same_pids": pids_before == pids_after, "pids_before": pids_before, "pids_after": pids_after,
                "resumed_from": after.get("resumed_from"), "plan_version_after": (after.get("plan") or {}).get(
                    "version")}

    async def status(self, api: httpx.AsyncClient) -> dict[str, Any]:
        r = await api.get("/v1/status", timeout=60)
        r.raise_for_status()
        return r.json()

    async def stop(self, api: httpx.AsyncClient) -> dict[str, Any]:
        """A clean stop (SIGTERM: drain, stop the workers); the final counters and any worker left running."""
        assert self.proc is not None
        status = await self.status(api)
        self.counters += await self.metrics(api)
        self.up.clear()
        self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(self.proc.wait, 120)
        pids = [n["pid"] for n in status["nodes"] if n["pid"]]
        await asyncio.sleep(2.0)
        return {"exit_code": rc, "workers_left_running": [p for p in pids if same_process(p, None)]}

    def kill_all(self, pids: list[int]) -> None:
        """After a failure: nothing of the soak's may outlive it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in pids:
            if same_process(pid, None):
                os.kill(pid, signal.SIGKILL)


class History:
    """The history database of one soak run: a fresh PostgreSQL schema reached through a proxy the soak cuts
    (`outage`), or a SQLite file (no outage: the file cannot go away the way a server does)."""

    def __init__(self, kind: str, run_dir: Path) -> None:
        self.kind = kind
        self.proxy: Proxy | None = None
        if kind == "sqlite":
            self.url = self.direct_url = f"sqlite:///{run_dir / 'history.db'}"
            return
        from sqlalchemy.engine import make_url

        self.schema = f"soak_{os.getpid()}"
        with _pg_connect() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        base = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={self.schema}"})
        self.proxy = Proxy(("127.0.0.1", 5432))
        self.proxy.start()
        self.direct_url = base.render_as_string(hide_password=False)
        self.url = base.set(port=self.proxy.port).render_as_string(hide_password=False)

    @property
    def can_cut(self) -> bool:
        return self.proxy is not None

    def cut(self) -> None:
        assert self.proxy is not None
        self.proxy.stop()

    def restore(self) -> None:
        assert self.proxy is not None
        self.proxy.start()

    def runs(self) -> list[tuple[int | None, float]]:
        """(plan_version, measured_s) of every `runs` row, read directly (not through the proxy)."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.direct_url)
        try:
            with engine.connect() as c:
                return [(v, float(s)) for v, s in c.execute(text("SELECT plan_version, measured_s FROM runs"))]
        finally:
            engine.dispose()

    def close(self) -> None:
        if self.proxy is None:
            return
        self.proxy.close()
        with _pg_connect() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def _pg_connect() -> Any:
    import psycopg

    return psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True, connect_timeout=3)


def postgres_reachable() -> str | None:
    """None when the soak's PostgreSQL answers, else why not (one line)."""
    try:
        _pg_connect().close()
    except Exception as exc:  # noqa: BLE001 - any failure means: use SQLite, and say why
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None
