"""NetworkState: nodes, links and placement constraints, in the `aiflow.network/v1` format.

Also the transfer time tau(i, j, b) of the planning model: the cheapest store-and-forward path,
summing `latency_s + 8 * b / bandwidth_bps` over its links (runtime.routes, the routes the runtime
takes too), with one route table per message size kept on the (immutable) state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PrivateAttr,
    model_validator,
)

from profiler.fileio import dump_json, load_document, parse_document
from runtime.routes import RouteTable, directions, fastest_link, hop_seconds, route_table

NETWORK_FORMAT = "aiflow.network/v1"

Tier = Literal["device", "edge", "cloud"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class Node(_Frozen):
    name: str = Field(min_length=1)
    hardware: str = Field(min_length=1)
    mem_bytes: PositiveFloat
    slowdown: float = Field(default=1.0, ge=1.0)
    tier: Tier | None = None
    # host:port of a worker that already runs elsewhere; absent means "start one on this machine".
    address: str | None = None
    # host:port of a cooperative verifier (`aiflow verifier`) already running there: where a cooperative
    # plan that verifies on this node sends its proposals; absent means "start one on this machine".
    verifier_address: str | None = None


class Link(_Frozen):
    a: str
    b: str
    bandwidth_bps: PositiveFloat
    latency_s: NonNegativeFloat = 0.0
    directed: bool = False
    # Optional bandwidth trace (seconds<TAB>Mbit/s) replayed by the runtime's emulated link, from
    # `trace_start_s` seconds into the trace. The planner sees `bandwidth_bps` only.
    trace: str | None = None
    trace_start_s: NonNegativeFloat = 0.0


class Constraints(_Frozen):
    raw_input_stays_on_source: bool = False
    pins: dict[str, list[str]] = Field(default_factory=dict)


class NetworkState(_Frozen):
    format: Literal["aiflow.network/v1"] = NETWORK_FORMAT
    source: str
    sink: str | None = None
    nodes: list[Node] = Field(min_length=1)
    links: list[Link] = Field(default_factory=list)
    constraints: Constraints = Field(default_factory=Constraints)
    # Route tables per message size; the state is immutable, so they never go stale.
    _route_cache: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> NetworkState:
        names = [n.name for n in self.nodes]
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n in seen:
                raise ValueError(f"nodes[{i}].name: duplicate node {n!r}")
            seen.add(n)
        if self.source not in seen:
            raise ValueError(f"source: unknown node {self.source!r}")
        if self.sink is not None and self.sink not in seen:
            raise ValueError(f"sink: unknown node {self.sink!r}")
        for i, link in enumerate(self.links):
            for end in ("a", "b"):
                if getattr(link, end) not in seen:
                    raise ValueError(f"links[{i}].{end}: unknown node {getattr(link, end)!r}")
            if link.a == link.b:
                raise ValueError(f"links[{i}]: a link from {link.a!r} to itself")
        for unit, pinned in self.constraints.pins.items():
            for n in pinned:
                if n not in seen:
                    raise ValueError(f"constraints.pins.{unit}: unknown node {n!r}")
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> NetworkState:
        """A copy with a fresh route cache (pydantic would share the cached routes of the original)."""
        new = super().model_copy(update=update, deep=deep)
        new._route_cache = {}
        return new

    def with_link(self, a: str, b: str, **fields: Any) -> NetworkState:
        """A validated copy with the link(s) between a and b changed, e.g. bandwidth_bps=5e6."""
        if not any({link.a, link.b} == {a, b} for link in self.links):
            raise KeyError(f"no link between {a} and {b}")
        links = [link.model_dump() | fields if {link.a, link.b} == {a, b} else link.model_dump()
                 for link in self.links]
        return NetworkState.model_validate(self.model_dump() | {"links": links})

    def with_node(self, name: str, **fields: Any) -> NetworkState:
        """A validated copy with node `name` changed, e.g. mem_bytes=16e6."""
        if name not in self.node_names:
            raise KeyError(f"no node {name}")
        nodes = [n.model_dump() | fields if n.name == name else n.model_dump() for n in self.nodes]
        return NetworkState.model_validate(self.model_dump() | {"nodes": nodes})

    def with_constraints(self, **fields: Any) -> NetworkState:
        """A validated copy with constraints changed, e.g. raw_input_stays_on_source=True."""
        return NetworkState.model_validate(self.model_dump() | {"constraints": self.constraints.model_dump() | fields})

    # -- derived views -------------------------------------------------------------------------
    @property
    def sink_node(self) -> str:
        return self.sink or self.source

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def index(self, name: str) -> int:
        return self.node_names.index(name)

    def directed_links(self) -> list[tuple[int, int, Link]]:
        """Every usable direction of every link as (from index, to index, link)."""
        return directions(self.links, {name: i for i, name in enumerate(self.node_names)})

    def transfer_matrix(self, nbytes: float) -> tuple[tuple[float, ...], ...]:
        """tau(i, j, nbytes) for all node pairs (math.inf where no path exists)."""
        return self._routes(float(nbytes)).times

    def transfer_time(self, src: str, dst: str, nbytes: float) -> float:
        return self.transfer_matrix(nbytes)[self.index(src)][self.index(dst)]

    def route(self, src: str, dst: str, nbytes: float) -> list[tuple[str, str]]:
        """The hops (from, to) of the cheapest path for a message of `nbytes`; [] when src == dst."""
        table = self._routes(float(nbytes))
        i, j = self.index(src), self.index(dst)
        if i == j:
            return []
        return table.hops(i, j)

    def hop_time(self, a: str, b: str, nbytes: float) -> float:
        """Time of one direct hop a -> b (the fastest direct link when several exist)."""
        self.index(a)                 # an unknown node is a ValueError, as in route
        self.index(b)
        link = fastest_link(self.links, a, b, nbytes)
        return math.inf if link is None else hop_seconds(link, nbytes)

    def _routes(self, nbytes: float) -> RouteTable:
        """The route table for one message size (runtime.routes), computed once per size."""
        cached = self._route_cache.get(nbytes)
        if cached is None:
            cached = self._route_cache[nbytes] = route_table(self.node_names, self.links, nbytes)
        return cached


def load_network(path: str | Path) -> NetworkState:
    return load_document(NetworkState, path, NETWORK_FORMAT)


def parse_network(data: dict, source: str = "network") -> NetworkState:
    return parse_document(NetworkState, data, NETWORK_FORMAT, source)


def save_network(net: NetworkState, path: str | Path) -> None:
    dump_json(net, path)
