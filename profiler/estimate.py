"""Latencies on hardware that is not at hand, from a roofline model calibrated on this machine.

For a unit in a phase with F FLOPs and B bytes moved (weights read + input + output + the KV cache it
touches), the roofline time on a device with peak P FLOP/s and memory bandwidth W bytes/s is

    roof(P, W) = max(F / P, B / W)

Real units do not reach the roofline: small kernels, element-wise work that FLOP counts leave out,
and a fixed cost for every operation dispatched (a kernel launch on a GPU, framework dispatch
everywhere), which dominates small units. So the model is fitted on this machine first. Its own
P_local (the best fp32 matmul rate) and W_local (the best large-copy rate) are measured when it is
profiled, and every measured latency t of a unit pass that dispatched n operations is fitted as

    t = a * roof(P_local, W_local) + c * n        (a >= 1: how far units sit above the roofline;
                                                    c >= 0: the fixed cost of one operation)

by least squares on relative error (every entry counts alike, small or large). A described device
then gets

    t_device = a * max(F / (P_device * efficiency), B / W_device) + c_device * n

with `efficiency` (the sustained fraction of the datasheet peak, from its description) and `c_device`
(the description's `op_overhead_s`, else this machine's fitted `c` times the description's
`op_overhead_scale`, default 1: the same Python and PyTorch dispatch drives the device, from a host
CPU that may be slower). Entries made this way are marked `source: estimated`.

Units marked `host_code` (decoding an image file, tokenizing a prompt) run plain CPU code, not tensor
kernels, so no roofline describes them: they are left out of the fit, and a device gets their measured
time here times its description's `host_factor` (how many times slower its host CPU runs such code
than a current x86 server core, the class of machine the profiles are made on).
"""

from __future__ import annotations

from dataclasses import dataclass

from profiler.errors import InputError
from profiler.hardware import DeviceClass
from profiler.profile import Profile, Unit

MIN_SLOWDOWN = 1.0     # a fitted `a` below 1 would claim units beat this machine's own roofline


@dataclass(frozen=True)
class Calibration:
    """How this machine's measured latencies relate to its own roofline."""

    hardware: str
    peak_flops: float             # measured fp32 matmul FLOP/s of the profiled machine
    mem_bandwidth: float          # measured copy bandwidth, bytes/s
    slowdown: float               # a: measured time / roofline time (>= 1), the overhead taken out
    op_overhead_s: float          # c: fixed cost of one dispatched operation
    entries: int                  # measured (unit, phase) entries the fit used

    def as_dict(self) -> dict[str, float | int | str]:
        return {"calibrated_on": self.hardware, "roofline_slowdown": self.slowdown,
                "op_overhead_s": self.op_overhead_s, "calibration_entries": self.entries}


def bytes_moved(unit: Unit, phase: str, in_bytes: float) -> float:
    """Bytes a unit's pass moves: the profiler's record when there is one, else weights + input + output."""
    recorded = (unit.model_extra or {}).get("bytes_moved")
    if isinstance(recorded, dict) and phase in recorded:
        return float(recorded[phase])
    return float(unit.param_bytes) + in_bytes + float(unit.out_bytes.get(phase, 0.0))


def op_count(unit: Unit, phase: str) -> float:
    """Operations a unit's pass dispatches, from the profiler's record (1 when absent: a per-call cost)."""
    recorded = (unit.model_extra or {}).get("ops")
    if isinstance(recorded, dict) and phase in recorded:
        return float(recorded[phase])
    return 1.0


def unit_inputs(profile: Profile) -> dict[tuple[int, str], float]:
    """Bytes that reach each (unit, phase): the phase input for its first unit, else the previous unit's output."""
    out: dict[tuple[int, str], float] = {}
    for ph in profile.phases:
        for i in range(ph.first, ph.last + 1):
            prev = profile.units[i - 1].out_bytes.get(ph.name, 0.0) if i > ph.first else ph.in_bytes
            out[(i, ph.name)] = float(prev)
    return out


def roofline(flops: float, nbytes: float, peak_flops: float, bandwidth: float) -> float:
    return max(flops / peak_flops, nbytes / bandwidth)


