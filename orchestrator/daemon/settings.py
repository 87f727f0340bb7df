"""The daemon's settings: intervals, decision thresholds and bounds, with the defaults `--help` shows."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from profiler.errors import InputError
from runtime.worker import MAX_IDLE_S, MAX_NEW_TOKENS


@dataclass(frozen=True)
class DaemonSettings:
    probe_interval_s: float = 5.0        # health, link and load measurements
    solve_interval_s: float = 10.0       # re-solve for the latest snapshot
    # decide: a candidate replaces the plan in force only when it is this much faster (relative) ...
    threshold: float = 0.10
    # ... and the time it saves over this horizon of requests repays the migration
    horizon_s: float = 60.0
    load_bytes_per_s: float = 200e6      # how fast a node loads the weights of units it gains
    switch_s: float = 0.05               # fixed cost of a switch (prepare + commit round trips)
    # measurements
    window_s: float = 30.0               # samples older than this are forgotten
    min_request_rate_hz: float = 0.1     # the rate assumed for the payback when requests are rarer
    probe_budget: float = 0.01           # active probe bytes per interval, as a share of a link's capacity
    probe_min_bytes: int = 512           # the large probe's size is at least this ...
    probe_max_bytes: int = 262144        # ... and at most this
    health_timeout_s: float = 2.0        # a node that does not answer its health check in time is down
    # requests
    drain_s: float = 30.0                # on SIGTERM, requests in flight get this long to finish
    request_timeout_s: float = 120.0     # a request that has not finished by then fails
    max_new_tokens: int = 64             # the most a request may ask for
    max_retries: int = 2                 # a request whose node died runs again on the re-applied plan, this often
    max_open_requests: int = 64          # more at once are refused (429)
    max_open_per_client: int = 16        # ... and more from one client address
    max_body_bytes: int = 12 << 20       # a larger HTTP body is refused (413): an 8 MiB image in base64 fits
    # retention: probe, node-sample and request rows older than this become hourly roll-ups (0: keep all)
    retain_raw_s: float = 7 * 86400.0
    rollup_interval_s: float = 3600.0    # how often the roll-up job runs
    # history writes that fail (database unreachable) are kept, at most this many, and tried again this often
    history_buffer: int = 100_000
    history_retry_s: float = 2.0
    # token reduction: a plan may reduce the encoder output when that loses at most this many points of
    # scene accuracy (the profile's `reductions` section; docs/planner.md, "Token reduction")
    max_quality_loss: float = 1.0
    # a local worker the daemon started stops once no call from it came for this long: long enough to
    # outlive a crashed daemon until the next one adopts it, short enough that none lingers for ever
    worker_lease_s: float = 600.0
    solver: str = "cbc"
    solve_time_limit_s: float | None = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not (math.isfinite(v) and v >= 0):
                raise InputError(f"daemon settings: {f.name} must be a finite number, not negative, got {v}")
        # a request's deadline is also its state's idle timeout on every worker, which caps it
        if not 0 < self.request_timeout_s <= MAX_IDLE_S:
            raise InputError(f"daemon settings: request_timeout_s must be in (0, {MAX_IDLE_S:g}] s, "
                             f"got {self.request_timeout_s}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InputError(f"daemon settings: max_new_tokens must be in [1, {MAX_NEW_TOKENS}], "
                             f"got {self.max_new_tokens}")
        if self.max_open_requests < 1 or self.max_open_per_client < 1:
            raise InputError("daemon settings: max_open_requests and max_open_per_client must be at least 1")
        for name in ("probe_interval_s", "solve_interval_s", "window_s", "load_bytes_per_s", "health_timeout_s",
                     "rollup_interval_s", "history_retry_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"daemon settings: {name} must be positive, got {getattr(self, name)}")
        if self.worker_lease_s < 3 * self.probe_interval_s:
            raise InputError(f"daemon settings: worker_lease_s must be at least 3 probe intervals "
                             f"({3 * self.probe_interval_s:g} s), got {self.worker_lease_s}")
        if self.probe_min_bytes > self.probe_max_bytes:
            raise InputError("daemon settings: probe_min_bytes must not exceed probe_max_bytes")
