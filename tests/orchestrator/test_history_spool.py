"""Kept history records (orchestrator.daemon.kept) and the spool file behind them (orchestrator.daemon.spool):
each kind of record, after a round trip through a spool line, writes the rows the store's own calls write;
the spool file says what is pending after appends, flushes, drops and a line cut short; a file whose
daemon is alive is never taken, one whose daemon was killed is taken once."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestrator.daemon import spool
from orchestrator.daemon.kept import (
    Kept,
    emulation_record,
    finish_record,
    probe_record,
    run_record,
    state_record,
    write_kept,
)
from orchestrator.daemon.service import Daemon
from orchestrator.daemon.settings import DaemonSettings
from orchestrator.network import load_network
from orchestrator.store import Store, engine
from profiler.models import load_adapter
from profiler.profile import load_profile
from tests.orchestrator.store_fixtures import small_network, small_plan, small_profile

ROOT = Path(__file__).resolve().parents[2]
DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
AT = datetime(2026, 12, 1, 12, 30, 5, 250000, tzinfo=UTC)


def through_a_line(rec: Kept) -> Kept:
    return Kept.from_json(json.loads(json.dumps(rec.to_json())))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(f"sqlite:///{tmp_path / 'history.db'}")
    yield s
    s.close()


def test_each_kind_writes_what_the_store_calls_write(store: Store) -> None:
    plan_id = store.save_plan(small_plan(), profile_id=store.save_profile(small_profile()), network_id=None)
    state_id = store.open_daemon_state("tiny-test", settings={}, network={"nodes": []})
    app_id = store.record_plan_application(plan_id, version=1)
    net = small_network()
    joined = net.model_dump(mode="json", exclude_none=True)
    links = [{"link": "phone->edge", "bandwidth_bps": 2.0e7, "latency_s": 0.01, "kind": "estimate:ewma", "samples": 3}]
    nodes = [{"node": "edge", "state": "up", "slowdown": 1.5}]
    records = [
        run_record(plan_id=plan_id, output="a cat", measured_s=0.25, predicted_s=0.2,
                   breakdown={"compute_s": {"phone": 0.1}, "transfer_bytes": {"phone->edge": 4096}},
                   model="tiny-test", plan_version=1, at=AT),
        probe_record(net, links, nodes, AT + timedelta(seconds=1)),
        state_record(state_id, network=joined, at=AT),                # a node joined: the network is kept
        state_record(state_id, plan_id=plan_id, version=1, at=AT),
        emulation_record(state_id, {"links": {"phone->edge": {"bandwidth_bps": 1e6}}, "nodes": {}}),
        finish_record(app_id, "switched", AT + timedelta(seconds=2)),
        state_record(state_id, stopped=True, at=AT + timedelta(seconds=3)),
    ]
    results = [write_kept(store, through_a_line(r)) for r in records]
    assert isinstance(results[1], int)                               # the probe round's network id
    with store.engine.connect() as c:
        run = c.execute(text("SELECT plan_id, output, measured_s, predicted_s, plan_version, created_at, breakdown "
                             "FROM runs")).one()
        probe = c.execute(text("SELECT link, bandwidth_bps, kind, samples, measured_at FROM probes")).one()
        sample = c.execute(text("SELECT node, state, slowdown FROM node_samples")).one()
        state = c.execute(text("SELECT network, plan_id, version, stopped_at, emulation FROM daemon_states")).one()
        app = c.execute(text("SELECT outcome, finished_at FROM plan_applications")).one()
    assert run[:5] == (plan_id, "a cat", 0.25, 0.2, 1)
    assert datetime.fromisoformat(str(run.created_at)).replace(tzinfo=UTC) == AT
    assert json.loads(run.breakdown)["transfer_bytes"] == {"phone->edge": 4096}
    assert probe[:4] == ("phone->edge", 2.0e7, "estimate:ewma", 3)
    assert datetime.fromisoformat(str(probe.measured_at)).replace(tzinfo=UTC) == AT + timedelta(seconds=1)
    assert tuple(sample) == ("edge", "up", 1.5)
    assert json.loads(state.network) == joined and (state.plan_id, state.version) == (plan_id, 1)
    assert datetime.fromisoformat(str(state.stopped_at)).replace(tzinfo=UTC) == AT + timedelta(seconds=3)
    assert json.loads(state.emulation)["links"] == {"phone->edge": {"bandwidth_bps": 1e6}}
    assert app.outcome == "switched"
    assert store.get_network(results[1]).model_dump() == net.model_dump()


def test_a_line_that_is_not_a_record_is_refused() -> None:
    for bad in ({"kind": "lunch", "fields": {}}, {"kind": "run"}, [1, 2]):
        with pytest.raises(ValueError, match="not a kept history record"):
            Kept.from_json(bad)


def rec(i: int) -> Kept:
    return finish_record(i, f"outcome {i}", AT)


def pending(path: Path) -> list[int]:
    return [r.fields["application_id"] for r in spool.parse(path.read_text(), path.name)]


def test_the_file_says_what_is_pending(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = spool.Spool(tmp_path / "state", DB)
    assert s.path is None and not (tmp_path / "state").exists()      # no file until a record is kept
    for i in range(5):
        s.append(rec(i))
    assert s.path is not None and s.path.match(spool.PATTERN) and pending(s.path) == [0, 1, 2, 3, 4]
    assert s.path.stat().st_mode & 0o777 == 0o600
    s.consumed(2, 3)                                                 # two written (or dropped)
    assert pending(s.path) == [2, 3, 4]
    s.append(rec(5))
    s.consumed(1, 3)
    assert pending(s.path) == [3, 4, 5]
    s.consumed(3, 0)                                                 # all written: the file is emptied ...
    assert s.path.stat().st_size == 0
    s.append(rec(6))                                                 # ... and starts again
    assert pending(s.path) == [6]
    with s.path.open("a") as f:                                      # a write cut short by the process dying
        f.write('{"kind":"finish","fields":{"applic')
    with caplog.at_level("WARNING", logger="aiflow.daemon"):
        assert pending(s.path) == [6]
    assert f"{s.path.name} line 2 skipped" in caplog.text
    path = s.path
    s.close(1)                                                       # pending: left for the next daemon
    assert path.exists()
    s2 = spool.Spool(tmp_path / "state", DB)
    s2.append(rec(7))
    s2.consumed(1, 0)
    s2.close(0)                                                      # nothing pending: removed
    assert s2.path is not None and not s2.path.exists()


HOLDER = """
import sys, time
from pathlib import Path
from datetime import UTC, datetime
from orchestrator.daemon import spool
from orchestrator.daemon.kept import finish_record

