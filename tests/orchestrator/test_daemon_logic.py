"""The daemon's pure parts: link and load estimates, change detection, snapshots and decisions."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from orchestrator.costmodel import evaluate
from orchestrator.daemon.decide import decide, load_bytes
from orchestrator.daemon.estimate import (
    LinkEstimate,
    estimate_link,
    estimate_slowdown,
    probe_bytes,
    shift_start,
)
from orchestrator.daemon.settings import DaemonSettings
from orchestrator.daemon.snapshot import UNAVAILABLE, link_key, take_snapshot
from orchestrator.network import load_network
from orchestrator.plan import Plan
from orchestrator.planner import solve
from profiler.errors import InputError
from profiler.profile import load_profile
from runtime.links import read_trace_samples

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "examples" / "tiny-captioner.profile.json"
NETWORK = ROOT / "examples" / "daemon.network.yaml"
PRIOR = LinkEstimate(1e7, 0.01, 0, "configured")


def line(bw: float, lat: float, sizes: list[int], noise: float = 0.0, seed: int = 0) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(b, (lat + 8 * b / bw) * (1 + rng.uniform(-noise, noise))) for b in sizes]


def test_fit_recovers_bandwidth_and_latency_from_two_sizes() -> None:
    samples = line(2e6, 0.03, [64, 20_000] * 10, noise=0.05, seed=1)
    est = estimate_link(samples, PRIOR)
    assert est.method == "fit"
    assert est.bandwidth_bps == pytest.approx(2e6, rel=0.1)
    assert est.latency_s == pytest.approx(0.03, rel=0.15)


def test_fit_shrugs_off_outliers() -> None:
    samples = line(5e6, 0.01, [100, 50_000] * 12, noise=0.02, seed=2)
    samples[3] = (50_000, 5.0)           # a sample stuck behind a queue
    samples[8] = (100, 2.0)
    est = estimate_link(samples, PRIOR)
    assert est.bandwidth_bps == pytest.approx(5e6, rel=0.1)
    assert est.latency_s == pytest.approx(0.01, rel=0.3)


def test_a_probe_queued_behind_an_activation_does_not_move_the_estimate() -> None:
    # seen in a run: the first small probe waited behind a 33 KB activation on a 1 Mbit/s link
    samples = [(210, 0.0319), (2196, 0.0224), (2196, 0.0229), (210, 0.0065), (2196, 0.0224), (2196, 0.0224)]
    est = estimate_link(samples, LinkEstimate(1e6, 0.005, 10, "fit"))
    assert est.bandwidth_bps == pytest.approx(1e6, rel=0.05)
    assert est.latency_s == pytest.approx(0.005, abs=0.0005)


def test_one_size_uses_the_known_latency() -> None:
    est = estimate_link(line(1e6, 0.01, [33_000] * 5), PRIOR)
    assert est.method == "rate"
    assert est.latency_s == PRIOR.latency_s
    assert est.bandwidth_bps == pytest.approx(1e6, rel=1e-6)


def test_no_samples_keep_the_prior() -> None:
    assert estimate_link([], PRIOR) is PRIOR


def test_replayed_3g_trace_is_followed() -> None:
    """Samples drawn from a real 3G trace: each window's estimate is near that window's true mean rate."""
    trace = read_trace_samples(next((ROOT / "data" / "traces" / "norway-3g").glob("*")))
    rates = [r * 1e6 for _, r in trace if r > 0.05][:200]
    errs = []
    for start in range(0, len(rates) - 10, 10):
        window = rates[start:start + 10]
        samples = [(b, 0.05 + 8 * b / r) for r in window for b in (100, 8000)]
        est = estimate_link(samples, PRIOR)
        true_median = sorted(window)[len(window) // 2]
        errs.append(abs(est.bandwidth_bps - true_median) / true_median)
        assert est.latency_s == pytest.approx(0.05, abs=0.02)
    assert sorted(errs)[len(errs) // 2] < 0.25


def test_a_step_is_detected_and_a_lone_outlier_is_not() -> None:
    est = LinkEstimate(2e7, 0.005, 20, "fit")
    before = line(2e7, 0.005, [64, 25_000] * 6)
    after = line(1e6, 0.005, [64, 25_000] * 2)
    cut = shift_start(before + after, est)
    assert cut is not None and cut >= len(before)          # only the new samples are kept
    refit = estimate_link((before + after)[cut:], est)
    assert refit.bandwidth_bps == pytest.approx(1e6, rel=0.05)
    lone = before + [(25_000, 1.0)] + line(2e7, 0.005, [64, 25_000])
    assert shift_start(lone, est) is None


def test_slowdown_is_busy_time_over_profiled_time_of_at_least_one() -> None:
    # (busy, profiled): long segments decide; a 2 ms segment that a timer overshot by 1 ms does not
    samples = [(0.31, 0.1), (0.29, 0.1), (0.003, 0.001), (0.0032, 0.001)]
    assert estimate_slowdown(samples, 1.0) == pytest.approx(3.0, abs=0.01)
    assert estimate_slowdown([(0.003, 0.001)], 1.0) == pytest.approx(3.0)        # nothing longer: used
    assert estimate_slowdown([(0.08, 0.1), (0.09, 0.1)], 5.0) == 1.0
    assert estimate_slowdown([], 2.5) == 2.5


def test_probe_size_keeps_to_the_budget() -> None:
    assert probe_bytes(1e6, 5.0, 0.01, 2048, 262144) == 6250          # 1% of 5 s at 1 Mbit/s
    assert probe_bytes(1e9, 5.0, 0.01, 2048, 262144) == 262144
    assert probe_bytes(1e4, 5.0, 0.01, 2048, 262144) == 2048


def test_snapshot_takes_estimates_and_drops_down_nodes() -> None:
    base = load_network(NETWORK)
    links = {link_key("edge", "phone"): LinkEstimate(1e6, 0.007, 5, "fit")}
    snap = take_snapshot(base, links, {"phone": 4.5, "edge": 0.5}, {"cloud"})
    assert [n.name for n in snap.nodes] == ["phone", "edge"]
    assert snap.node("phone").slowdown == 4.5 and snap.node("edge").slowdown == 1.0
    (lk,) = snap.links
    assert (lk.bandwidth_bps, lk.latency_s) == (1e6, 0.007)
    # the source is kept, unable to compute, when it is down
    snap2 = take_snapshot(base, {}, {}, {"phone"})
    assert snap2.node("phone").hardware == UNAVAILABLE
    prof = load_profile(PROFILE)
    plan = solve(prof, snap2)
    assert "phone" not in plan.assignment


def _plan(assignment: list[str], **extra: object) -> Plan:
    return Plan(model="m", assignment=assignment, predicted_latency_s=0.0, status="optimal", solver="test", **extra)


def test_decide_first_plan_threshold_payback_and_down_nodes() -> None:
    prof = load_profile(PROFILE)
    net = load_network(NETWORK)
    s = DaemonSettings(threshold=0.10, horizon_s=60, min_request_rate_hz=1.0)
    best = solve(prof, net).assignment
    phone = ["phone"] * len(best)
    first = decide(None, _plan(best), prof, net, s, 0.0)
    assert first.apply and first.reason == "first plan"
    same = decide(_plan(best), _plan(best, reductions=[]), prof, net, s, 5.0)
    assert not same.apply
    # moving from phone-only to the optimum is a clear gain, and pays back
    up = decide(_plan(phone), _plan(best), prof, net, s, 1.0)
    lp, lb = evaluate(prof, net, phone).latency_s, evaluate(prof, net, best).latency_s
    assert up.apply and up.gain_s == pytest.approx(lp - lb)
    # a gain below the threshold is not taken
    tight = DaemonSettings(threshold=(lp - lb) / lp + 0.01)
    assert not decide(_plan(phone), _plan(best), prof, net, tight, 1.0).apply
    # a migration that would not pay back over the horizon is not taken
    slow_load = DaemonSettings(load_bytes_per_s=1.0, horizon_s=1.0, min_request_rate_hz=0.01)
    d = decide(_plan(phone), _plan(best), prof, net, slow_load, 0.0)
    assert not d.apply and "migration" in d.reason
    assert d.migration_s == pytest.approx(slow_load.switch_s + sum(load_bytes(prof, phone, best).values()))
    # the plan in force uses a node that is down: switch whatever the gain
    snap = take_snapshot(net, {}, {}, {"cloud"})
    on_cloud = ["phone"] + ["cloud"] * (len(best) - 1)
    down = decide(_plan(on_cloud), _plan(phone), prof, snap, tight, 0.0)
    assert down.apply and "down" in down.reason and math.isinf(down.current_s)
    assert down.to_dict()["current_s"] is None


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(InputError, match="probe_interval_s"):
        DaemonSettings(probe_interval_s=0)
    with pytest.raises(InputError, match="threshold"):
        DaemonSettings(threshold=-1)
