"""Link and node estimates from samples: pure functions, tested on replayed traces.

A link sample is (bytes, seconds in flight) of one message over one link, in the network's own time
(the runtime's wall seconds divided by the time dilation K). The planning model says a message of b
bytes takes `latency + 8 b / bandwidth`, so the samples lie on a line. Queueing (behind another
request, behind an activation on the same link) only ever adds time, so each size is represented by
a low quantile of its times, and the line through those points is a robust fit (Theil-Sen: the
median of pairwise slopes, then the median intercept). When every sample in the window has one size
(an activation crosses a link at one size) the slope cannot be separated from the intercept: the
latency is then taken from the last estimate (active probes of two sizes keep it fresh).

A node's slowdown is how much longer its compute took than the profile says for the same units:
total busy time over total profiled time in the window, at least 1 (the planning model's slowdown
is >= 1).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MAX_FIT_SAMPLES = 120          # Theil-Sen is quadratic: fit the newest ones


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_bps: float
    latency_s: float
    samples: int
    method: str                # "fit" (two sizes or more), "rate" (one size, known latency), "prior"


def _low(values: Sequence[float], q: float = 0.25) -> float:
    """A low quantile: queueing only ever adds time, so the fast samples show the link itself."""
    v = sorted(values)
    return v[int(q * (len(v) - 1))]


def size_buckets(pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(bytes, low-quantile seconds) per group of samples of about one size (within 10%)."""
    groups: list[list[tuple[float, float]]] = []
    for b, t in sorted(pts):
        if groups and b <= groups[-1][0][0] * 1.1 + 1:
            groups[-1].append((b, t))
        else:
            groups.append([(b, t)])
    return [(statistics.median(b for b, _ in g), _low([t for _, t in g])) for g in groups]


def estimate_link(samples: Sequence[tuple[float, float]], prior: LinkEstimate) -> LinkEstimate:
    """Bandwidth and latency of a link from (bytes, seconds) samples; `prior` when they say nothing.

    Samples are grouped by size and each group is represented by a low quantile of its times (a
    message that waited behind another, or behind an activation on the same link, took longer than
    the link needs, never shorter); a line through the groups (Theil-Sen) gives 8 / bandwidth as its
    slope and the latency as its intercept."""
    pts = [(float(b), float(t)) for b, t in samples if b >= 0 and math.isfinite(t) and t >= 0][-MAX_FIT_SAMPLES:]
    if not pts:
        return prior
    buckets = size_buckets(pts)
    lo, hi = buckets[0][0], buckets[-1][0]
    if len(buckets) >= 2 and hi - lo >= 256 and hi >= 2 * max(lo, 1.0):
        slopes = [(t2 - t1) / (b2 - b1) for i, (b1, t1) in enumerate(buckets) for b2, t2 in buckets[i + 1:]
                  if abs(b2 - b1) >= 0.25 * (hi - lo)]
        if slopes:
            slope = statistics.median(slopes)
            if slope > 0:
                latency = max(0.0, statistics.median(t - slope * b for b, t in buckets))
                return LinkEstimate(8.0 / slope, latency, len(pts), "fit")
    # one size: the latency from what we knew, the rate from the low-quantile time
    b = statistics.median(b for b, _ in pts)
    t = _low([t for _, t in pts])
    serial = t - prior.latency_s
    if b > 0 and serial > 0:
        return LinkEstimate(8.0 * b / serial, prior.latency_s, len(pts), "rate")
    return LinkEstimate(prior.bandwidth_bps, min(prior.latency_s, t), len(pts), "prior")


def estimate_slowdown(samples: Sequence[tuple[float, float]], prior: float, min_expected_s: float = 0.005) -> float:
    """A node's slowdown from (measured busy seconds, profiled seconds) of its segments: the ratio of
    their sums, at least 1; `prior` without any. Segments shorter than `min_expected_s` count only when
    there is nothing longer: a timer's overshoot of half a millisecond is a large part of a tiny one."""
    pts = [(b, e) for b, e in samples if math.isfinite(b) and math.isfinite(e) and b > 0 and e > 0]
    long = [(b, e) for b, e in pts if e >= min_expected_s]
    use = long or pts
    if not use:
        return prior
    return max(1.0, sum(b for b, _ in use) / sum(e for _, e in use))


def probe_bytes(bandwidth_bps: float, interval_s: float, budget: float, lo: int, hi: int) -> int:
    """The large active probe's size: `budget` of what the link carries in one probe interval, bounded."""
    want = budget * bandwidth_bps * interval_s / 8.0
    return int(min(hi, max(lo, want)))



def shift_start(samples: Sequence[tuple[float, float]], est: LinkEstimate, *, tolerance: float = 0.25,
                count: int = 2) -> int | None:
    """Where the link changed: the index from which to keep samples, or None when it did not.

    A step shows as a run of samples on one side of the estimate's line; a lone outlier does not. The
    test looks at the newest `count` large samples (at least half the largest size: they show the
    bandwidth) and the newest `count` small ones (they show the latency) separately, since a drop in
    bandwidth hardly moves a 100-byte probe. When either run is off by more than `tolerance`
    (relative) in one direction, the samples before the run are dropped, so the estimate follows the
    step within `count` probe rounds instead of waiting for a window's median to turn over."""
    if est.bandwidth_bps <= 0 or not samples:
        return None
    big = max(b for b, _ in samples)
    cuts = []
    for large in (True, False):
        idx = [i for i, (b, _) in enumerate(samples) if (b >= big / 2) == large][-count:]
        if len(idx) < count:
            continue
        errs = []
        for i in idx:
            b, t = samples[i]
            want = est.latency_s + 8.0 * b / est.bandwidth_bps
            errs.append((t - want) / want if want > 0 else 0.0)
        if all(e > tolerance for e in errs) or all(e < -tolerance for e in errs):
            cuts.append(idx[0])
    return min(cuts) if cuts else None


def implied_bandwidth(nbytes: float, seconds: float, latency_s: float) -> float | None:
    """The bandwidth one sample implies given the latency (None when it says nothing)."""
    serial = seconds - latency_s
    return 8.0 * nbytes / serial if nbytes > 0 and serial > 0 else None
