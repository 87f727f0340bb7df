"""`aiflow caption --network --plan`: the captioner split over phone, edge and cloud workers captions
exactly as the unsplit model does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.network import load_network
from orchestrator.plan import save_plan
from orchestrator.planner.result import make_plan
from profiler.captioner.data import fixed_examples
from profiler.captioner.scenes import render
from profiler.profile import load_profile
from tests.helpers import aiflow_in_process

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "examples" / "tiny-captioner.profile.json"
NETWORK = ROOT / "examples" / "three-tier.network.yaml"
# phone: the vision encoder; edge: text.embed and blocks 0-1; cloud: block 2 and the head. The decode
# loop crosses edge -> cloud -> edge on every token, and the encoder output goes phone -> edge and cloud.
SPLIT3 = ["phone"] * 5 + ["edge"] * 3 + ["cloud"] * 2


def test_network_without_plan_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    render(fixed_examples("test", 1)[0].scene).save(image)
    for flags in (["--network", NETWORK], ["--plan", tmp_path / "plan.json"]):
        code, out, err = aiflow_in_process(capsys, monkeypatch, "caption", image, *flags, "--json")
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and "--network/--plan" in err and "Traceback" not in err


def test_a_plan_that_does_not_fit_names_the_plan_file(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    render(fixed_examples("test", 1)[0].scene).save(image)
    for assignment, says in ((["phone"] * 4, "4 units, but model tiny-captioner has 10"),
                             (["phone"] * 9 + ["moon"], "node 'moon' is not in")):
        plan = tmp_path / "misfit.plan.json"
        plan.write_text(json.dumps({"format": "aiflow.plan/v1", "model": "tiny-captioner", "assignment": assignment,
                                    "predicted_latency_s": 0.0, "status": "heuristic", "solver": "hand"}))
        for cmd in (("caption", image), ("run", image, "--model", "tiny-captioner")):
            code, out, err = aiflow_in_process(capsys, monkeypatch, *cmd, "--network", NETWORK, "--plan", plan)
            assert code == 2 and out == "", err
            assert len(err.strip().splitlines()) == 1 and str(plan) in err and says in err, err


@pytest.mark.slow
def test_caption_through_three_workers_matches_unsplit(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    images = []
    for i, example in enumerate(fixed_examples("test", 2)):
        images.append(tmp_path / f"test-{i}.png")
        render(example.scene).save(images[-1])
    plan = make_plan(load_profile(PROFILE), load_network(NETWORK), SPLIT3, status="heuristic", solver="hand")
    save_plan(plan, tmp_path / "plan.json")

    code, out, err = aiflow_in_process(capsys, monkeypatch, "caption", *images, "--json")
    assert code == 0, err
    unsplit = json.loads(out)
    code, out, err = aiflow_in_process(capsys, monkeypatch, "caption", *images, "--network", NETWORK, "--plan",
                            tmp_path / "plan.json", "--json")
    assert code == 0, err
    split = json.loads(out)
    assert [r["image"] for r in split] == [str(p) for p in images]
    assert split == unsplit
    assert all(r["caption"] and r["scene"] for r in split)     # real captions that parse back to scenes
