"""bench.native_check's prediction at the host's speed: every term the host computes taken `speed` times
its profiled time, the links' terms unchanged. Checked against a profile whose unit latencies and runtime
overheads are themselves scaled, evaluated by the cost model as it stands."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.native_check import at_host_speed, network, split_pins
from orchestrator.costmodel import latency_for_steps
from orchestrator.planner import PlanOptions, solve
from profiler.profile import load_profile, parse_profile

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "examples" / "tiny-captioner.profile.json"
OVERHEADS = {"hop_s": 4e-4, "request_s": 2e-3, "pass_s": 6e-4, "codec": {}}


def scaled(profile_doc: dict, hw: str, speed: float) -> dict:
    """The profile document with `hw`'s unit latencies and overheads multiplied by `speed`."""
    doc = {**profile_doc, "units": [dict(u) for u in profile_doc["units"]]}
    for u in doc["units"]:
        u["latency_s"] = {**u["latency_s"], hw: {ph: s * speed for ph, s in u["latency_s"][hw].items()}}
    doc["overheads"] = {hw: {k: (v * speed if isinstance(v, float) else v) for k, v in OVERHEADS.items()}}
    return doc


@pytest.mark.parametrize("speed", [0.6, 1.0, 1.7])
@pytest.mark.parametrize("pinned", [False, True])
def test_at_host_speed_scales_what_the_host_computes(speed: float, pinned: bool) -> None:
    base = load_profile(PROFILE).model_dump(by_alias=True, exclude_none=True)
    hw = "cpu-xeon-1t"
    profile = parse_profile({**base, "overheads": {hw: OVERHEADS}}, "profile")
    net = network(hw, 5, 0.01, split_pins(profile) if pinned else None)
    plan = solve(profile, net, PlanOptions())
    assert pinned == (len(set(plan.assignment)) == 3)
    expected = latency_for_steps(parse_profile(scaled(base, hw, speed), "profile"), net, plan.assignment, 12)
    assert expected is not None
    got = at_host_speed(profile, net, plan.assignment, 12, speed)
    assert math.isclose(got, expected, rel_tol=1e-9)
    if pinned and speed != 1.0:      # the split's links' time does not scale: not simply proportional
        assert not math.isclose(got, speed * at_host_speed(profile, net, plan.assignment, 12, 1.0), rel_tol=1e-3)
