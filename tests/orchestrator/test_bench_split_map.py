"""bench.split_map and bench.map_measure's report, on a small synthetic profile (no measuring, no workers)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import map_measure, split_map
from orchestrator.costmodel import evaluate
from profiler.errors import InputError
from profiler.profile import Profile, parse_profile

CLASSES = {"pi-zero-2w": 20.0, "phone-sd695": 4.0, "phone-a78": 2.0, "jetson-orin-nano": 1.5, "h200": 0.5}


def synthetic_profile(unit_mem: int = 1_000_000) -> Profile:
    """Five units shaped like a captioner with its input as a file: decode (file -> pixels), encoder,
    three decoder units with a prefill and an 8-pass decode loop, the encoder output read by unit 3."""
    base = [("input.decode", {"encode": 0.002}), ("encoder", {"encode": 0.010}),
            ("dec.0", {"prefill": 0.002, "decode": 0.001}), ("dec.1", {"prefill": 0.002, "decode": 0.001}),
            ("dec.head", {"prefill": 0.002, "decode": 0.001})]
    out = [{"encode": 49152.0}, {"encode": 8000.0}, {"prefill": 2048.0, "decode": 256.0},
           {"prefill": 2048.0, "decode": 256.0}, {"prefill": 8.0, "decode": 8.0}]
    units = []
    for (name, lat), ob in zip(base, out, strict=True):
        # the h200 is fast on the encoder but no faster than the edge on small decoder passes (launch-bound)
        per = {hw: {ph: t * (f if hw != "h200" or name == "encoder" else 1.5) for ph, t in lat.items()}
               for hw, f in CLASSES.items()}
        mem = 0 if name == "input.decode" else unit_mem
        units.append({"name": name, "param_bytes": mem, "mem_bytes": mem, "out_bytes": ob, "latency_s": per})
    return parse_profile({
        "format": "aiflow.profile/v1", "model": "synthetic+png", "units": units,
        "phases": [{"name": "encode", "first": 0, "last": 1, "repeat": 1, "input": "source", "in_bytes": 400.0},
                   {"name": "prefill", "first": 2, "last": 4, "repeat": 1, "input": "none"},
                   {"name": "decode", "first": 2, "last": 4, "repeat": 8, "input": "loop", "in_bytes": 8.0}],
        "edges": [{"from": 1, "to": [3], "bytes": 8000.0}], "result_bytes": 64.0})


@pytest.fixture()
def synthetic(monkeypatch: pytest.MonkeyPatch) -> Profile:
    profile = synthetic_profile()
    monkeypatch.setattr(split_map, "workload_profile", lambda work: profile)
    return profile


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole map over the synthetic profile, made once for the module (the planner runs 240 times)."""
    out = tmp_path_factory.mktemp("split_map")
    profile = synthetic_profile()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(split_map, "workload_profile", lambda work: profile)
        assert split_map.main(["--workloads", "tiny-png", "--out", str(out)]) == 0
    return json.loads((out / "split_map.json").read_text()) | {"md": (out / "split_map.md").read_text()}


def test_best_plan_never_worse_than_any_single_tier(mapped: dict[str, Any]) -> None:
    rows = mapped["rows"]
    assert len(rows) == 2 * len(split_map.DEVICES) * len(split_map.ACCESS_LATENCY_S) * len(split_map.ACCESS_MBIT)
    for r in rows:
        assert r["status"] == "optimal"
        for key in ("device_only_ms", "edge_only_ms", "cloud_only_ms"):
            if r[key] is not None:
                assert r["best_ms"] <= r[key] * (1 + 1e-9), (key, r)
        assert r["true_split"] == (len(r["best_nodes"]) >= 2)
        assert r["true_split"] == (" | " in r["best_plan"])
    # the synthetic device is slow enough that the map has true splits and single-tier answers both
    assert {r["true_split"] for r in rows} == {True, False}


