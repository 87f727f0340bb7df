"""`--backend {grpc,ray}` and `--ray-address`: the options `aiflow run`, `aiflow caption` and `aiflow daemon`
share, and the one place they become a runtime.backends.Backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import typer

from profiler.errors import InputError


def backend_option() -> Any:
    return typer.Option("grpc", "--backend", help="How stages run: grpc (a worker process per node) or ray (a Ray "
                        "actor per node, pinned by the resource aiflow.node/<name>; needs aiflow[ray]).")


def ray_address_option() -> Any:
    return typer.Option(None, "--ray-address", help="With --backend ray: the Ray cluster to join (ray://, or "
                        "HOST:PORT of its GCS); default: a local cluster with a Ray node per network node.")


def check_cli_backend(backend: str, ray_address: str | None, **checks: Any) -> None:
    """runtime.backends.check_backend, its refusal as a one-line InputError."""
    from runtime.backends import BackendError, check_backend

    try:
        check_backend(backend, ray_address=ray_address, **checks)
    except BackendError as exc:
        raise InputError(str(exc)) from None


def open_cli_backend(backend: str, ray_address: str | None, network: Any, *, cooperative: bool = False,
                     kernel_links: bool = False, token: str | None = None) -> Any:
    """None for the default gRPC workers (the commands keep their own path), else the checked, started
    Ray backend for `network` (a NetworkState or a network file). Inside a command it is closed when the
    command ends, however it ends (click's context); elsewhere the caller closes it. Refusals are
    one-line InputErrors."""
    from runtime.backends import BackendError, open_backend
    from runtime.transport import Tls

    check_cli_backend(backend, ray_address)
    try:
        if backend == "grpc":
            return None
        if isinstance(network, (str, Path)):
            from orchestrator.network import load_network

            network = load_network(network)
        opened = open_backend(backend, ray_address=ray_address, nodes=[n.name for n in network.nodes],
                              cooperative=cooperative, kernel_links=kernel_links, token=token, tls=Tls.from_env(),
                              addresses={n.name: n.address for n in network.nodes})
    except BackendError as exc:
        raise InputError(str(exc)) from None
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(opened.close)
    return opened
