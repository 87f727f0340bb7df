"""Emulated links and time dilation: one machine plays a whole network.

An EmulatedLink carries one direction of a network link. Sending `n` bytes:
1. waits for the link to be free and serialises the message at the link's rate (each message costs
   8 n / bandwidth as in the planning model; messages queue FIFO behind each other, so concurrent
   requests share the rate);
2. then holds it for the one-way latency (propagation does not occupy the link: the next message
   may start serialising meanwhile).
With a bandwidth trace (seconds<TAB>Mbit/s), the rate follows the trace, replayed in a loop from
the link's creation, starting `trace_start_s` seconds into the trace.

`pace` serialises a message as time passes, re-reading the link's rate at least every
PACE_STEP_S: a rate changed under a running system (`EmulatedNetwork.retune`, the controller's
`emulate` frames) applies to the messages going out at that moment, and a stalled link (rate ~0)
holds them until it moves again or their request is cancelled at its deadline. `reserve` books a
message at once at the rates known then (a token bucket with `burst_bytes` of credit, zero by
default): the arithmetic of the model, used by benchmarks and tests.

Time dilation K >= 1 stretches every link time (rates divided by K, latencies and trace time axes
multiplied by K) and every compute time the same way (see runtime.worker), so a node faster than
this machine can be played: the measured latency divided by K is the emulated network's latency.
"""

from __future__ import annotations

import asyncio
import math
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from profiler.errors import InputError
from runtime.stages import LinkSpec, NodeSpec, best_link, route

PACE_STEP_S = 0.05          # how often a message going out re-reads its link's rate (wall seconds)
# What a real send over loopback gRPC takes per byte (about 40 ms for 8 MiB on this project's machine,
# docs/runtime.md): a paced message is handed to the transport that long before its serialisation ends.
REAL_SEND_S_PER_BYTE = 5e-9


def real_send_s(nbytes: float) -> float:
    return REAL_SEND_S_PER_BYTE * max(0.0, nbytes)


@dataclass(frozen=True)
class Trace:
    """Piecewise-constant bandwidth: rate_bps[i] holds from times[i] to times[i+1]; loops after `period`."""

    times: tuple[float, ...]
    rate_bps: tuple[float, ...]
    period: float

    def rate_at(self, t: float) -> float:
        t = t % self.period if self.period > 0 else 0.0
        return self.rate_bps[max(0, bisect_right(self.times, t) - 1)]

    def mean_bps(self) -> float:
        if self.period <= 0:
            return self.rate_bps[0]
        ends = (*self.times[1:], self.period)
        return sum(r * (e - s) for s, e, r in zip(self.times, ends, self.rate_bps, strict=True)) / self.period


def parse_trace(samples: Sequence[tuple[float, float]], where: str = "trace") -> Trace:
    """Samples (seconds, Mbit/s), each the throughput over the interval that ENDS at its time (the
    data/traces convention). Times are made relative to the first sample."""
    if not samples:
        raise InputError(f"{where}: no samples")
    ts = [float(t) for t, _ in samples]
    rs = [float(r) for _, r in samples]
    for i, (t, r) in enumerate(zip(ts, rs, strict=True)):
        if not (math.isfinite(t) and math.isfinite(r)) or r < 0:
            raise InputError(f"{where}: sample {i + 1}: expected finite seconds and Mbit/s >= 0")
        if i and t <= ts[i - 1]:
            raise InputError(f"{where}: sample {i + 1}: times must increase")
    if max(rs) <= 0:
        raise InputError(f"{where}: every sample is 0 Mbit/s: nothing could ever be sent")
    if len(ts) == 1:
        return Trace((0.0,), (rs[0] * 1e6,), 0.0)
    t0 = ts[0]
    # interval (t[i-1], t[i]] has rate r[i]
    times = tuple(t - t0 for t in ts[:-1])
    rates = tuple(r * 1e6 for r in rs[1:])
    return Trace(times, rates, ts[-1] - t0)


