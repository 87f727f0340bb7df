"""The experiment's reports and the split map, on the shipped example profile (no workers, no measuring)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from bench import aiflow_experiment as exp
from bench import split_map
from orchestrator.network import load_network
from profiler.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "examples" / "tiny-captioner.profile.json"


@pytest.fixture()
def example_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both benches take the cached profile of this machine; give them the shipped example instead."""
    def cached(adapter: object, net: object) -> tuple[object, Path, bool]:
        return load_profile(PROFILE), PROFILE, True

    monkeypatch.setattr(split_map, "cached_profile", cached)


def test_split_map_never_reports_a_plan_slower_than_the_best_tier(example_profile: None, tmp_path: Path) -> None:
    assert split_map.main(["--models", "tiny-captioner", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "split_map.json").read_text())["rows"]
    assert len(rows) == len(split_map.CONSTRAINTS) * len(split_map.LATENCIES) * len(split_map.PHONE_EDGE_MBIT)
    for r in rows:
        assert r["optimal_ms"] <= r["best_tier_ms"] * (1 + 1e-9) and r["gain"] >= -1e-9, r
        assert r["status"] == "optimal"
    by = {(r["constraint"], r["latencies"], r["phone_edge_mbit"]): r for r in rows}
    for (constraint, _), mbit in itertools.product(split_map.CONSTRAINTS, split_map.PHONE_EDGE_MBIT):
        # lower link latencies can only help the optimum at the same bandwidth
        chain = [by[(constraint, label, mbit)]["optimal_ms"] for label, _, _ in split_map.LATENCIES]
        assert chain == sorted(chain, reverse=True), (mbit, chain)
    for r in rows:
        if r["constraint"] != "none":        # the raw input never leaves the phone: no single tier but the phone
            assert r["best_tier"] == "device-only" and r["optimal"].startswith("phone")
            free = by[("none", r["latencies"], r["phone_edge_mbit"])]
            assert r["optimal_ms"] >= free["optimal_ms"] * (1 - 1e-9)       # a constraint never helps
    md = (tmp_path / "split_map.md").read_text()
    assert "## tiny-captioner" in md and md.count("\n| ") == len(rows) + 1
    assert all(line.count(" | ") == 7 for line in md.splitlines() if line.startswith("| ") and "x" in line)


def test_split_map_applies_the_latencies_it_names() -> None:
    base = load_network(ROOT / "examples" / "three-tier.network.yaml")
    net = split_map.network_at(base, 5e6, 0.001, 0.002)
    pe = next(link for link in net.links if {link.a, link.b} == {"phone", "edge"})
    ec = next(link for link in net.links if {link.a, link.b} == {"edge", "cloud"})
    assert (pe.bandwidth_bps, pe.latency_s, ec.bandwidth_bps, ec.latency_s) == (5e6, 0.001, 1e8, 0.002)
    shipped = split_map.network_at(base, 5e6, None, None)
    assert [link.latency_s for link in shipped.links] == [link.latency_s for link in base.links]


def _row(strategy: str, pe_mbit: float, measured: float, **extra: object) -> dict[str, object]:
    return {"model": "tiny-captioner", "variant": "base latencies", "compression": "none",
            "edge_cloud": "100 Mbit/s", "edge_cloud_bps": 1e8, "phone_edge": f"{pe_mbit:g} Mbit/s",
            "phone_edge_bps": pe_mbit * 1e6, "trace": False, "dilation": 7.0, "strategy": strategy,
            "placement": "phone x10", "predicted_ms": measured * 0.95, "measured_median_ms": measured,
            "measured_p90_ms": measured * 1.1, "ratio": 1 / 0.95, "bytes_per_request": 2000.0,
            "scene_accuracy": 1.0, "same_as_unsplit": 1.0} | extra


def test_experiment_tables_and_plot(tmp_path: Path) -> None:
    rows = [_row(s, mbit, 10.0 * (i + 1) * (2 if mbit == 1 else 1))
            for i, s in enumerate(exp.STRATEGIES) for mbit in (1.0, 20.0)]
    rows.append(_row("optimal", 2.9, 33.0, trace=True, phone_edge="3G trace"))
    keep = ("model", "variant", "compression", "edge_cloud", "phone_edge", "strategy", "dilation")
    rows.append({k: v for k, v in _row("edge-only", 5.0, 0.0).items() if k in keep} | {"why_not": "no edge"})
    meta = {"command": "python -m bench.aiflow_experiment", "machine": "test", "date": "2026-12-01", "wall_s": 60.0}
    rows.append(_row("best-cut", 20.0, 30.0, placement="phone x1 | cloud x9"))
    md = exp.markdown(rows, meta)
    assert "phone x1 \\| cloud x9" in md          # pipes in a placement would split the table's cells
    assert "(K = 7.00)" in md and "no plan: no edge" in md and "| 3G trace | optimal |" in md
    assert md.count("| 1 Mbit/s |") == len(exp.STRATEGIES)
    exp.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "run.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    assert exp.main(["--from-json", str(tmp_path / "run.json")]) == 0       # re-render without measuring
    assert (tmp_path / "run.md").read_text() == md and (tmp_path / "run.png").is_file()
    (tmp_path / "bad.json").write_text("[]")
    assert exp.main(["--from-json", str(tmp_path / "bad.json")]) == 2
