"""Running a daemon as a process: the API server beside the daemon in one event loop, and shutdown.

SIGTERM / SIGINT: stop accepting requests, let those in flight finish (bounded by
settings.drain_s), stop the API server and the jobs, stop the local workers, return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn

from orchestrator.daemon.api import create_app
from orchestrator.daemon.service import Daemon
from profiler.errors import InputError


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon drains before the server stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def parse_listen(value: str, option: str = "--api") -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise InputError(f"{option}: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"--api: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


async def serve(daemon: Daemon, host: str, port: int, *, api_token: str | None = None, open_reads: bool = True,
                on_ready: Callable[[str], None] | None = None, stop: asyncio.Event | None = None) -> None:
    """Start the daemon, serve its API until `stop` is set (or a signal arrives), then shut down."""
    sock = bind(host, port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    server = None
    task = None
    try:
        await daemon.start()
        app = create_app(daemon, token=api_token, open_reads=open_reads)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        if on_ready is not None:
            on_ready(f"http://{shown}:{bound_port}")
        await stop.wait()
        logging.getLogger("aiflow.daemon").info("stopping: draining requests in flight")
        await daemon.drain()
    finally:
        if server is not None:
            server.should_exit = True
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=10)
        await daemon.close()
        sock.close()
        for sig in installed:
            loop.remove_signal_handler(sig)
