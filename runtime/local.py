"""Local workers: one process per node on this machine, on loopback ports, started and stopped together.

Each worker is `python -m runtime.worker --listen HOST:0`; it picks a free port and prints
`READY host:port` once it serves, so there is no race over port numbers. The shared token travels in
the environment (AIFLOW_TOKEN), not on the command line where `ps` would show it.

Attached (the default), workers stop when the process that started them dies (AIFLOW_PARENT_PID).
Detached (`lease_s` and `log_dir` given: the daemon's), they run in a session of their own, log to a
file, and outlive a crashed starter until no controller has called them for `lease_s` seconds, so the
next daemon can adopt them (`adopt`, with what `record` gave). Stopping the group stops both kinds.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class WorkerStartError(RuntimeError):
    pass


class LocalWorkers:
    """Worker processes for `names`, all serving `model`. Use as a context manager."""

    def __init__(self, model: str, names: Sequence[str], *, token: str | None = None, host: str = "127.0.0.1",
                 threads: int | None = None, release_unused: bool = False, python: str = sys.executable,
                 state_timeout_s: float = 120.0, hosts: Mapping[str, str] | None = None,
                 launchers: Mapping[str, Sequence[str]] | None = None, module: str = "runtime.worker",
                 controller_token: str | None = None, lease_s: float | None = None,
                 log_dir: Path | None = None) -> None:
        self.model = model
        self.module = module                             # runtime.worker, or runtime.cooperative (a verifier)
        self.names = list(dict.fromkeys(names))
        self.token = token or secrets.token_hex(16)
        # the controller's credential: plans, opens and emulation are taken only from whoever holds it
        self.controller_token = controller_token or secrets.token_hex(16)
        self.host = host
        self.threads = threads
        self.release_unused = release_unused
        self.python = python
        self.state_timeout_s = state_timeout_s
        self.hosts = dict(hosts or {})                   # per node: the address to listen on (else `host`)
        self.launchers = dict(launchers or {})           # per node: a command prefix (ip netns exec NS)
        # detached: a session of their own, stderr to log_dir/NODE.log, stop after lease_s without a controller
        if (lease_s is None) != (log_dir is None):
            raise ValueError("detached workers need both lease_s and log_dir")
        self.lease_s = lease_s
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen | AdoptedProcess] = {}
        self.addresses: dict[str, str] = {}
        self.started_at: dict[str, str] = {}

    def __enter__(self) -> LocalWorkers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 300.0) -> dict[str, str]:
        """Start every worker not adopted already; the address of each."""
        try:
            spawned = {name: self._spawn(name) for name in self.names if name not in self.processes}
            self.processes.update(spawned)
            deadline = time.monotonic() + timeout_s
            for name, proc in spawned.items():
                self.addresses[name] = _await_ready(name, proc, deadline, self._log(name))
        except BaseException:
            self.stop()
            raise
        return dict(self.addresses)

    def _spawn(self, name: str) -> subprocess.Popen:
        env = dict(os.environ)
        env["AIFLOW_TOKEN"] = self.token
        env["AIFLOW_CONTROLLER_TOKEN"] = self.controller_token
        env.pop("AIFLOW_PARENT_PID", None)
        if self.lease_s is None:
            env["AIFLOW_PARENT_PID"] = str(os.getpid())   # workers stop if this process dies
        env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cmd = [*self.launchers.get(name, ()), self.python, "-m", self.module, "--name", name,
               "--listen", f"{self.hosts.get(name, self.host)}:0",
               "--model", self.model, "--state-timeout", str(self.state_timeout_s)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if self.release_unused:
            cmd.append("--release-unused")
        self.started_at[name] = datetime.now(UTC).isoformat(timespec="seconds")
        if self.lease_s is None or self.log_dir is None:
            return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cmd += ["--lease", f"{self.lease_s:g}"]
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._log(name)
        assert path is not None
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # its own session: a signal to the starter's terminal or process group does not reach it
            return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                    start_new_session=True)
        finally:
            os.close(log)

    def _log(self, name: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".log")

    def record(self, name: str) -> dict[str, Any]:
        """What a later controller needs to find this worker again (no secret in it)."""
        proc = self.processes[name]
        return {"pid": proc.pid, "started": process_start(proc.pid), "host": socket.gethostname(),
                "address": self.addresses.get(name), "model": self.model, "started_at": self.started_at.get(name)}

    def adopt(self, name: str, record: Mapping[str, Any]) -> None:
        """Take over a running worker of `name` another controller started (what its `record` gave)."""
        self.processes[name] = AdoptedProcess(int(record["pid"]), record.get("started"))
        self.addresses[name] = str(record["address"])
        self.started_at[name] = str(record.get("started_at") or "")

    def alive(self, name: str) -> bool:
        """Its process runs (an adopted one: the same process as recorded, not a zombie)."""
        proc = self.processes.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int | None:
        proc = self.processes.get(name)
        return proc.pid if proc is not None else None

    def restart(self, name: str, timeout_s: float = 300.0) -> str:
        """Start the worker of `name` again (after it died); its new address."""
        old = self.processes.pop(name, None)
        if old is not None:
            reap(old, 1.0)
        proc = self._spawn(name)
        self.processes[name] = proc
        try:
            self.addresses[name] = _await_ready(name, proc, time.monotonic() + timeout_s, self._log(name))
        except BaseException:
            reap(proc, 1.0)
            self.processes.pop(name, None)
            raise
        return self.addresses[name]

    def stop(self, grace_s: float = 5.0) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            reap(proc, grace_s)
        self.processes.clear()


class AdoptedProcess:
    """A running worker this process did not start (a crashed daemon's), driven like a Popen: it cannot be
    waited for as a child, so `poll` looks at /proc, and a pid whose process start time changed (reused
    by another process) counts as gone."""

    def __init__(self, pid: int, started: int | None) -> None:
        self.pid = pid
        self.started = started
        self.returncode: int | None = None
        self.stdout = self.stderr = None

    def poll(self) -> int | None:
        if self.returncode is None and not same_process(self.pid, self.started):
            self.returncode = -1                          # its exit status went to its real parent
        return self.returncode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.05)
        return self.returncode or 0


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat), None if unknown or gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 and fields[19].isdigit() else None


def same_process(pid: int, started: int | None) -> bool:
    """Process `pid` runs (not a zombie) and, when `started` is known, is the one that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    if fields is None:
        return started is None                            # no /proc: trust the pid
    if fields[0] in ("Z", "X"):
        return False
    return started is None or (len(fields) > 19 and fields[19] == str(started))


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, ... (None without /proc or the process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def reap(proc: subprocess.Popen | AdoptedProcess, grace_s: float) -> None:
    """Terminate (if still running), wait, kill after `grace_s`, close the pipes."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _await_ready(name: str, proc: subprocess.Popen, deadline: float, log: Path | None = None) -> str:
    assert proc.stdout is not None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise WorkerStartError(f"worker {name} did not start in time")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return line.split()[1]
            if line:
                continue
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else _tail(log)
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}"
            raise WorkerStartError(f"worker {name} exited: {last}")


def _tail(log: Path | None, nbytes: int = 4096) -> str:
    """The end of a detached worker's log file ("" without one)."""
    if log is None:
        return ""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - nbytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
