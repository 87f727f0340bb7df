"""What a worker observes while it works, kept for the controller to collect (`report` frames).

- Link samples: every activation that reaches this worker is a measurement of the route it took, as
  TCP's delivery-rate estimation treats every ACK: bytes and seconds in flight, from the sender's
  `sent_at` stamp to the moment the frame counts as arrived. A one-hop route measures that link; a
  longer one measures the sum of its links (the controller uses it to suspect them, then probes).
  The two ends must share a clock (`clock` names the sender's host), so samples between hosts are
  left to active probes, which time a round trip at the sender.
- Compute samples: the seconds each segment occupied this node (real compute, plus the stretch when
  emulated) and how many units it covered; the controller divides by the profile's time for the
  same units to estimate the node's current slowdown.

Both are bounded deques: a controller that never collects costs a fixed amount of memory.
"""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

CLOCK = socket.gethostname()          # perf_counter stamps compare only within one host
MAX_SAMPLES = 2000


@dataclass(frozen=True)
class LinkSample:
    src: str
    dst: str
    nbytes: int
    seconds: float
    at: float                       # perf_counter time of arrival on the receiver
    kind: str = "passive"           # passive: an activation; active: a probe
    route: tuple[str, ...] = ()     # the nodes a multi-hop passive sample passed, src first


@dataclass(frozen=True)
class ComputeSample:
    node: str
    phase: str
    first: int
    last: int
    busy_s: float                   # the node's compute slot was held this long
    real_s: float
    plan_version: int
    at: float


class Samples:
    def __init__(self, limit: int = MAX_SAMPLES) -> None:
        self.links: deque[LinkSample] = deque(maxlen=limit)
        self.compute: deque[ComputeSample] = deque(maxlen=limit)

    def note_arrival(self, meta: dict[str, Any], dst: str, nbytes: int, arrived_at: float) -> None:
        """Record a one-hop frame from a sender on this host (see the module doc)."""
        sent, src, route = meta.get("sent_at"), meta.get("from"), meta.get("route")
        if meta.get("clock") != CLOCK or not isinstance(src, str):
            return
        if not isinstance(sent, (int, float)) or isinstance(sent, bool) or not arrived_at >= sent:
            return
        hops: tuple[str, ...] = ()
        if isinstance(route, list) and len(route) > 2 and all(isinstance(n, str) for n in route[:16]):
            hops = tuple(route[:16])
        self.links.append(LinkSample(src, dst, int(nbytes), arrived_at - float(sent), arrived_at, "passive", hops))

    def drain(self) -> dict[str, list[dict[str, Any]]]:
        out = {"links": [asdict(s) for s in self.links], "compute": [asdict(s) for s in self.compute]}
        self.links.clear()
        self.compute.clear()
        return out


def send_stamp(sender: str, route: list[str], now: float) -> dict[str, Any]:
    """The meta a sender adds so the receiver can turn the frame into a link sample; `route` lists the
    nodes the message passes, sender first (empty when it is not known; two nodes for one hop)."""
    return {"sent_at": now, "from": sender, "route": route, "clock": CLOCK}