def read_trace_samples(path: str | Path) -> list[tuple[float, float]]:
    """(seconds, Mbit/s) samples of a trace file: whitespace-separated, '#' comments and blank lines skipped."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{p}: cannot read trace: {exc}") from None
    samples = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            samples.append((float(parts[0]), float(parts[1])))
        except (IndexError, ValueError):
            raise InputError(f"{p}: line {n}: expected 'seconds<TAB>Mbit/s', got {line!r}") from None
    parse_trace(samples, str(p))          # validate now, so a bad file fails before any worker starts
    return samples


def load_trace(path: str | Path) -> Trace:
    return parse_trace(read_trace_samples(path), str(path))


def network_traces(network: object, base_dir: str | Path | None = None) -> dict[str, tuple[tuple[float, float], ...]]:
    """Samples of every trace a network's links name; relative paths are resolved against `base_dir`
    (the network file's folder) first, then the current directory."""
    out: dict[str, tuple[tuple[float, float], ...]] = {}
    for link in getattr(network, "links", []):
        ref = getattr(link, "trace", None)
        if not ref or ref in out:
            continue
        p = Path(ref).expanduser()
        if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).is_file():
            p = Path(base_dir) / p
        out[ref] = tuple(read_trace_samples(p))
    return out


class EmulatedLink:
    """One direction of a link, with its rate and latency stretched by `dilation`."""

    def __init__(self, bandwidth_bps: float, latency_s: float = 0.0, *, trace: Trace | None = None,
                 dilation: float = 1.0, burst_bytes: float = 0.0, clock: object = None,
                 trace_start_s: float = 0.0) -> None:
        if not bandwidth_bps > 0 and trace is None:
            raise ValueError("bandwidth_bps must be positive")
        if dilation < 1.0:
            raise ValueError("dilation must be >= 1")
        self.bandwidth_bps = float(bandwidth_bps)
        self.latency_s = float(latency_s)
        self.trace = trace
        self.k = float(dilation)
        self.burst_bytes = float(burst_bytes)
        self.trace_start_s = float(trace_start_s)
        self._free_at = 0.0          # when the link finishes serialising what it has accepted
        self._origin = time.perf_counter()
        self._fifo: asyncio.Lock | None = None       # made in the event loop that paces (see pace)
        self._paced_until = 0.0                        # when `pace` finished serialising the last message
        self.bytes_sent = 0
        self.messages = 0

    def retune(self, spec: LinkSpec, trace: Trace | None) -> None:
        """Take a changed rate, latency or trace now; messages going out continue at the new rate."""
        self.bandwidth_bps, self.latency_s, self.trace = float(spec.bandwidth_bps), float(spec.latency_s), trace
        self.trace_start_s = float(spec.trace_start_s)

    def rate_bps(self, t: float) -> tuple[float, float]:
        """(rate in bit/s, wall seconds it holds from perf_counter time t) before dilation."""
        if self.trace is None or self.trace.period <= 0:
            return (self.trace.rate_bps[0] if self.trace else self.bandwidth_bps), math.inf
        tr = self.trace
        local = ((t - self._origin) / self.k + self.trace_start_s) % tr.period
        i = max(0, bisect_right(tr.times, local) - 1)
        end = tr.times[i + 1] if i + 1 < len(tr.times) else tr.period
        return tr.rate_bps[i], max(end - local, 1e-6) * self.k

    async def pace(self, nbytes: float, now: float | None = None, lead_s: float = 0.0) -> tuple[float, float]:
        """Serialise one message at the link's rate *as it is while the message goes out*, after the
        messages before it (FIFO); (serialisation done, arrival) as perf_counter times. The rate is read
        again every PACE_STEP_S, so a change or a stall hits a transfer under way; with no rate at all
        this waits until there is one again or the caller is cancelled (its request's deadline).
        `now`: when the message was handed over (a late wake-up of this task is not the link's time).
        `lead_s`: return that long before the end, with the end projected at the rate then, so the real
        send of the bytes can run inside the emulated time instead of after it (a change within that
        last moment does not reach the message)."""
        start = time.perf_counter() if now is None else now
        if self._fifo is None:
            self._fifo = asyncio.Lock()
        async with self._fifo:
            left = 8.0 * nbytes                          # bits still to serialise
            # from when the message was handed over or the one before it was done, not from when this
            # task woke up: the event loop's lateness is not the link's
            t = max(start, self._paced_until)
            while left > 0:
                rate, holds = self.rate_bps(t)
                if math.isinf(rate):
                    break
                need = self.k * left / rate if rate > 0 else math.inf
                if need - lead_s <= min(PACE_STEP_S, holds):
                    await sleep_until(t + max(0.0, need - lead_s))      # the last step: precise
                    t += need
                    break
                await asyncio.sleep(max(0.0, t + min(PACE_STEP_S, holds) - time.perf_counter()))
                woke = time.perf_counter()
                left -= rate * (woke - t) / self.k      # what really went out, however late the wake-up
                t = woke + (self.k * left / rate if left < 0 else 0.0)     # done before a late wake-up
            self._paced_until = t
        self.bytes_sent += int(nbytes)
        self.messages += 1
        return t, t + self.k * self.latency_s

    def serialise_time(self, start: float, nbytes: float) -> float:
        """Wall seconds to serialise `nbytes` starting at perf_counter time `start` (dilated)."""
        bits = 8.0 * nbytes
        if self.trace is None:
            return self.k * bits / self.bandwidth_bps
        # Walk the (dilated) trace from `start`: rate r/K for K * (segment length) seconds.
        tr, k = self.trace, self.k
        t = (start - self._origin) / k + self.trace_start_s          # trace time
        left, spent = bits, 0.0
        for _ in range(1_000_000):
            if tr.period <= 0:
                return spent + k * left / tr.rate_bps[0]
            local = t % tr.period
            i = max(0, bisect_right(tr.times, local) - 1)
            end = tr.times[i + 1] if i + 1 < len(tr.times) else tr.period
            seg = max(end - local, 1e-9)
            rate = tr.rate_bps[i]
            if rate > 0 and rate * seg >= left:
                return spent + k * left / rate
            left -= rate * seg
            spent += k * seg
            t += seg
        raise RuntimeError("trace replay did not converge")

    def reserve(self, nbytes: float, now: float | None = None) -> tuple[float, float]:
        """Book the link for one message: (serialisation done, arrival) as perf_counter times."""
        now = time.perf_counter() if now is None else now
        start = max(now, self._free_at)
        done = start + self.serialise_time(start, nbytes)
        if self.burst_bytes > 0:
            # credit: up to burst_bytes may go out at once when the link was idle
            credit = self.k * 8.0 * self.burst_bytes / max(self.bandwidth_bps, 1.0)
            done = max(start, done - max(0.0, min(credit, start - self._free_at)))
        self._free_at = done
        self.bytes_sent += int(nbytes)
        self.messages += 1
        return done, done + self.k * self.latency_s

    async def transmit(self, nbytes: float) -> float:
        """Carry one message; returns the wall seconds it took (queueing + serialisation + latency)."""
        t0 = time.perf_counter()
        _, arrival = await self.pace(nbytes)
        await sleep_until(arrival)
        return time.perf_counter() - t0