def test_raw_input_constraint_is_respected_and_never_helps(mapped: dict[str, Any]) -> None:
    by = {(r["device"], r["access_mbit"], r["access_latency_ms"], r["raw_input_on_device"]): r for r in mapped["rows"]}
    kept = [r for r in mapped["rows"] if r["raw_input_on_device"]]
    assert kept
    for r in kept:
        assert r["edge_only_ms"] is None and r["cloud_only_ms"] is None       # the file may not leave
        assert r["best_nodes"][0] == "device" and r["best_plan"].startswith("device")
        free = by[(r["device"], r["access_mbit"], r["access_latency_ms"], False)]
        assert r["best_ms"] >= free["best_ms"] * (1 - 1e-9)
        assert r["best_tier"] == "device-only"


def test_brute_force_oracle_on_small_cells(synthetic: Profile) -> None:
    work = split_map.WORKLOADS[0]
    for device, mbit, lat, raw in [("pi-zero-2w", 5.62, 0.020, False), ("pi-zero-2w", 31.6, 0.002, True),
                                   ("phone-a78", 1.0, 0.002, True), ("phone-sd695", 1000.0, 0.020, False)]:
        row = split_map.map_cell(synthetic, work, device, mbit, lat, raw)
        net = split_map.cell_network(device, mbit, lat, raw)
        best = math.inf
        for assign in itertools.product(net.node_names, repeat=len(synthetic.units)):
            ev = evaluate(synthetic, net, assign)
            if ev.feasible:
                best = min(best, ev.latency_s)
        assert row["best_ms"] == pytest.approx(1e3 * best, rel=1e-9), (device, mbit, lat, raw)


def test_an_input_larger_than_the_decoded_pixels_makes_an_unconstrained_split_win() -> None:
    """The camera case: the file (1.1 MB) is larger than what the decode unit hands on (150 KB of uint8
    pixels), so on a thin uplink the optimum decodes on the device and ships the pixels; it beats every
    single tier by >= 20%, and brute force over every placement agrees it is the optimum."""
    camera = synthetic_profile().model_dump(by_alias=True)
    camera["phases"][0]["in_bytes"] = 1_116_030.0
    camera["units"][0]["out_bytes"] = {"encode": 150_528.0}
    profile = parse_profile(camera)
    row = split_map.map_cell(profile, split_map.WORKLOADS[0], "pi-zero-2w", 31.6, 0.020, False)
    assert row["true_split"] and row["best_plan"].startswith("device x1 | ")
    assert row["speedup_vs_best_tier"] >= split_map.SPLIT_GOAL and split_map.split_wins([row]) == [row]
    net = split_map.cell_network("pi-zero-2w", 31.6, 0.020, False)
    best = min(ev.latency_s for assign in itertools.product(net.node_names, repeat=len(profile.units))
               if (ev := evaluate(profile, net, assign)).feasible)
    assert row["best_ms"] == pytest.approx(1e3 * best, rel=1e-9)
    # the same profile with the file smaller than the pixels (the 224 px JPEG): no split wins
    small = parse_profile(camera | {"phases": [dict(camera["phases"][0], in_bytes=4_200.0), *camera["phases"][1:]]})
    assert split_map.split_wins([split_map.map_cell(small, split_map.WORKLOADS[0], "pi-zero-2w", 31.6, 0.020,
                                                    False)]) == []


def test_memory_rules_out_device_only_on_the_small_device(monkeypatch: pytest.MonkeyPatch) -> None:
    big = synthetic_profile(unit_mem=200_000_000)          # 800 MB of units: more than a Pi Zero's 512 MB
    row = split_map.map_cell(big, split_map.WORKLOADS[0], "pi-zero-2w", 31.6, 0.002, True)
    assert row["device_only_ms"] is None and row["speedup_vs_device"] is None and row["why_no_device_only"]
    assert row["true_split"] and row["best_nodes"][0] == "device"            # the decode stays, the rest leaves
    assert "| n/a |" in split_map.table_row(row)


