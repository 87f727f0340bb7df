"""Routes through a network: the cheapest store-and-forward path for a message, and the link each hop takes.

The one implementation behind the planner's prediction (orchestrator.network, orchestrator.costmodel) and
the runtime's emulated links and kernel routes (runtime.stages, runtime.links, runtime.netns), so that a
plan's messages travel exactly the paths it was predicted with. A hop over a link costs
`latency_s + 8 * bytes / bandwidth_bps`; ties keep the first candidate found (strict comparisons, links and
nodes in their network order).

Links are read by their fields, so orchestrator.network.Link and runtime.stages.LinkSpec both serve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class RouteLink(Protocol):
    """What routing reads of a link."""

    @property
    def a(self) -> str: ...
    @property
    def b(self) -> str: ...
    @property
    def bandwidth_bps(self) -> float: ...
    @property
    def latency_s(self) -> float: ...
    @property
    def directed(self) -> bool: ...


L = TypeVar("L", bound=RouteLink)


def hop_seconds(link: RouteLink, nbytes: float) -> float:
    """Time of one message of `nbytes` over `link`: propagation plus serialisation."""
    return link.latency_s + 8.0 * nbytes / link.bandwidth_bps


def directions(links: Iterable[L], index: Mapping[str, int]) -> list[tuple[int, int, L]]:
    """Every usable direction of every link as (from index, to index, link), in link order."""
    out = []
    for link in links:
        i, j = index[link.a], index[link.b]
        out.append((i, j, link))
        if not link.directed:
            out.append((j, i, link))
    return out


@dataclass(frozen=True)
class RouteTable:
    """Cheapest paths between every pair of nodes for one message size."""

    names: tuple[str, ...]
    times: tuple[tuple[float, ...], ...]       # seconds from node i to node j; math.inf where no path exists
    next_hop: tuple[tuple[int, ...], ...]      # index of the node after i on the way to j; -1 where no path exists

    def hops(self, i: int, j: int) -> list[tuple[str, str]]:
        """The hops (from, to) from node i to node j; [] when i == j."""
        if self.next_hop[i][j] < 0:
            raise ValueError(f"no path from {self.names[i]} to {self.names[j]}")
        hops = []
        while i != j:
            k = self.next_hop[i][j]
            hops.append((self.names[i], self.names[k]))
            i = k
        return hops


def route_table(names: Sequence[str], links: Iterable[RouteLink], nbytes: float) -> RouteTable:
    """Floyd-Warshall for one message size. Networks are small (tens of nodes), so the cubic loop is cheap;
    callers that ask for many sizes keep the tables (NetworkState does)."""
    index = {name: i for i, name in enumerate(names)}
    n = len(names)
    d = [[0.0 if i == j else math.inf for j in range(n)] for i in range(n)]
    nxt = [[j if i == j else -1 for j in range(n)] for i in range(n)]
    for i, j, link in directions(links, index):
        t = hop_seconds(link, nbytes)
        if t < d[i][j]:
            d[i][j] = t
            nxt[i][j] = j
    for k in range(n):
        dk = d[k]
        for i in range(n):
            dik = d[i][k]
            if dik == math.inf:
                continue
            di = d[i]
            for j in range(n):
                if dik + dk[j] < di[j]:
                    di[j] = dik + dk[j]
                    nxt[i][j] = nxt[i][k]
    return RouteTable(tuple(names), tuple(tuple(r) for r in d), tuple(tuple(r) for r in nxt))


def fastest_link(links: Iterable[L], a: str, b: str, nbytes: float) -> L | None:
    """The direct link a hop a -> b takes for a message of `nbytes`: the fastest, the first of equals;
    None when no link joins a to b in that direction."""
    best, choice = math.inf, None
    for link in links:
        if (link.a, link.b) == (a, b) or (not link.directed and (link.b, link.a) == (a, b)):
            t = hop_seconds(link, nbytes)
            if t < best:
                best, choice = t, link
    return choice