async def sleep_until(deadline: float) -> None:
    """Sleep until perf_counter() >= deadline; asyncio's timer is coarse, so finish with short sleeps."""
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        # sleep most of it, then yield briefly: the loop's timer wakes up to ~1 ms late
        await asyncio.sleep(left - 0.0005 if left > 0.001 else 0)


async def stretch_compute(t0: float, real: float, goal: float) -> float:
    """Hold an emulated node's compute until `goal` seconds after `t0` when the real work took less;
    the node's busy time: the enacted `goal`, or `real` when the host overran it. Not the wall time
    after the wait: this host's event loop wakes up late under load (by a millisecond or more on a
    busy 2-core machine), which is the emulator's imprecision, not the emulated node's load; counted
    as load it inflated a short segment's slowdown estimate by 15-20%."""
    if goal > real:
        await sleep_until(t0 + goal)
        return goal
    return real


def arrival_stamp(arrival: float, now: float, kernel_rate: bool) -> dict[str, float]:
    """The frame meta that tells the receiver when an emulated message arrives.

    With rates emulated here, the whole route's time is booked at send and the receiver waits for
    `not_before`, so the real loopback transfer runs inside it. With rates shaped by the kernel the
    real transfer IS the serialisation, so only the latency is left to add, after the bytes are in:
    `delay_s`, counted from receipt."""
    return {"delay_s": max(0.0, arrival - now)} if kernel_rate else {"not_before": arrival}