s = spool.Spool(Path(sys.argv[1]), sys.argv[2])
for i in range(3):
    s.append(finish_record(i, f"outcome {i}", datetime.now(UTC)))
print(s.path, flush=True)
time.sleep(600)
"""


def test_a_live_daemons_file_is_never_taken_a_dead_ones_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state), DB], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None
        theirs = Path(holder.stdout.readline().strip())
        taken: list[Kept] = []
        assert spool.adopt(state, DB, taken.append) == 0 and taken == [] and theirs.exists()
        assert spool.adopt(state, "sqlite:///other.db", taken.append) == 0      # another database's: not ours
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert spool.adopt(state, "sqlite:///other.db", taken.append) == 0 and theirs.exists()
        mine = spool.Spool(state, DB)
        mine.append(rec(100))
        assert spool.adopt(state, DB, taken.append, own=mine.path) == 3
        assert [r.fields["application_id"] for r in taken] == [0, 1, 2] and not theirs.exists()
        assert mine.path is not None and mine.path.exists()          # its own file is not taken
        assert spool.adopt(state, DB, taken.append, own=mine.path) == 0   # taken once
        mine.close(0)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


def test_a_daemon_spools_what_the_database_refuses_and_the_next_one_writes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite held locked by another connection (the writes fail as unreachable after the busy timeout):
    the daemon keeps the newest `history_buffer` records in memory and in its spool; stopped without
    writing them, it leaves the file, and the next daemon on the database writes them, in order. With
    `history_buffer` 0 nothing is kept and nothing is spooled."""
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    db = tmp_path / "history.db"
    store = Store.open(f"sqlite:///{db}")
    state = tmp_path / "state"

    def daemon(buffer: int) -> Daemon:
        return Daemon("tiny-captioner", load_network(ROOT / "examples" / "daemon.network.yaml"),
                      load_profile(ROOT / "examples" / "tiny-captioner.profile.json"), load_adapter("tiny-captioner"),
                      settings=DaemonSettings(history_buffer=buffer), store=store, state_dir=state)

    def run(i: int) -> Kept:
        return run_record(plan_id=None, output=f"r{i}", measured_s=0.1, predicted_s=0.1, breakdown={},
                          model="tiny-captioner", plan_version=1, at=AT + timedelta(seconds=i))

    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        first = daemon(3)
        for i in range(5):
            asyncio.run(first._keep(run(i)))
        assert len(first._unwritten) == 3 and first.history_dropped == 2
        assert first._spool is not None and first._spool.path is not None
        assert [r.fields["output"] for r in spool.parse(first._spool.path.read_text(), "spool")] == ["r2", "r3", "r4"]
        assert asyncio.run(first.flush_history()) == 0                  # still locked: nothing lost
        first._spool.close(len(first._unwritten))                      # a stop that could not write them
        assert first._spool.path.exists()

        none = daemon(0)
        asyncio.run(none._keep(run(9)))
        assert not none._unwritten and none.history_dropped == 1 and none._spool.path is None
        holder.execute("ROLLBACK")

        second = daemon(100)
        assert second._adopt_spooled() == 3 and not first._spool.path.exists()
        assert asyncio.run(second.flush_history()) == 3
        second._spool.close(0)
        with store.engine.connect() as c:
            outputs = [o for (o,) in c.execute(text("SELECT output FROM runs ORDER BY id"))]
        assert outputs == ["r2", "r3", "r4"] and not list(state.glob(spool.PATTERN))
    finally:
        holder.close()
        store.close()
