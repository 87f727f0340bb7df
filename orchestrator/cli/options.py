"""Options several commands share, defined once: the workers' token, where results come back, torch threads."""

from __future__ import annotations

from typing import Any

import typer


def token_option() -> Any:
    """--token: the token shared with the workers (also $AIFLOW_TOKEN)."""
    return typer.Option(None, "--token", envvar="AIFLOW_TOKEN",
                        help="Token shared with the workers (default: $AIFLOW_TOKEN; generated for local ones). "
                             "Workers with an `address` must have been started with the same.")


def serve_options(role: str) -> dict[str, Any]:
    """The options of a serving process (`aiflow worker`, `aiflow verifier`), by parameter name."""
    return {
        "name": typer.Option(..., "--name", help=f"The node this {role} serves (a name from the network file)."),
        "listen": typer.Option("127.0.0.1:0", "--listen", help="HOST:PORT to serve on (port 0: any free port)."),
        "token": typer.Option(None, "--token", envvar="AIFLOW_TOKEN",
                              help="Shared token clients must present (default: $AIFLOW_TOKEN)."),
        "state_timeout": typer.Option(120.0, "--state-timeout", help="Seconds an idle request's state is kept."),
    }


def check_listen(listen: str) -> None:
    """A malformed --listen is a one-line error before anything is loaded."""
    from profiler.errors import InputError

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--listen: expected HOST:PORT, got {listen!r}")


def _check_reply_listen(value: str | None) -> str | None:
    """A malformed --reply-listen is refused before anything starts."""
    if value is not None:
        from runtime.hosts import HostError, split_host_port

        try:
            split_host_port(value)
        except HostError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def reply_listen_option() -> Any:
    """--reply-listen HOST: where the controller takes results (default: the address that routes to each worker)."""
    return typer.Option(None, "--reply-listen", metavar="HOST", callback=_check_reply_listen,
                        help="Local address the workers send results to (and local workers listen on); default: "
                             "for each worker, the local address that routes to it (0.0.0.0: listen on all).")


def threads_option(default: int | None = None) -> Any:
    """--threads N: torch threads of this process."""
    return typer.Option(default, "--threads", min=1, help="torch threads (default: torch's own choice)."
                        if default is None else "torch threads.")
