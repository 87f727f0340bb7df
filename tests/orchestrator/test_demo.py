"""`aiflow demo` and its pieces: test images, the profile cache key, run statistics, the command itself."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.demo import (
    RequestRecord,
    StrategyRun,
    profile_cache_path,
    weights_digest,
    write_test_images,
)
from orchestrator.plan import Plan
from orchestrator.strategies import STRATEGIES, Strategy
from profiler.captioner.data import split_of
from profiler.captioner.parse import parse
from tests.helpers import aiflow_in_process

ROOT = Path(__file__).resolve().parents[2]


# ---- test images -------------------------------------------------------------------------------


def test_write_test_images_are_held_out_pngs_and_seeded(tmp_path: Path) -> None:
    imgs = write_test_images(tmp_path / "a", 3, seed=11)
    assert [i.path.name for i in imgs] == ["test-00.png", "test-01.png", "test-02.png"]
    for img in imgs:
        assert img.path.is_file() and img.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        scene = parse(img.reference)                       # the reference caption describes the truth
        assert scene.key() == img.truth and split_of(scene) == "test"
    again = write_test_images(tmp_path / "b", 3, seed=11)
    assert [i.truth for i in again] == [i.truth for i in imgs]
    assert [i.reference for i in again] == [i.reference for i in imgs]
    assert [i.path.read_bytes() for i in again] == [i.path.read_bytes() for i in imgs]
    other = write_test_images(tmp_path / "c", 3, seed=12)
    assert [i.truth for i in other] != [i.truth for i in imgs]


# ---- run statistics ----------------------------------------------------------------------------


def _plan(predicted: float) -> Plan:
    return Plan(model="m", assignment=["phone"], predicted_latency_s=predicted, status="heuristic", solver="hand")


def _record(image: str, caption: str, measured: float, predicted: float | None,
            nbytes: dict[str, int]) -> RequestRecord:
    return RequestRecord(image, caption, measured, predicted, passes=16,
                         breakdown={"compute_s": {}, "transfer_s": {}, "transfer_bytes": nbytes})


def test_strategy_run_statistics() -> None:
    reqs = [_record("a.png", "a red circle", 0.3, 0.25, {"phone->edge": 100}),
            _record("b.png", "a blue square", 0.1, 0.20, {"phone->edge": 100, "edge->cloud": 50}),
            _record("a.png", "a red circle", 0.5, None, {}),
            _record("b.png", "a green square", 0.2, 0.30, {"edge->cloud": 7}),
            _record("a.png", "a red circle", 0.4, 0.22, {})]
    run = StrategyRun(Strategy("optimal", _plan(9.0)), reqs)
    assert run.measured_s == [0.3, 0.1, 0.5, 0.2, 0.4]
    assert run.median_s == pytest.approx(0.3)
    assert run.p90_s() == pytest.approx(0.46)                  # inclusive: 0.4 + 0.6 * (0.5 - 0.4)
    assert run.predicted_median_s == pytest.approx(0.235)      # the None is skipped, not the plan's 9 s
    assert run.total_bytes() == 257
    assert run.captions_by_image() == {"a.png": "a red circle", "b.png": "a green square"}
    assert run.differs_from({"a.png": "a red circle", "b.png": "a blue square"}) == 1
    assert run.differs_from({"a.png": "a red square", "b.png": "a green square"}) == 4


def test_strategy_run_statistics_with_few_requests() -> None:
    one = StrategyRun(Strategy("device-only", _plan(0.7)), [_record("a.png", "x", 0.2, None, {"p->e": 3})])
    assert one.median_s == one.p90_s() == 0.2
    assert one.predicted_median_s == 0.7                       # no per-request prediction: the plan's
    empty = StrategyRun(Strategy("cloud-only", None, "the network has no cloud node"))
    assert math.isnan(empty.median_s) and math.isnan(empty.p90_s()) and math.isnan(empty.predicted_median_s)
    assert empty.total_bytes() == 0 and empty.differs_from({}) == 0


# ---- the profile cache key ---------------------------------------------------------------------


def test_profile_cache_path_depends_on_every_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFLOW_CACHE_DIR", str(tmp_path))
    base = profile_cache_path("tiny-captioner", "cpu-epyc-1t", "abc123", ["h200", "phone-a78"])
    assert base.parent == tmp_path / "profiles" and base.name.endswith(".profile.json")
    assert base == profile_cache_path("tiny-captioner", "cpu-epyc-1t", "abc123", ["h200", "phone-a78"])
    others = {profile_cache_path("tiny-captioner", "cpu-epyc-1t", "abc124", ["h200", "phone-a78"]),
              profile_cache_path("tiny-captioner", "cpu-epyc-1t", "abc123", ["h200"]),
              profile_cache_path("tiny-captioner", "cpu-epyc-1t", "abc123", ["h200", "jetson-orin-nano"]),
              profile_cache_path("tiny-captioner", "cpu-xeon-1t", "abc123", ["h200", "phone-a78"]),
              profile_cache_path("tiny-gpt2", "cpu-epyc-1t", "abc123", ["h200", "phone-a78"])}
    assert base not in others and len(others) == 5
    # an edited device description (here the h200's host speed) gives fresh estimates
    import profiler.hardware as hardware
    real = hardware.load_device
    monkeypatch.setattr(hardware, "load_device", lambda name: real(name).model_copy(update={"host_factor": 9.0})
                        if name == "h200" else real(name))
    assert profile_cache_path("tiny-captioner", "cpu-epyc-1t", "abc123", ["h200", "phone-a78"]) != base


def test_weights_digest_follows_the_parameters() -> None:
    from profiler.models import load_adapter

    adapter = load_adapter("tiny-gpt2")
    digest = weights_digest(adapter)
    assert len(digest) == 12 and digest == weights_digest(load_adapter("tiny-gpt2"))   # seeded init
    param = next(iter(adapter.model.parameters()))
    with torch.no_grad():
        param.view(-1)[0] += 1e-3
    assert weights_digest(adapter) != digest


# ---- the command -------------------------------------------------------------------------------


def _aiflow(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import sys; from orchestrator.cli import main; sys.argv[0] = 'aiflow'; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_demo_rejects_zero_images(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for flag in ("--images", "--repeats"):
        code, out, err = aiflow_in_process(capsys, monkeypatch, "demo", flag, "0")
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and "--images" in err and "Traceback" not in err


@pytest.mark.slow
def test_demo_runs_every_strategy_and_records_history(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "history.db"
    env = {**os.environ, "AIFLOW_CACHE_DIR": str(tmp_path / "cache"), "AIFLOW_DATABASE_URL": f"sqlite:///{db}",
           "COLUMNS": "200"}
    done = _aiflow("demo", "--images", "1", "--repeats", "1", "--out", tmp_path / "out", env=env)
    assert done.returncode == 0, done.stderr
    for name in STRATEGIES:
        assert name in done.stdout
    assert "Traceback" not in done.stderr
    (cached,) = (tmp_path / "cache" / "profiles").glob("tiny-captioner-*.profile.json")   # the cached profile
    # The cloud's latencies are the ones measured on an H200 (shipped data), not a roofline estimate.
    assert json.loads(cached.read_text())["units"][0]["source"]["h200"] == "measured"
    assert "why: " in done.stdout

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (image,) = results["images"]
    assert (tmp_path / "out" / "images" / image["file"]).is_file()
    assert [s["name"] for s in results["strategies"]] == list(STRATEGIES)
    for s in results["strategies"]:
        assert s["assignment"] is not None, s["why_not"]
        assert s["captions"] == {image["file"]: image["unsplit"]}, s["name"]
        assert s["requests_differing_from_unsplit"] == 0
        if s["name"] == "optimal":   # on the default low-end network the optimum moves work off the device
            assert set(s["assignment"]) != {"device"}
        assert len(s["measured_s"]) == 1 and s["measured_s"][0] > 0 and s["predicted_s"][0] > 0
    assert parse(image["unsplit"])          # the unsplit caption is a real caption

    monkeypatch.setenv("AIFLOW_DATABASE_URL", env["AIFLOW_DATABASE_URL"])
    code, out, err = aiflow_in_process(capsys, monkeypatch, "history", "runs", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert sorted(r["strategy"] for r in rows) == sorted(STRATEGIES)
    assert all(r["model"] == "tiny-captioner" and r["output"] == image["unsplit"] for r in rows)
    code, out, err = aiflow_in_process(capsys, monkeypatch, "history", "runs")
    assert code == 0 and "optimal" in out, err
