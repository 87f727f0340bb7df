"""The history database goes away and comes back (connections cut, new ones refused, as in a PostgreSQL
restart) while the daemon records requests and probe rounds: nothing raises into the service, the records
are kept (bounded) and written when the database answers again, in order, with the times they happened.

The outage is real at the network level: the daemon reaches PostgreSQL through a TCP proxy (bench/tcp_proxy.py),
which the test stops (closing every connection) and starts again on the same port."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.tcp_proxy import Proxy
from orchestrator.daemon import spool
from orchestrator.daemon.kept import Kept, probe_record
from orchestrator.daemon.service import Daemon
from orchestrator.daemon.settings import DaemonSettings
from orchestrator.network import load_network
from orchestrator.store import Store
from profiler.models import load_adapter
from profiler.profile import load_profile
from runtime.client import RequestResult
from tests.orchestrator.test_store_postgres import pg_url, server  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]


def result(i: int) -> RequestResult:
    return RequestResult(f"r{i}", None, None, 1, 0.1 + i / 1000, 1.0, False, plan_version=1)


def test_history_survives_a_database_outage(pg_url: str) -> None:  # noqa: F811 - fixture
    url = make_url(pg_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    store = Store.open(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    settings = DaemonSettings(history_buffer=50)
    daemon = Daemon("tiny-captioner", load_network(ROOT / "examples" / "daemon.network.yaml"),
                    load_profile(ROOT / "examples" / "tiny-captioner.profile.json"), load_adapter("tiny-captioner"),
                    settings=settings, store=store)
    version = SimpleNamespace(number=1, plan_id=None)

    async def scenario() -> None:
        for i in range(3):                                    # the database answers
            await daemon._keep(daemon._run_record(f"caption {i}", result(i), version, 0.1, datetime.now(UTC)))
        proxy.stop()                                          # ... and goes away
        outage_started = datetime.now(UTC)
        for i in range(3, 43):
            await daemon._keep(daemon._run_record(f"caption {i}", result(i), version, 0.1, datetime.now(UTC)))
        await daemon._keep(probe_record(daemon.snapshot, *daemon._probe_rows(), datetime.now(UTC)))
        assert len(daemon._unwritten) == 41 and daemon.history_dropped == 0
        assert await daemon.flush_history() == 0              # still away: nothing written, nothing lost
        assert len(daemon._unwritten) == 41
        proxy.start()                                         # back
        assert await daemon.flush_history() == 41
        assert not daemon._unwritten
        with store.engine.connect() as c:
            rows = c.execute(text("SELECT output, created_at FROM runs ORDER BY id")).all()
            probes = c.execute(text("SELECT COUNT(*), MIN(measured_at) FROM probes")).one()
        assert [r.output for r in rows] == [f"caption {i}" for i in range(43)]         # all, in order
        written_late = [r.created_at for r in rows[3:]]
        assert all(t.replace(tzinfo=UTC) <= datetime.now(UTC) for t in written_late)
        assert written_late[0].replace(tzinfo=UTC) >= outage_started.replace(microsecond=0)
        assert probes[0] == len(daemon.links)

        # the buffer is bounded: a longer outage keeps the newest `history_buffer` records and counts the rest
        proxy.stop()
        for i in range(60):
            await daemon._keep(daemon._run_record(f"late {i}", result(i), version, 0.1, datetime.now(UTC)))
        assert len(daemon._unwritten) == 50 and daemon.history_dropped == 10
        proxy.start()
        assert await daemon.flush_history() == 50
        with store.engine.connect() as c:
            late = [o for (o,) in c.execute(text("SELECT output FROM runs WHERE output LIKE 'late%' ORDER BY id"))]
        assert late == [f"late {i}" for i in range(10, 60)]
        assert "aiflow_history_dropped_total 10.0" in daemon.metrics.render().decode()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
        proxy.close()


CHILD = """
import asyncio, sys, time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from orchestrator.daemon.service import Daemon
from orchestrator.network import load_network
from orchestrator.store import Store
from profiler.models import load_adapter
from profiler.profile import load_profile
from runtime.client import RequestResult

root, url, state_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
daemon = Daemon("tiny-captioner", load_network(root / "examples" / "daemon.network.yaml"),
                load_profile(root / "examples" / "tiny-captioner.profile.json"), load_adapter("tiny-captioner"),
                store=Store.open(url), state_dir=state_dir)
print("ready", flush=True)
sys.stdin.readline()                                   # the database has gone away


async def keep() -> None:
    for i in range(20):
        res = RequestResult(f"r{i}", None, None, 1, 0.1, 1.0, False, plan_version=1)
        await daemon._keep(daemon._run_record(f"kept {i}", res, SimpleNamespace(number=1, plan_id=None), 0.1,
                                              datetime.now(UTC)))

asyncio.run(keep())
print(len(daemon._unwritten), flush=True)
time.sleep(600)                                        # killed here, mid-outage
"""


def test_a_daemon_killed_during_an_outage_leaves_its_records_to_the_next(pg_url: str,  # noqa: F811 - fixture
                                                                         tmp_path: Path) -> None:
    """The records a daemon keeps while the database is away are in its spool file at once: SIGKILLed during
    the outage, it loses none; the next daemon with the same state folder writes them, in order. A spool
    whose daemon is alive is never taken."""
    url = make_url(pg_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    state_dir = tmp_path / "state"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), through_proxy, str(state_dir)], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    store = Store.open(through_proxy)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        proxy.stop()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "20"                   # all kept, none written
        [spooled] = state_dir.glob(spool.PATTERN)
        taken: list[Kept] = []
        assert spool.adopt(state_dir, store.url, taken.append) == 0 and spooled.exists()   # its daemon is alive
        child.kill()
        child.wait(timeout=10)

        proxy.start()
        daemon = Daemon("tiny-captioner", load_network(ROOT / "examples" / "daemon.network.yaml"),
                        load_profile(ROOT / "examples" / "tiny-captioner.profile.json"),
                        load_adapter("tiny-captioner"), store=store, state_dir=state_dir)
        daemon._adopt_spooled()
        assert len(daemon._unwritten) == 20 and not spooled.exists()
        assert daemon._spool is not None and daemon._spool.path is not None   # now in the new daemon's spool
        assert len(spool.parse(daemon._spool.path.read_text(), "spool")) == 20
        # the flush job's first try may meet a pooled connection the outage cut (dropped then); it tries again
        assert sum(asyncio.run(daemon.flush_history()) for _ in range(3)) == 20
        assert daemon._spool.path.stat().st_size == 0                       # nothing pending
        with store.engine.connect() as c:
            rows = c.execute(text("SELECT output FROM runs ORDER BY id")).all()
        assert [r.output for r in rows] == [f"kept {i}" for i in range(20)]
        daemon._spool.close(0)
        assert not list(state_dir.glob(spool.PATTERN))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        store.close()
        proxy.close()
