"""Plans with token reduction (orchestrator.reductions): optimal over placements x options against a
brute-force oracle, the quality cap respected, `--no-reduction`, and the CLI's one-line errors."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest

from orchestrator.costmodel import evaluate
from orchestrator.network import NetworkState, parse_network
from orchestrator.reductions import profile_for_plan, reduced_profile, solve_with_reductions
from profiler.profile import Profile, parse_profile
from profiler.reduction_profile import reductions_of
from tests.helpers import aiflow_in_process

OPTIONS = [  # method, keep, bytes, quality loss (points), reduce_s on cpu / gpu
    ("dpc", 24, 12384.0, 0.4, 0.002, 0.0001),
    ("dpc", 8, 4128.0, 6.0, 0.001, 0.0001),
    ("tome", 32, 16512.0, 0.0, 0.004, 0.0002),
]


def captioner(seed: int = 0, edge_bytes: float = 33280.0) -> Profile:
    """Encoder units 0-1 (the edge from 1), decoder 2-4 reading it (2, 3), a decode loop of 3."""
    rng = random.Random(seed)
    units = []
    for i in range(5):
        ph = ("encode",) if i < 2 else ("prefill", "decode")
        lat = {hw: {p: f * rng.uniform(0.002, 0.02) for p in ph} for hw, f in (("cpu", 1.0), ("gpu", 0.1))}
        units.append({"name": f"u{i}", "param_bytes": 10, "mem_bytes": 10,
                      "out_bytes": {p: edge_bytes if p == "encode" else 2000.0 for p in ph}, "latency_s": lat})
    reductions = {"edge": 1, "tokens": 65, "dim": 128, "bytes": edge_bytes, "model": "test", "scenes": 10,
                  "base_accuracy": 98.0,
                  "options": [{"method": m, "keep": k, "bytes": b, "quality_loss": q,
                               "reduce_s": {"cpu": rc, "gpu": rg}} for m, k, b, q, rc, rg in OPTIONS]}
    return parse_profile({"format": "aiflow.profile/v1", "model": "cap", "units": units,
                          "phases": [{"name": "encode", "first": 0, "last": 1, "repeat": 1, "input": "source",
                                      "in_bytes": 12288},
                                     {"name": "prefill", "first": 2, "last": 4, "repeat": 1, "input": "none"},
                                     {"name": "decode", "first": 2, "last": 4, "repeat": 3, "input": "loop",
                                      "in_bytes": 8}],
                          "edges": [{"from": 1, "to": [2, 3], "bytes": edge_bytes}], "result_bytes": 8,
                          "reductions": reductions})


def network(bw: float, raw_stays: bool = True) -> NetworkState:
    return parse_network({
        "format": "aiflow.network/v1", "source": "phone",
        "nodes": [{"name": "phone", "hardware": "cpu", "mem_bytes": 1e9, "slowdown": 4.0},
                  {"name": "cloud", "hardware": "gpu", "mem_bytes": 1e9}],
        "links": [{"a": "phone", "b": "cloud", "bandwidth_bps": bw, "latency_s": 0.005}],
        "constraints": {"raw_input_stays_on_source": raw_stays}})


def oracle(prof: Profile, net: NetworkState, cap: float) -> float:
    sec = reductions_of(prof)
    assert sec is not None
    best = math.inf
    for opt in [None, *[o for o in sec.options if o.quality_loss <= cap]]:
        p = reduced_profile(prof, sec, opt)
        for assign in itertools.product(net.node_names, repeat=len(p.units)):
            ev = evaluate(p, net, assign)
            if ev.feasible:
                best = min(best, ev.latency_s)
    return best


@pytest.mark.parametrize("seed,bw,cap", [(0, 1e6, 1.0), (1, 3e5, 1.0), (2, 3e5, 10.0), (3, 1e8, 1.0),
                                         (4, 2e5, 0.0)])
def test_optimal_over_placements_and_options(seed: int, bw: float, cap: float) -> None:
    prof, net = captioner(seed), network(bw)
    plan, cands = solve_with_reductions(prof, net, max_quality_loss=cap)
    assert plan.predicted_latency_s == pytest.approx(oracle(prof, net, cap), rel=1e-9)
    # the plan's L is the cost model's on the profile with its reduction
    assert evaluate(profile_for_plan(prof, plan), net, plan.assignment).latency_s == pytest.approx(
        plan.predicted_latency_s, rel=1e-12)
    assert plan.reductions is not None
    for r in plan.reductions:
        assert r["quality_loss"] <= cap                                    # the cap holds
    excluded = {c.label for c in cands if c.excluded}
    assert excluded == {f"{m}-{k}" for m, k, _, q, _, _ in OPTIONS if q > cap}


def test_thin_link_reduces_and_fat_link_does_not() -> None:
    prof = captioner(0)
    thin, _ = solve_with_reductions(prof, network(2e5), max_quality_loss=1.0)
    assert thin.assignment[1] == "phone" and thin.assignment[2] == "cloud"   # the edge crosses the link
    assert [(r["method"], r["keep"]) for r in thin.reductions] == [("dpc", 24)]   # fewest bytes within 1 point
    wide, _ = solve_with_reductions(prof, network(2e5), max_quality_loss=10.0)
    assert [(r["method"], r["keep"]) for r in wide.reductions] == [("dpc", 8)]
    assert wide.predicted_latency_s < thin.predicted_latency_s
    local, _ = solve_with_reductions(prof, network(1e3, raw_stays=True), max_quality_loss=10.0)
    assert set(local.assignment) == {"phone"} and local.reductions == []  # nothing crosses: reducing only costs


def test_no_reduction_and_profiles_without_the_section() -> None:
    prof = captioner(1)
    plan, _ = solve_with_reductions(prof, network(2e5), reduce=False)
    assert plan.reductions == []
    bare = prof.model_copy(update={"reductions": None})
    assert reductions_of(parse_profile(json.loads(bare.model_dump_json(by_alias=True, exclude_none=True)))) is None
    with pytest.raises(ValueError, match="max-quality-loss"):
        solve_with_reductions(prof, network(2e5), max_quality_loss=-1)


def test_reduced_profile_changes_bytes_and_the_source_unit_only() -> None:
    prof = captioner(2)
    sec = reductions_of(prof)
    assert sec is not None
    opt = sec.options[0]
    red = reduced_profile(prof, sec, opt)
    assert red.edges[0].bytes == opt.bytes
    assert red.units[1].latency_s["cpu"]["encode"] == pytest.approx(prof.units[1].latency_s["cpu"]["encode"] + 0.002)
    assert [u.latency_s for u in red.units[2:]] == [u.latency_s for u in prof.units[2:]]


def test_cli_plan_with_reductions(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFLOW_DATABASE_URL", f"sqlite:///{tmp_path / 'h.db'}")
    pf, nf = tmp_path / "p.json", tmp_path / "n.json"
    pf.write_text(captioner(0).model_dump_json(by_alias=True, exclude_none=True))
    nf.write_text(network(2e5).model_dump_json(by_alias=True, exclude_none=True))
    code, out, err = aiflow_in_process(capsys, monkeypatch, "plan", "--profile", pf, "--network", nf, "--json",
                                       "--no-store", "--max-quality-loss", "0.5")
    assert code == 0, err
    plan = json.loads(out)
    assert [(r["method"], r["keep"]) for r in plan["reductions"]] == [("dpc", 24)]
    code, out, err = aiflow_in_process(capsys, monkeypatch, "plan", "--profile", pf, "--network", nf, "--json",
                                       "--no-store", "--no-reduction")
    assert code == 0 and json.loads(out)["reductions"] == []
    code, out, err = aiflow_in_process(capsys, monkeypatch, "plan", "--profile", pf, "--network", nf,
                                       "--no-store", "--max-quality-loss", "-2")
    assert code == 2 and err.count("\n") == 1 and "max-quality-loss" in err


def test_cli_profile_reductions_writes_the_section(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "r.json"
    code, stdout, err = aiflow_in_process(capsys, monkeypatch, "profile", "reductions",
                                          root / "examples" / "tiny-captioner.profile.json", "--methods", "dpc",
                                          "--keep", "24", "--scenes", "3", "--out", out)
    assert code == 0, err
    sec = reductions_of(parse_profile(json.loads(out.read_text())))
    assert sec is not None and (sec.edge, sec.tokens, sec.dim, sec.bytes) == (4, 65, 128, 33280)
    (opt,) = sec.options
    assert (opt.label, opt.bytes) == ("dpc-24", 24 * 129 * 4)
    assert opt.quality_loss == pytest.approx(sec.base_accuracy - opt.scene_accuracy)
    assert "measured" in opt.source.values() and set(opt.reduce_s) >= {"phone-a78", "h200"}
    for args, needle in ((["--methods", "blur"], "--methods"), (["--keep", "1"], "--keep"),
                         (["--scenes", "0"], "--scenes")):
        code, _, err = aiflow_in_process(capsys, monkeypatch, "profile", "reductions",
                                         root / "examples" / "tiny-captioner.profile.json", *args, "--out", out)
        assert code == 2 and needle in err and err.count("\n") == 1


def test_cli_plan_compare_takes_the_reductions_plan_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`plan compare`'s optimum is `aiflow plan`'s (solve_with_reductions), not the unreduced solve."""
    monkeypatch.setenv("AIFLOW_DATABASE_URL", f"sqlite:///{tmp_path / 'h.db'}")
    pf, nf = tmp_path / "p.json", tmp_path / "n.json"
    prof, net = captioner(0), network(2e5)
    pf.write_text(prof.model_dump_json(by_alias=True, exclude_none=True))
    nf.write_text(net.model_dump_json(by_alias=True, exclude_none=True))
    code, out, err = aiflow_in_process(capsys, monkeypatch, "plan", "--profile", pf, "--network", nf, "--json",
                                       "--no-store")
    assert code == 0, err
    planned = json.loads(out)
    code, out, err = aiflow_in_process(capsys, monkeypatch, "plan", "compare", "--profile", pf, "--network", nf,
                                       "--json")
    assert code == 0, err
    rows = {r["strategy"]: r for r in json.loads(out)}
    best = rows["optimal"]
    assert best["reductions"] == ["dpc-24"] and best["assignment"] == planned["assignment"]
    assert best["latency_s"] == pytest.approx(planned["predicted_latency_s"], rel=1e-9)
    plain = solve_with_reductions(prof, net, reduce=False)[0].predicted_latency_s
    assert best["latency_s"] < plain
    # a baseline's ratio is against the reduced optimum
    some = next(r for r in rows.values() if r["strategy"] != "optimal" and r.get("latency_s"))
    assert some["ratio"] == pytest.approx(some["latency_s"] / best["latency_s"])
    code, out, err = aiflow_in_process(capsys, monkeypatch, "plan", "compare", "--profile", pf, "--network", nf,
                                       "--json", "--no-reduction")
    assert code == 0, err
    unreduced = next(r for r in json.loads(out) if r["strategy"] == "optimal")
    assert "reductions" not in unreduced and unreduced["latency_s"] == pytest.approx(plain, rel=1e-9)
