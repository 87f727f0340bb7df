"""Plans for compressed activations: the byte counts the planner sees match what the runtime sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.compression import WIRE_RATIO, compressed_profile
from orchestrator.network import load_network
from orchestrator.strategies import strategy_plans
from profiler.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
PROFILE = load_profile(ROOT / "examples" / "tiny-captioner.profile.json")
NETWORK = ROOT / "examples" / "three-tier.network.yaml"


@pytest.mark.parametrize("how", ["fp16", "int8"])
def test_activations_shrink_but_token_ids_and_raw_input_do_not(how: str) -> None:
    small = compressed_profile(PROFILE, how)
    last = {p.name: p.last for p in PROFILE.phases}
    for i, (a, b) in enumerate(zip(PROFILE.units, small.units, strict=True)):
        for ph, nbytes in a.out_bytes.items():
            want = nbytes if last.get(ph) == i else nbytes * WIRE_RATIO[how]
            assert b.out_bytes[ph] == pytest.approx(want)
    assert [e.bytes for e in small.edges] == pytest.approx([e.bytes * WIRE_RATIO[how] for e in PROFILE.edges])
    assert [p.in_bytes for p in small.phases] == [p.in_bytes for p in PROFILE.phases]
    assert small.units[0].latency_s == PROFILE.units[0].latency_s


def test_none_is_the_profile_itself_and_unknown_is_an_error() -> None:
    assert compressed_profile(PROFILE, "none") is PROFILE
    with pytest.raises(ValueError, match="unknown 'zstd'"):
        compressed_profile(PROFILE, "zstd")


def test_compressed_plans_ask_for_compression_and_are_never_slower() -> None:
    # Low-latency links, where the optimum splits the model and sends activations.
    net = load_network(NETWORK).with_link("phone", "edge", latency_s=0.002).with_link("edge", "cloud",
                                                                                      latency_s=0.005)
    plain = {s.name: s.plan for s in strategy_plans(PROFILE, net)}
    for how in ("fp16", "int8"):
        comp = {s.name: s.plan for s in strategy_plans(PROFILE, net, compression=how)}
        assert all(p is not None and p.compression == how for p in comp.values())
        assert comp["optimal"].predicted_latency_s <= plain["optimal"].predicted_latency_s + 1e-12
    assert all(p is not None and p.compression is None for p in plain.values())
