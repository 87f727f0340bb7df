"""The pieces that let a daemon adopt a crashed daemon's workers: where the state folder is, the credentials
file (readable by the user only, never trusted otherwise), and telling a worker's process from a reused pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.daemon import adopt
from orchestrator.daemon.settings import DaemonSettings
from profiler.errors import InputError
from runtime.local import AdoptedProcess, process_start, same_process


def test_the_state_folder_is_beside_a_sqlite_file_else_per_user(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.delenv("AIFLOW_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert adopt.default_state_dir(f"sqlite:///{tmp_path / 'h.db'}") == tmp_path / "h.db.state"
    assert adopt.default_state_dir("postgresql+psycopg://u:***@db:5432/aiflow") == tmp_path / "xdg" / "aiflow"
    assert adopt.default_state_dir("sqlite://") == tmp_path / "xdg" / "aiflow"             # in memory
    monkeypatch.setenv("AIFLOW_STATE_DIR", str(tmp_path / "given"))
    assert adopt.default_state_dir(f"sqlite:///{tmp_path / 'h.db'}") == tmp_path / "given"


def test_the_credentials_file_is_private_and_not_trusted_otherwise(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = adopt.new_key()
    path = adopt.write_secrets(state, key, adopt.WorkerSecrets("tok-1", "ctl-1"))
    assert path.stat().st_mode & 0o777 == 0o600 and state.stat().st_mode & 0o777 == 0o700
    assert adopt.read_secrets(state, key) == adopt.WorkerSecrets("tok-1", "ctl-1")
    os.chmod(path, 0o644)                                   # readable by others: someone could have read it
    assert adopt.read_secrets(state, key) is None
    assert adopt.read_secrets(state, adopt.new_key()) is None
    with pytest.raises(InputError, match="bad secrets key"):
        adopt.secrets_path(state, "../etc/passwd")
    adopt.remove_secrets(state, key)
    assert not path.exists()


def test_a_reused_pid_is_not_taken_for_the_recorded_worker() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_start(proc.pid)
        assert started is not None and same_process(proc.pid, started)
        assert not same_process(proc.pid, started + 1)         # another process under the same pid
        adopted = AdoptedProcess(proc.pid, started)
        assert adopted.poll() is None
        adopted.terminate()
        proc.wait(timeout=10)                                  # reaped by its parent: this test
        assert adopted.wait(timeout=5) == -1 and not same_process(proc.pid, started)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_lease_outlasts_several_probe_intervals() -> None:
    assert DaemonSettings(probe_interval_s=5, worker_lease_s=15).worker_lease_s == 15
    with pytest.raises(InputError, match="worker_lease_s must be at least 3 probe intervals"):
        DaemonSettings(probe_interval_s=5, worker_lease_s=10)


def test_recorded_workers_that_cannot_be_adopted_are_stopped_by_pid(caplog: pytest.LogCaptureFixture) -> None:
    """Without usable credentials nothing is adopted: a recorded process of this host that still runs (the same
    one, by its start time) is stopped rather than left to its lease; a record from another host is not
    touched."""
    import asyncio
    import socket

    from runtime.local import LocalWorkers
    from runtime.transport import GrpcTransport

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def record(p: subprocess.Popen, host: str) -> dict:
            return {"pid": p.pid, "started": process_start(p.pid), "host": host, "address": "127.0.0.1:1",
                    "model": "tiny-captioner"}

        workers = LocalWorkers("tiny-captioner", ["edge", "cloud"])
        recorded = {"edge": record(proc, socket.gethostname()), "cloud": record(other, "elsewhere")}

        async def run() -> dict:
            transport = GrpcTransport("unused")
            try:
                return await adopt.adopt_workers(workers, transport, recorded, served="tiny-captioner", units=1,
                                                 timeout_s=1.0, refused="its token is not this daemon's")
            finally:
                await transport.close()

        with caplog.at_level("WARNING", logger="aiflow.daemon"):
            assert asyncio.run(run()) == {}
        assert proc.wait(timeout=10) != 0                      # stopped (SIGTERM) by its pid
        assert other.poll() is None                            # another host's pid is not this one's
        assert not workers.processes
        assert "worker edge of the daemon that died not adopted (its token is not this daemon's; pid" in caplog.text
    finally:
        for p in (proc, other):
            if p.poll() is None:
                p.kill()
                p.wait()
