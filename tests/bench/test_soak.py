"""A short soak (bench/soak.py) with the faults that need the daemon as a process and PostgreSQL: the daemon
SIGKILLed and started again (it adopts its workers), the history database cut for a few seconds, a worker
killed in the middle of a plan switch. Nothing may be lost or answered wrongly, and every 200 answer must be
a `runs` row. About a minute; skipped, with the reason, when no PostgreSQL answers at 127.0.0.1:5432."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import main
from bench.soak_parts import postgres_reachable

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_a_short_soak_with_daemon_kill_db_outage_and_switch_kill_loses_nothing(tmp_path: Path) -> None:
    why = postgres_reachable()
    if why is not None:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({why}): the db-outage fault needs it")
    # seed 4 deals daemon-kill, db-outage, switch-kill in that order: the one that may wait longest comes last
    r = main(["--minutes", "0.6", "--fault-every", "3", "--streams", "2", "--seed", "4", "--db", "postgres",
              "--faults", "daemon-kill,db-outage,switch-kill", "--out", str(tmp_path)])
    assert r["db"] == "postgres"
    assert {"daemon-kill", "db-outage", "switch-kill"} <= set(r["faults"]), r["faults"]
    c = r["counts"]
    assert c.get("lost", 0) == 0 and c.get("wrong", 0) == 0 and c.get("fault errors", 0) == 0, r["examples"]
    assert c.get("served", 0) > 0
    assert r["daemon_restarts"] and all(d["same_pids"] for d in r["daemon_restarts"]), r["daemon_restarts"]
    assert r["history"]["answers_without_row"] == 0, r["history"]
    assert r["history_dropped"] == 0
    assert r["final_stop"] == {"exit_code": 0, "workers_left_running": []}
    assert (tmp_path / "soak.json").exists() and (tmp_path / "soak.md").exists()
