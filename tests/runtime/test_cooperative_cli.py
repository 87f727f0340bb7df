"""The cooperative loop end to end with the CLI: profile two captioners, measure the draft against
the target, then `aiflow run --draft` and `aiflow caption --draft` through a verifier process; the
captions equal the target's own greedy captions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from orchestrator.network import NetworkState, save_network
from orchestrator.plan import Plan, save_plan
from profiler.captioner.inference import caption_files
from profiler.captioner.model import build_model
from profiler.captioner.scenes import render, sample_scene
from profiler.captioner.tokenizer import build_tokenizer
from profiler.profile import load_profile
from tests.helpers import aiflow_in_process, spread_weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coop")
    tok = build_tokenizer()
    torch.manual_seed(0)
    target = build_model(tok, width=32, layers=2, heads=2, decoder_width=48, decoder_layers=2)
    spread_weights(target, 1)
    draft = build_model(tok, width=32, layers=2, heads=2, decoder_width=16, decoder_layers=1)
    spread_weights(draft, 2)
    draft.encoder.load_state_dict(target.encoder.state_dict())
    out = {}
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    rng = random.Random(3)
    for i in range(2):
        render(sample_scene(rng), rng).save(root / f"img{i}.png")
    net = NetworkState.model_validate({
        "source": "dev", "nodes": [{"name": "dev", "hardware": "local-cpu", "mem_bytes": 4e9, "slowdown": 2.0},
                                   {"name": "edge", "hardware": "local-cpu", "mem_bytes": 4e9}],
        "links": [{"a": "dev", "b": "edge", "bandwidth_bps": 5e7, "latency_s": 0.002}]})
    save_network(net, root / "net.json")
    out["net"] = root / "net.json"
    out["images"] = [root / "img0.png", root / "img1.png"]  # type: ignore[assignment]
    return out


def test_profile_measure_run_and_caption(files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFLOW_DATABASE_URL", f"sqlite:///{tmp_path / 'h.db'}")
    t_prof, d_prof, d_spec = tmp_path / "t.json", tmp_path / "d.json", tmp_path / "d-spec.json"
    for folder, out in ((files["target"], t_prof), (files["draft"], d_prof)):
        code, _, err = aiflow_in_process(capsys, monkeypatch, "profile", str(folder), "--hardware", "local-cpu",
                                         "--repeats", "1", "--warmup", "0", "--no-overheads", "--no-store",
                                         "--input", "new=12", "--out", out)
        assert code == 0, err
    code, stdout, err = aiflow_in_process(capsys, monkeypatch, "profile", "speculative", d_prof, "--draft",
                                          str(files["draft"]), "--target", str(files["target"]), "--ks", "1,3",
                                          "--samples", "3", "--max-new-tokens", "12", "--out", d_spec)
    assert code == 0, err
    spec = load_profile(d_spec).speculative
    assert spec is not None and set(spec.k) == {"1", "3"} and spec.target == "target"
    assert all(0.0 <= s.acceptance <= 1.0 and s.rounds >= 1 for s in spec.k.values())

    t, d = load_profile(t_prof), load_profile(d_spec)
    plan = Plan(model=t.model, assignment=["dev"] * 2 + ["edge"] * (len(t.units) - 2), predicted_latency_s=0.0,
                status="heuristic", solver="hand", mode="cooperative", draft_model=d.model,
                draft_assignment=["dev"] * len(d.units), k=3)
    save_plan(plan, tmp_path / "plan.json")
    images = [str(p) for p in files["images"]]
    want = caption_files(images, str(files["target"]))

    code, stdout, err = aiflow_in_process(capsys, monkeypatch, "run", *images, "--model", str(files["target"]),
                                          "--draft", str(files["draft"]), "--network", files["net"], "--plan",
                                          tmp_path / "plan.json", "--profile", t_prof, "--draft-profile", d_spec,
                                          "--local-hardware", "local-cpu", "--max-new-tokens", "32", "--json",
                                          "--no-record")
    assert code == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["output"] for r in rows] == want
    assert all(r["predicted_s"] > 0 and r["paced"] and r["rounds"] >= 1 for r in rows)

    code, stdout, err = aiflow_in_process(capsys, monkeypatch, "caption", *images, "--model", str(files["target"]),
                                          "--draft", str(files["draft"]), "--network", files["net"], "--plan",
                                          tmp_path / "plan.json", "--json")
    assert code == 0, err
    assert [r["caption"] for r in json.loads(stdout)] == want


def test_bad_cooperative_input_is_one_line(files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    n_units = 9
    split = Plan(model="target", assignment=["edge"] * n_units, predicted_latency_s=0.0, status="heuristic",
                 solver="hand")
    save_plan(split, tmp_path / "split.json")
    images = [str(p) for p in files["images"]]
    code, _, err = aiflow_in_process(capsys, monkeypatch, "caption", *images, "--model", str(files["target"]),
                                     "--draft", str(files["draft"]), "--network", files["net"], "--plan",
                                     tmp_path / "split.json")
    assert code == 2 and "not a cooperative plan" in err and "Traceback" not in err
    code, _, err = aiflow_in_process(capsys, monkeypatch, "caption", *images, "--draft", str(files["draft"]))
    assert code == 2 and "--network" in err
