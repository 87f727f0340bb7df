"""Local workers: one process per node on this machine, on loopback ports, started and stopped together.

Each worker is `python -m runtime.worker --listen HOST:0`; it picks a free port and prints
`READY host:port` once it serves, so there is no race over port numbers. The shared token travels in
the environment (AIFLOW_TOKEN), not on the command line where `ps` would show it.
"""

from __future__ import annotations

import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class WorkerStartError(RuntimeError):
    pass


class LocalWorkers:
    """Worker processes for `names`, all serving `model`. Use as a context manager."""

    def __init__(self, model: str, names: Sequence[str], *, token: str | None = None, host: str = "127.0.0.1",
                 threads: int | None = None, release_unused: bool = False, python: str = sys.executable,
                 state_timeout_s: float = 120.0, hosts: Mapping[str, str] | None = None,
                 launchers: Mapping[str, Sequence[str]] | None = None, module: str = "runtime.worker",
                 controller_token: str | None = None) -> None:
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
        self.processes: dict[str, subprocess.Popen] = {}
        self.addresses: dict[str, str] = {}

    def __enter__(self) -> LocalWorkers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 300.0) -> dict[str, str]:
        try:
            for name in self.names:
                self.processes[name] = self._spawn(name)
            deadline = time.monotonic() + timeout_s
            for name, proc in self.processes.items():
                self.addresses[name] = _await_ready(name, proc, deadline)
        except BaseException:
            self.stop()
            raise
        return dict(self.addresses)

    def _spawn(self, name: str) -> subprocess.Popen:
        env = dict(os.environ)
        env["AIFLOW_TOKEN"] = self.token
        env["AIFLOW_CONTROLLER_TOKEN"] = self.controller_token
        env["AIFLOW_PARENT_PID"] = str(os.getpid())       # workers stop if this process dies
        env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cmd = [*self.launchers.get(name, ()), self.python, "-m", self.module, "--name", name,
               "--listen", f"{self.hosts.get(name, self.host)}:0",
               "--model", self.model, "--state-timeout", str(self.state_timeout_s)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if self.release_unused:
            cmd.append("--release-unused")
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def alive(self, name: str) -> bool:
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
            self.addresses[name] = _await_ready(name, proc, time.monotonic() + timeout_s)
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


def reap(proc: subprocess.Popen, grace_s: float) -> None:
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


def _await_ready(name: str, proc: subprocess.Popen, deadline: float) -> str:
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
            err = proc.stderr.read() if proc.stderr else ""
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}"
            raise WorkerStartError(f"worker {name} exited: {last}")
