"""How a stage is reached: the one interface the gRPC workers and the Ray actors implement.

A backend gives the three things a controller (`aiflow run`, `aiflow caption`, the daemon) needs:
- `workers(model, names, ...)`: the stages of the nodes that have no `address`, started together and
  stopped together (`start() -> {node: address}`, `alive`, `restart`, `pid`, `stop`: the shape of
  runtime.local.LocalWorkers);
- `transport(token, ...)`: the runtime.transport.Transport the controller sends frames with;
- `client(plan, ...)`: the runtime.client.Client that drives requests (it takes results at an address
  every stage can reach).

`GrpcBackend` is the existing local worker processes on loopback gRPC, unchanged. `RayBackend`
(runtime.ray_backend, imported only when asked for: Ray is the optional extra `aiflow[ray]`) runs every
stage as a Ray actor pinned to the Ray node of its network node. `check_backend` refuses, in one line,
what a backend cannot do; `open_backend(name, ...)` checks and builds one.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from runtime.client import Client
from runtime.local import LocalWorkers
from runtime.stages import StagePlan
from runtime.transport import GrpcTransport, Tls, Transport

BACKENDS = ("grpc", "ray")


class BackendError(ValueError):
    """A backend that cannot serve what was asked (one line, for `aiflow: error: ...`)."""


class StageGroup(Protocol):
    """Stages started and stopped together (runtime.local.LocalWorkers is one)."""

    token: str
    controller_token: str
    addresses: dict[str, str]

    def start(self, timeout_s: float = 300.0) -> dict[str, str]: ...

    def alive(self, name: str) -> bool: ...

    def pid(self, name: str) -> int | None: ...

    def restart(self, name: str, timeout_s: float = 300.0) -> str: ...

    def stop(self, grace_s: float = 5.0) -> None: ...


class Watched(Protocol):
    """What `exited` needs of a stage group: whether a stage's process runs."""

    def alive(self, name: str) -> bool: ...


async def exited(group: Watched, name: str, grace_s: float = 2.0) -> bool:
    """Whether the stage `name` of `group`, which stopped answering, has exited. A killed process closes its
    sockets before it is gone (a large one takes a moment to free its memory), so it is given `grace_s`
    to go; one still running after that is stuck, not dead (no restart: it is down until a later check)."""
    deadline = time.monotonic() + grace_s
    while await asyncio.to_thread(group.alive, name):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


class Backend(ABC):
    """How the stages of a network are started and reached."""

    name: str = ""

    @abstractmethod
    def workers(self, model: str, names: Sequence[str], *, token: str | None = None, threads: int | None = None,
                controller_token: str | None = None, state_timeout_s: float = 120.0,
                release_unused: bool = False, host: str = "127.0.0.1") -> StageGroup: ...

    @abstractmethod
    def transport(self, token: str | None = None, *, controller_token: str | None = None,
                  tls: Tls | None = None) -> Transport: ...

    def client(self, plan: StagePlan, **kwargs: Any) -> Client:
        """A Client on this backend's transport (kwargs as runtime.client.Client takes them)."""
        return Client(plan, **kwargs)

    def close(self) -> None:  # noqa: B027 - optional: most back-ends hold nothing of their own
        """Free what the backend itself holds (a Ray cluster it started)."""


class GrpcBackend(Backend):
    """Worker processes on loopback gRPC (runtime.local, runtime.transport): the default."""

    name = "grpc"

    def workers(self, model: str, names: Sequence[str], *, token: str | None = None, threads: int | None = None,
                controller_token: str | None = None, state_timeout_s: float = 120.0,
                release_unused: bool = False, host: str = "127.0.0.1", lease_s: float | None = None,
                log_dir: Path | None = None) -> LocalWorkers:
        """`lease_s` and `log_dir`: detached workers (runtime.local), which outlive this process."""
        return LocalWorkers(model, names, token=token, threads=threads, controller_token=controller_token,
                            state_timeout_s=state_timeout_s, release_unused=release_unused, host=host,
                            lease_s=lease_s, log_dir=log_dir)

    def transport(self, token: str | None = None, *, controller_token: str | None = None,
                  tls: Tls | None = None) -> GrpcTransport:
        return GrpcTransport(token, controller_token=controller_token, tls=tls)


def check_backend(name: str, *, ray_address: str | None = None, cooperative: bool = False,
                  kernel_links: bool = False, token: str | None = None, tls: Tls | None = None,
                  addresses: Mapping[str, str | None] | None = None) -> None:
    """Refuse, in one line, a combination the backend `name` does not serve."""
    if name not in BACKENDS:
        raise BackendError(f"--backend: {name!r} is not one of {', '.join(BACKENDS)}")
    if name == "grpc":
        if ray_address:
            raise BackendError("--ray-address is for --backend ray")
        return
    if cooperative:
        raise BackendError("--backend ray: cooperative (speculative) decoding runs on the gRPC workers only")
    if kernel_links:
        raise BackendError("--backend ray: kernel-shaped links need gRPC workers in network namespaces")
    if token:
        raise BackendError("--backend ray: a shared token is a gRPC credential; a Ray cluster admits its own "
                           "members only (drop --token / $AIFLOW_TOKEN)")
    if tls is not None:
        raise BackendError("--backend ray: TLS is a gRPC setting; unset AIFLOW_TLS_CA/_CERT/_KEY")
    given = sorted(n for n, a in (addresses or {}).items() if a)
    if given:
        raise BackendError(f"--backend ray: node(s) {', '.join(given)} have an address; on Ray every node is a "
                           "Ray node with the resource aiflow.node/<name>")


def open_backend(name: str = "grpc", *, ray_address: str | None = None, nodes: Sequence[str] = (),
                 **checks: Any) -> Backend:
    """The backend `name`, checked (`check_backend(name, ray_address=..., **checks)`). For Ray: connect to
    `ray_address`, or start a local cluster with one Ray node per name in `nodes`."""
    check_backend(name, ray_address=ray_address, **checks)
    if name == "grpc":
        return GrpcBackend()
    try:
        from runtime.ray_backend import RayBackend
    except ImportError as exc:
        raise BackendError(f"--backend ray: Ray is not installed ({exc}); pip install 'aiflow[ray]'") from None
    return RayBackend(nodes, address=ray_address)