def test_report_format_and_summary(mapped: dict[str, Any]) -> None:
    md, rows, s = mapped["md"], mapped["rows"], mapped["meta"]["summary"]
    assert "PREDICTED" in md and "## tiny-png" in md and split_map.HEADER in md
    table = [line for line in md.splitlines() if line.startswith("| ") and line != split_map.HEADER]
    assert len(table) == len(rows)
    assert all(line.replace("\\|", "").count(" | ") == 11 for line in table)    # 12 cells, pipes escaped
    assert s["cells"] == len(rows) and s["unconstrained_cells"] == len(rows) // 2
    assert s["split_wins_20pct"] == len(split_map.split_wins(rows))
    assert s["unconstrained_true_splits"] == sum(r["true_split"] for r in rows if not r["raw_input_on_device"])
    for r in split_map.split_wins(rows):
        assert r["speedup_vs_best_tier"] >= split_map.SPLIT_GOAL and not r["raw_input_on_device"]
    assert f"**{s['split_wins_20pct']}**" in md
    assert "compute-only split bound" in md and "- input 400 B; activations of the first phase 8000-49152 B" in md


def test_compute_bound(synthetic: Profile) -> None:
    # pi-zero: the h200 is fastest on the encoder, the edge on the launch-bound decoder passes
    b = split_map.compute_bound(synthetic, "pi-zero-2w")
    dec = 3 * (0.002 + 8 * 0.001)
    assert b["per_unit_best_compute_ms"] == pytest.approx(1e3 * (0.002 * 1.5 + 0.010 * 0.5 + dec * 1.5))
    edge, cloud = 0.012 * 1.5 + dec * 1.5, 0.002 * 1.5 + 0.005 + dec * 1.5
    assert b["best_tier_compute_ms"] == pytest.approx(1e3 * min(edge, cloud))
    assert b["bound"] >= 1.0


def test_cell_network_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = split_map.cell_network("phone-sd695", 5.62, 0.020, raw_on_device=True)
    de = next(link for link in net.links if {link.a, link.b} == {"device", "edge"})
    ec = next(link for link in net.links if {link.a, link.b} == {"edge", "cloud"})
    assert (de.bandwidth_bps, de.latency_s) == (5.62e6, 0.020)
    assert (ec.bandwidth_bps, ec.latency_s) == (split_map.EDGE_CLOUD_MBIT * 1e6, split_map.EDGE_CLOUD_LATENCY_S)
    assert len(net.links) == 2 and net.constraints.raw_input_stays_on_source
    assert net.node("device").hardware == "phone-sd695" and net.node("device").mem_bytes == 6.0e9
    with pytest.raises(InputError, match="not a described device"):
        split_map.cell_network("h200", 10.0, 0.002)
    with pytest.raises(InputError, match="bandwidth"):
        split_map.cell_network("pi-zero-2w", 0.0, 0.002)
    assert split_map.main(["--devices", "nokia-3310", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("split_map: error: --devices: unknown nokia-3310") and "\n" not in err
    assert split_map.ACCESS_MBIT[0] == 1.0 and split_map.ACCESS_MBIT[-1] == 1000.0


def test_map_measure_report_says_emulated(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cell = map_measure.CELLS[0]
    rows = [{"cell": cell.key, "strategy": "optimal", "placement": "device x2 | cloud x9", "dilation": 10.0,
             "requests": 3, "measured_median_ms": 80.0, "predicted_median_ms": 76.0, "ratio": 80 / 76,
             "outputs": ["a"], "speedup_vs_device_measured": 3.2, "speedup_vs_device_predicted": 3.4,
             "same_outputs_as": "unsplit", "same_outputs": True},
            {"cell": cell.key, "strategy": "cloud-only", "why_not": "raw input | stays"}]
    from dataclasses import asdict
    md = map_measure.markdown([{"cell": asdict(cell), "model": "m", "dilation": 10.0, "rows": rows}],
                              {"command": "x", "machine": "y", "date": "d", "wall_s": 1.0})
    assert "EMULATED" in md and "device x2 \\| cloud x9" in md and "no plan: raw input \\| stays" in md
    assert "| 1.053 | 3.20 | 3.40 | yes |" in md
    assert map_measure.main(["--cells", "nowhere", "--out", str(tmp_path)]) == 2
    assert map_measure.main(["--requests", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("map_measure: error: ") for e in err)
    assert {c.workload for c in map_measure.CELLS} <= {w.key for w in split_map.WORKLOADS}