def stamped_arrival(meta: dict, received_at: float) -> float | None:
    """When a received frame counts as arrived (see arrival_stamp), or None when it carries no stamp."""
    delay = meta.get("delay_s")
    if isinstance(delay, (int, float)) and not isinstance(delay, bool) and math.isfinite(delay):
        return received_at + max(0.0, float(delay))
    nb = meta.get("not_before")
    if isinstance(nb, (int, float)) and not isinstance(nb, bool) and math.isfinite(nb):
        return float(nb)
    return None


class EmulatedNetwork:
    """The emulated links of one stage plan as seen by one sender (a worker or the client).

    `carry(src, dst, nbytes)` takes the planning model's route for that message size and holds the
    message on each hop's link in turn (store and forward). Each sender has its own link objects, so
    two senders that use the same link do not queue behind each other (documented limitation).
    """

    def __init__(self, nodes: Sequence[NodeSpec], links: Sequence[LinkSpec], dilation: float = 1.0) -> None:
        self.nodes = tuple(nodes)
        self.links = tuple(links)
        self.dilation = dilation
        self._links: dict[tuple[str, str, int], EmulatedLink] = {}
        self.kernel_rate = any(lk.kernel_rate for lk in self.links)

    def _link(self, a: str, b: str, nbytes: float) -> tuple[str, EmulatedLink]:
        spec = best_link(self.links, a, b, nbytes)
        key = (a, b, self.links.index(spec))
        link = self._links.get(key)
        if link is None:
            if spec.kernel_rate:          # the kernel serialises; only the latency is added here
                link = EmulatedLink(math.inf, spec.latency_s, dilation=self.dilation)
            else:
                link = EmulatedLink(spec.bandwidth_bps, spec.latency_s, trace=_trace_of(spec), dilation=self.dilation,
                                    trace_start_s=spec.trace_start_s)
            self._links[key] = link
        return f"{a}->{b}", link

    def retune(self, nodes: Sequence[NodeSpec], links: Sequence[LinkSpec], dilation: float) -> EmulatedNetwork:
        """This network with changed rates and latencies, the link objects (and the messages they are
        pacing) kept where a link is the same pair of nodes, so a change reaches transfers under way.
        A new network when the dilation or the kind of a link changed."""
        links = tuple(links)
        same = (dilation == self.dilation and len(links) == len(self.links) and all(
            (o.a, o.b, o.directed, o.kernel_rate) == (n.a, n.b, n.directed, n.kernel_rate)
            for o, n in zip(self.links, links, strict=True)))
        if not same:
            return EmulatedNetwork(nodes, links, dilation)
        self.nodes, self.links = tuple(nodes), links
        for (_, _, i), link in self._links.items():
            if not links[i].kernel_rate:
                link.retune(links[i], _trace_of(links[i]))
            else:
                link.latency_s = links[i].latency_s
        return self

    def schedule(self, src: str, dst: str, nbytes: float, now: float | None = None) -> tuple[float, dict[str, float]]:
        """Book a message on every hop of its route now: (arrival perf_counter time, seconds per hop).
        Hop k+1 starts serialising when hop k delivers (store and forward)."""
        t = time.perf_counter() if now is None else now
        start = t
        spent: dict[str, float] = {}
        for a, b in route(self.nodes, self.links, src, dst, nbytes):
            name, link = self._link(a, b, nbytes)
            _, arrival = link.reserve(nbytes, t)
            spent[name] = spent.get(name, 0.0) + (arrival - t)
            t = arrival
        return (t if t > start else start), spent

    async def pace(self, src: str, dst: str, nbytes: float, now: float | None = None,
                   lead_s: float | None = None) -> tuple[float, dict[str, float]]:
        """Serialise a message over its route as the links are while it goes (EmulatedLink.pace), hop
        after hop (store and forward: the next hop starts when the previous one delivers). Returns
        `lead_s` (default: the real loopback send's time for that size, see real_send_s) before the last
        hop has serialised it: (arrival perf_counter time, still to come; seconds per hop "a->b")."""
        lead = real_send_s(nbytes) if lead_s is None else lead_s
        t = start = time.perf_counter() if now is None else now
        spent: dict[str, float] = {}
        hops = route(self.nodes, self.links, src, dst, nbytes)
        for i, (a, b) in enumerate(hops):
            name, link = self._link(a, b, nbytes)
            _, arrival = await link.pace(nbytes, t, lead if i + 1 == len(hops) else 0.0)
            spent[name] = spent.get(name, 0.0) + (arrival - t)
            if i + 1 < len(hops):
                await sleep_until(arrival)
            t = arrival
        return (t if t > start else start), spent

    async def pace_direct(self, a: str, b: str, nbytes: float, now: float | None = None) -> float:
        """Serialise a message on the direct link a -> b only (a probe of that link): its arrival time."""
        _, link = self._link(a, b, nbytes)
        return (await link.pace(nbytes, now, real_send_s(nbytes)))[1]

    async def carry(self, src: str, dst: str, nbytes: float) -> dict[str, float]:
        """Hold a message for its route's emulated time; seconds spent per hop "a->b"."""
        arrival, spent = await self.pace(src, dst, nbytes, lead_s=0.0)
        await sleep_until(arrival)
        return spent


