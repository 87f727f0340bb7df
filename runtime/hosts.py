"""Addresses across hosts: which local address reaches a worker, and which address a worker reaches us at.

A worker on another host cannot send a result to `127.0.0.1`: that is its own loopback. The client
therefore advertises, to each worker, a reply address on the local interface its routing table uses
to reach that worker (`local_address_for`: a UDP socket `connect`ed to the worker's address asks the
kernel for the route and source address; no packet is sent). Workers on one host as the client get a
loopback reply address as before; workers behind different interfaces get one reply server each
(runtime.client.Client). Local workers that remote workers must reach listen on the same routed address
(`worker_listen_host`). See docs/runtime.md, "Multi-host".
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from profiler.errors import InputError

WILDCARDS = frozenset({"0.0.0.0", "::"})
LOOPBACK = "127.0.0.1"


class HostError(InputError):
    """An address that does not parse or that this host has no route to (one line)."""


def split_host_port(address: str) -> tuple[str, int | None]:
    """'host:port', '[v6]:port', 'host' or a bare IPv6 address -> (host without brackets, port or None)."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:                                  # a bare name, IPv4 address or IPv6 address: no port
        host, port = address, ""
    if not host or (port and not port.isdigit()):
        raise HostError(f"address {address!r}: expected HOST:PORT")
    return host, int(port) if port else None


def join_host_port(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 host in brackets."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_address_for(address: str) -> str:
    """The local IP address this host would send from to reach `address` (HOST:PORT or HOST).
    A UDP `connect` makes the kernel pick the route and source address; nothing is sent."""
    host, port = split_host_port(address)
    try:
        infos = socket.getaddrinfo(host, port or 9, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise HostError(f"address {address!r}: cannot resolve {host!r} ({exc.strerror})") from None
    last = "no address"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            try:
                s.connect(sockaddr)
            except OSError as exc:
                last = exc.strerror or type(exc).__name__
                continue
            return str(s.getsockname()[0]).split("%")[0]
    raise HostError(f"address {address!r}: no route from this host ({last})")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def named_host(listen: str | None) -> str | None:
    """The host of a HOST or HOST:PORT to listen on, or None when there is none or it is a wildcard."""
    if listen is None or not listen.strip():
        return None
    host = split_host_port(listen)[0]
    return None if host in WILDCARDS else host


def reply_host(worker_address: str, listen_host: str | None = None) -> str:
    """The host a worker at `worker_address` is told to send results to: `listen_host` when it names one
    address, else (None or a wildcard) the local address that routes to the worker."""
    named = named_host(listen_host)
    if named is not None:
        return named
    return local_address_for(worker_address)


def worker_listen_host(remote_addresses: Iterable[str], listen_host: str | None = None) -> str:
    """Where this host's own workers listen so that the workers at `remote_addresses` reach them: the one
    local address routing to all of them that is not loopback (loopback when there is none: every worker
    is on this host); `listen_host` (a named host, not a wildcard) overrides. An IPv6 host comes in
    brackets, ready for HOST:PORT."""
    named = named_host(listen_host)
    if named is not None:
        return _bracketed(named)
    routed = sorted({local_address_for(a) for a in remote_addresses})
    # a worker on this host reaches a non-loopback local address too: only the others decide
    routed = [r for r in routed if not is_loopback(r)] or routed
    if not routed:
        return LOOPBACK
    if len(routed) > 1:
        raise HostError(f"local workers: the remote workers are reached from several local addresses "
                        f"({', '.join(routed)}); give the one they all reach with --reply-listen HOST")
    return _bracketed(routed[0])


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