def _local_machine(profile: Profile, hardware: str) -> tuple[float, float]:
    info = profile.hardware.get(hardware, {})
    try:
        peak = float(info["peak_flops_measured"])  # type: ignore[arg-type]
        bw = float(info["mem_bandwidth_measured"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"profile {profile.model}: hardware.{hardware}: no measured peak_flops_measured / "
                         "mem_bandwidth_measured to calibrate against (profile it with `aiflow profile`)") from None
    if peak <= 0 or bw <= 0:
        raise InputError(f"profile {profile.model}: hardware.{hardware}: measured peak and bandwidth must be > 0")
    return peak, bw


def fit_two(xs: list[float], ns: list[float], ts: list[float]) -> tuple[float, float]:
    """t = a * x + c * n minimising the sum of ((a x + c n - t) / t)^2, with a >= MIN_SLOWDOWN, c >= 0."""
    w = [1.0 / (t * t) for t in ts]
    sxx = sum(wi * x * x for wi, x in zip(w, xs, strict=True))
    snn = sum(wi * n * n for wi, n in zip(w, ns, strict=True))
    sxn = sum(wi * x * n for wi, x, n in zip(w, xs, ns, strict=True))
    sxt = sum(wi * x * t for wi, x, t in zip(w, xs, ts, strict=True))
    snt = sum(wi * n * t for wi, n, t in zip(w, ns, ts, strict=True))
    det = sxx * snn - sxn * sxn
    a, c = MIN_SLOWDOWN, -1.0
    if det > 0:
        a = (sxt * snn - snt * sxn) / det
        c = (snt * sxx - sxt * sxn) / det
    if c < 0 or det <= 0:                       # no per-operation cost visible: all in the slope
        c = 0.0
        a = sxt / sxx if sxx > 0 else MIN_SLOWDOWN
    if a < MIN_SLOWDOWN:                        # cannot beat the roofline: fix a, refit c
        a = MIN_SLOWDOWN
        c = max(0.0, (snt - a * sxn) / snn) if snn > 0 else 0.0
    return a, c


def calibrate(profile: Profile, hardware: str) -> Calibration:
    """Fit a and o on the entries of `hardware` that were measured (not estimated)."""
    if profile.units[0].source.get(hardware, "measured") == "estimated" or hardware not in profile.hardware_classes:
        raise InputError(f"profile {profile.model}: {hardware}: no measured latencies to calibrate against")
    peak, bw = _local_machine(profile, hardware)
    inputs = unit_inputs(profile)
    xs: list[float] = []
    ns: list[float] = []
    ts: list[float] = []
    for i, u in enumerate(profile.units):
        per_phase = u.latency_s.get(hardware, {})
        for ph in profile.phases:
            t = per_phase.get(ph.name)
            if t is None or t <= 0 or not ph.first <= i <= ph.last or u.is_host_code:
                continue
            flops = float(u.flops.get(ph.name, 0.0))
            xs.append(roofline(flops, bytes_moved(u, ph.name, inputs[(i, ph.name)]), peak, bw))
            ns.append(op_count(u, ph.name))
            ts.append(float(t))
    if not xs:
        raise InputError(f"profile {profile.model}: {hardware}: no measured latencies to calibrate against")
    a, c = fit_two(xs, ns, ts)
    return Calibration(hardware=hardware, peak_flops=peak, mem_bandwidth=bw, slowdown=a, op_overhead_s=c,
                       entries=len(xs))


def measured_class(profile: Profile) -> str:
    """The first hardware class of the profile whose latencies were measured."""
    for hw in profile.hardware_classes:
        if all(u.source.get(hw, "measured") == "measured" for u in profile.units) and hw in profile.hardware:
            return hw
    raise InputError(f"profile {profile.model}: no measured hardware class to calibrate an estimate against")


def estimate_latencies(profile: Profile, device: DeviceClass, calibration: Calibration) -> list[dict[str, float]]:
    """Per unit: phase -> estimated seconds of one pass on `device`."""
    inputs = unit_inputs(profile)
    peak = device.peak_flops * device.efficiency
    bw = device.mem_bandwidth_bytes_per_s
    per_op = (device.op_overhead_s if device.op_overhead_s is not None
              else calibration.op_overhead_s * device.op_overhead_scale)
    out: list[dict[str, float]] = []
    for i, u in enumerate(profile.units):
        per_phase: dict[str, float] = {}
        for ph in profile.phases:
            if not ph.first <= i <= ph.last:
                continue
            measured = u.latency_s.get(calibration.hardware, {}).get(ph.name) if u.is_host_code else None
            if measured is not None:
                per_phase[ph.name] = float(measured) * device.host_factor
                continue
            flops = float(u.flops.get(ph.name, 0.0))
            roof = roofline(flops, bytes_moved(u, ph.name, inputs[(i, ph.name)]), peak, bw)
            per_phase[ph.name] = calibration.slowdown * roof + per_op * op_count(u, ph.name)
        out.append(per_phase)
    return out


def estimate_profile(profile: Profile, device: DeviceClass, *, base: str | None = None) -> Profile:
    """`profile` with latencies for `device` added (source: estimated), calibrated on class `base`."""
    base = base or measured_class(profile)
    if device.name in profile.hardware_classes:
        raise InputError(f"{device.name}: the profile already has latencies for this hardware class")
    cal = calibrate(profile, base)
    lat = estimate_latencies(profile, device, cal)
    units = []
    for u, per_phase in zip(profile.units, lat, strict=True):
        units.append(u.model_copy(update={
            "latency_s": {**u.latency_s, device.name: per_phase},
            "source": {**u.source, device.name: "estimated"},
        }))
    info: dict[str, object] = {
        "estimated": True, "description": device.description, "tier": device.tier,
        "peak_flops": device.peak_flops, "mem_bandwidth_bps": device.mem_bandwidth_bps,
        "mem_bytes": device.mem_bytes, "efficiency": device.efficiency,
        "op_overhead_scale": device.op_overhead_scale, "host_factor": device.host_factor, **cal.as_dict(),
    }
    if device.op_overhead_s is not None:
        info["op_overhead_s"] = device.op_overhead_s
    return profile.model_copy(update={"units": units, "hardware": {**profile.hardware, device.name: info}})
