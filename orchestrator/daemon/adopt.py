"""What lets a daemon that was killed hand its healthy local workers to the next one.

The daemon's local workers run detached (runtime.local): they outlive a crashed daemon until no call with
the controller's credential reached them for `worker_lease_s`. Each daemon run records, in its
`daemon_states` row, per local worker: pid, the process's start time (a reused pid is not taken for it),
host, address, model and when it was started, plus `secrets_key`, the name of the file holding the workers'
credentials. The credentials themselves (the shared token and the controller's) never go into a history
row: they are in `STATE_DIR/workers-KEY.secret`, mode 0600 in a 0700 folder, written before the first
worker starts and removed on a clean stop.

STATE_DIR is `--state-dir` ($AIFLOW_STATE_DIR), else beside a SQLite history file (`history.db` ->
`history.db.state/`), else $XDG_STATE_HOME/aiflow (`~/.local/state/aiflow`). The detached workers' logs
(`NODE.log`, appended to by each run) are in `STATE_DIR/logs/`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from profiler.errors import InputError
from runtime.local import AdoptedProcess, LocalWorkers, reap, same_process
from runtime.transport import Transport, TransportError

STATE_DIR_ENV = "AIFLOW_STATE_DIR"
log = logging.getLogger("aiflow.daemon")


@dataclass(frozen=True)
class WorkerSecrets:
    token: str
    controller_token: str


def default_state_dir(url: str) -> Path:
    """Beside a SQLite history file, else the per-user state folder ($AIFLOW_STATE_DIR first)."""
    env = os.environ.get(STATE_DIR_ENV, "").strip()
    if env:
        return Path(env)
    try:
        parsed = make_url(url)
    except ArgumentError:
        parsed = None
    if parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        db = Path(parsed.database)
        return db.with_name(db.name + ".state")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aiflow"


def new_key() -> str:
    """A fresh name for one daemon run's credentials file (not itself a secret)."""
    return secrets.token_hex(8)


def secrets_path(state_dir: Path, key: str) -> Path:
    if not key.isalnum():
        raise InputError(f"daemon state: bad secrets key {key!r}")
    return state_dir / f"workers-{key}.secret"


def log_dir(state_dir: Path) -> Path:
    """Where detached workers write their stderr: NODE.log, appended to by every run."""
    return state_dir / "logs"


def write_secrets(state_dir: Path, key: str, found: WorkerSecrets) -> Path:
    """The workers' credentials, readable by this user only (the folder 0700, the file 0600)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state_dir, 0o700)
        path = secrets_path(state_dir, key)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump({"token": found.token, "controller_token": found.controller_token}, f)
    except OSError as exc:
        raise InputError(f"--state-dir {state_dir}: cannot write the workers' credentials: {exc.strerror}") from None
    return path


def read_secrets(state_dir: Path, key: str) -> WorkerSecrets | None:
    """The credentials a run wrote, or None (missing, unreadable, or readable by others: not trusted)."""
    try:
        path = secrets_path(state_dir, key)
        if path.stat().st_mode & 0o077:
            return None
        doc = json.loads(path.read_text())
        return WorkerSecrets(str(doc["token"]), str(doc["controller_token"]))
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None


def remove_secrets(state_dir: Path, key: str) -> None:
    try:
        secrets_path(state_dir, key).unlink(missing_ok=True)
    except (OSError, InputError):
        pass


async def check_recorded(transport: Transport, name: str, record: Mapping[str, Any], model: str, served: str,
                         units: int, timeout_s: float) -> str | None:
    """Why the recorded worker of `name` cannot be adopted, or None when it can: it was started for `model`,
    its process runs (the same one), and it answers an authenticated health check as node `name` serving
    the adapter `served` with `units` units."""
    pid, address = record.get("pid"), record.get("address")
    if not isinstance(pid, int) or not isinstance(address, str) or record.get("model") != model:
        return "its record does not match this daemon"
    if record.get("host") != socket.gethostname():
        return f"it ran on host {record.get('host')!r}"
    if not same_process(pid, record.get("started")):
        return f"pid {pid} is gone"
    try:
        h = await transport.health(address, timeout=timeout_s)
    except (TimeoutError, TransportError, OSError) as exc:
        return f"no health answer at {address} ({getattr(exc, 'code', type(exc).__name__)})"
    if not h.get("ok") or h.get("name") != name or h.get("model") != served or h.get("units") != units:
        return f"{address} answers as {h.get('name')!r} serving {h.get('model')!r} with {h.get('units')} units"
    return None



async def adopt_workers(workers: LocalWorkers, transport: Transport, recorded: Mapping[str, Any], *, served: str,
                        units: int, timeout_s: float, refused: str | None = None) -> dict[str, list[int]]:
    """Take over each worker a crashed daemon recorded (`recorded`: node -> record) that is healthy, serves the
    same model and units and is one of `workers.names` (none when `refused` says why not); stop the recorded
    processes of this host that are not taken (one left would hold its port and memory until its lease
    ends). Says which in the log. Returns the adopted nodes, each with the plan versions it still holds
    (the dead daemon's, to forget)."""
    adopted: dict[str, list[int]] = {}
    for name, record in sorted(recorded.items()):
        if not isinstance(record, Mapping):
            continue
        if refused is not None:
            reason: str | None = refused
        elif name not in workers.names:
            reason = "its node is not a local worker of this daemon"
        else:
            reason = await check_recorded(transport, name, record, workers.model, served, units, timeout_s)
        pid = record.get("pid")
        if reason is None:
            workers.adopt(name, record)
            held = await _held_plans(transport, str(record["address"]), timeout_s)
            adopted[name] = held
            log.warning("adopted worker %s of the daemon that died (pid %s at %s)", name, pid, record["address"])
            continue
        here = record.get("host") == socket.gethostname()
        if isinstance(pid, int) and here and same_process(pid, record.get("started")):
            await asyncio.to_thread(reap, AdoptedProcess(pid, record.get("started")), 5.0)
            reason += f"; pid {pid} stopped"
        log.warning("worker %s of the daemon that died not adopted (%s)%s", name, reason,
                    ": starting a new one" if name in workers.names else "")
    return adopted


async def _held_plans(transport: Transport, address: str, timeout_s: float) -> list[int]:
    try:
        h = await transport.health(address, timeout=timeout_s)
    except (TimeoutError, TransportError, OSError):
        return []
    return [int(v) for v in h.get("plans", []) if isinstance(v, int)]