def _trace_of(spec: LinkSpec) -> Trace | None:
    return parse_trace(spec.trace, f"link {spec.a}-{spec.b} trace") if spec.trace else None


# -- the emulated network under a running system -----------------------------------------------------
def links_to_meta(links: Sequence[LinkSpec]) -> list[dict]:
    return [{"a": lk.a, "b": lk.b, "bandwidth_bps": lk.bandwidth_bps, "latency_s": lk.latency_s,
             "directed": lk.directed, "trace": [list(x) for x in lk.trace] if lk.trace else None,
             "trace_start_s": lk.trace_start_s} for lk in links]


@dataclass(frozen=True)
class Emulation:
    """What the emulated network really is, set by the controller (`emulate` frames) and independent of
    any plan: a daemon's plans are solved for its *estimate* of the network, while the workers play
    these links and slowdowns, which the daemon must discover by probing."""

    nodes: tuple[NodeSpec, ...]
    links: tuple[LinkSpec, ...]
    dilation: float = 1.0

    def slowdown(self, node: str) -> float:
        for n in self.nodes:
            if n.name == node:
                return n.slowdown
        return 1.0

    def to_meta(self) -> dict:
        return {"nodes": [{"name": n.name, "hardware": n.hardware, "slowdown": n.slowdown} for n in self.nodes],
                "links": links_to_meta(self.links), "dilation": self.dilation}

    @staticmethod
    def from_meta(meta: dict) -> Emulation:
        """Parse an `emulate` frame's meta; a malformed one is a ValueError naming the field."""
        try:
            nodes = tuple(NodeSpec(str(n["name"]), str(n.get("hardware", "local")), float(n.get("slowdown", 1.0)))
                          for n in meta["nodes"])
            links = tuple(LinkSpec(str(lk["a"]), str(lk["b"]), float(lk["bandwidth_bps"]), float(lk["latency_s"]),
                                   bool(lk.get("directed", False)),
                                   tuple((float(t), float(r)) for t, r in lk["trace"]) if lk.get("trace") else None,
                                   float(lk.get("trace_start_s", 0.0)))
                          for lk in meta["links"])
            dilation = float(meta.get("dilation", 1.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"emulate: malformed: {type(exc).__name__}: {exc}") from None
        names = {n.name for n in nodes}
        for i, lk in enumerate(links):
            if lk.a not in names or lk.b not in names:
                raise ValueError(f"emulate: links[{i}]: unknown node")
            if not (lk.bandwidth_bps > 0 and math.isfinite(lk.bandwidth_bps)) or not (0 <= lk.latency_s < 3600):
                raise ValueError(f"emulate: links[{i}]: bandwidth must be positive and latency in [0, 3600) s")
        for n in nodes:
            if not (1.0 <= n.slowdown < 1e6):
                raise ValueError(f"emulate: node {n.name}: slowdown must be in [1, 1e6)")
        if not (1.0 <= dilation < 1e6):
            raise ValueError("emulate: dilation must be in [1, 1e6)")
        return Emulation(nodes, links, dilation)

    def network(self) -> EmulatedNetwork:
        return EmulatedNetwork(self.nodes, self.links, self.dilation)
