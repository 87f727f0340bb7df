"""bench.cooperative_map's cells, on the shipped family profiles (pixel input; no measuring, no workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import cooperative_map
from profiler.profile import load_profile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def family() -> tuple:
    return (load_profile(EXAMPLES / "captioner-target.profile.json"),
            load_profile(EXAMPLES / "captioner-draft.profile.json"))


def test_cooperative_wins_where_the_device_cannot_hold_the_target_and_the_cloud_is_far(family: tuple) -> None:
    target, draft = family
    r = cooperative_map.map_cell(target, draft, "phone-a78", 31.6, 0.002, False, 16e6, 0.025)
    assert r["target_device_ms"] is None                       # 16 MB cannot hold the target
    others = [r["split_ms"], r["target_edge_ms"], r["target_cloud_ms"]]
    assert r["winner"] == "cooperative" and r["coop_ms"] < min(others)
    assert r["coop_vs_best_other"] == pytest.approx(min(others) / r["coop_ms"])
    assert r["coop_draft_on"] == ["device"] and r["coop_k"] >= 1


def test_the_target_on_the_device_beats_cooperation_when_it_fits(family: tuple) -> None:
    target, draft = family
    r = cooperative_map.map_cell(target, draft, "phone-a78", 31.6, 0.002, False, None, 0.025)
    assert r["target_device_ms"] is not None
    assert r["winner"] == "split" and r["coop_ms"] > r["split_ms"]
    assert r["split_ms"] <= r["target_device_ms"] + 1e-9         # the optimum is never worse than a single tier


def test_a_far_access_link_makes_every_round_too_dear(family: tuple) -> None:
    target, draft = family
    near = cooperative_map.map_cell(target, draft, "phone-a78", 31.6, 0.002, False, 16e6, 0.025)
    far = cooperative_map.map_cell(target, draft, "phone-a78", 31.6, 0.020, False, 16e6, 0.025)
    assert far["coop_ms"] > near["coop_ms"] and far["winner"] == "split"


def test_a_measured_cell_is_parsed_or_refused_in_one_line() -> None:
    assert cooperative_map.parse_cell("phone-a78,31.6,2,16,25") == ("phone-a78", 31.6, 0.002, 16e6, 0.025)
    assert cooperative_map.parse_cell("phone-a78,31.6,2,0,25")[3] is None
    with pytest.raises(SystemExit, match="expected DEVICE"):
        cooperative_map.parse_cell("phone-a78,31.6")
    with pytest.raises(SystemExit, match="must be numbers"):
        cooperative_map.parse_cell("phone-a78,fast,2,16,25")
