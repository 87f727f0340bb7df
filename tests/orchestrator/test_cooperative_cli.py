"""`aiflow plan --draft-profile`, `plan explain` and `plan compare` for cooperative plans, on small
synthetic profiles (the planner's numbers are checked against brute force in test_cooperative_plan)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from orchestrator.cooperative import evaluate_cooperative
from orchestrator.network import save_network
from orchestrator.planner import PlanOptions, solve
from orchestrator.planner.cooperative import search_cooperative
from profiler.profile import save_profile
from tests.helpers import aiflow_in_process
from tests.orchestrator.test_cooperative_plan import _network, _profile


def _files(tmp_path: Path, acceptance: float) -> tuple[Path, Path, Path]:
    rng = random.Random(9)
    target = _profile("T", 2, 2, rng, 20.0, 16)
    rounds = 16 / (1 + sum(acceptance ** i for i in range(1, 5)))
    spec = {"target": "T", "samples": 4, "new_tokens": 16,
            "k": {"4": {"acceptance": acceptance, "rounds": rounds, "draft_passes": 4 * rounds, "tokens": 16.0},
                  "2": {"acceptance": acceptance, "rounds": rounds * 1.5, "draft_passes": 3 * rounds,
                        "tokens": 16.0, "verify_ratio": 1.1}}}
    draft = _profile("D", 1, 1, rng, 0.2, 16, spec)
    net = _network(rng)
    paths = tmp_path / "t.json", tmp_path / "d.json", tmp_path / "n.json"
    save_profile(target, paths[0])
    save_profile(draft, paths[1])
    save_network(net, paths[2])
    return paths


@pytest.fixture(autouse=True)
def _db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFLOW_DATABASE_URL", f"sqlite:///{tmp_path / 'history.db'}")


def test_plan_answers_cooperative_and_explain_shows_its_terms(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    t, d, n = _files(tmp_path, 0.95)
    out = tmp_path / "plan.json"
    code, stdout, err = aiflow_in_process(capsys, monkeypatch, "plan", "--profile", t, "--draft-profile", d,
                                          "--network", n, "--out", out, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["mode"] == "cooperative" and doc["k"] in (2, 4)
    assert set(doc["draft_assignment"]) == {"dev"} and len(doc["assignment"]) == 4
    from orchestrator.network import load_network
    from profiler.profile import load_profile

    target, draft, net = load_profile(t), load_profile(d), load_network(n)
    best = search_cooperative(target, draft, net).best
    assert doc["predicted_latency_s"] == best.evaluation.latency_s
    assert doc["predicted_latency_s"] < solve(target, net, PlanOptions()).predicted_latency_s

    code, stdout, err = aiflow_in_process(capsys, monkeypatch, "plan", "explain", out, "--profile", t,
                                          "--draft-profile", d, "--network", n, "--json")
    assert code == 0, err
    ex = json.loads(stdout)
    ev = evaluate_cooperative(target, draft, net, doc["assignment"], doc["draft_assignment"], doc["k"])
    assert ex["latency_s"] == ev.latency_s
    assert sum(term["seconds"] for term in ex["terms"]) == pytest.approx(ex["latency_s"], rel=1e-12)
    assert {"draft-pass", "uplink", "verify", "downlink"} <= {term["kind"] for term in ex["terms"]}

    code, stdout, err = aiflow_in_process(capsys, monkeypatch, "plan", "explain", out, "--profile", t,
                                          "--draft-profile", d, "--network", n)
    assert code == 0 and "L_coop" in stdout and "verify" in stdout
    code, _, err = aiflow_in_process(capsys, monkeypatch, "plan", "explain", out, "--profile", t, "--network", n)
    assert code == 2 and "--draft-profile" in err


def test_plan_answers_split_when_the_draft_is_poor(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    t, d, n = _files(tmp_path, 0.0)
    code, stdout, err = aiflow_in_process(capsys, monkeypatch, "plan", "--profile", t, "--draft-profile", d,
                                          "--network", n, "--json", "--no-store")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["mode"] == "split" and "k" not in doc and "draft_assignment" not in doc


def test_compare_lists_every_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    t, d, n = _files(tmp_path, 0.9)
    code, stdout, err = aiflow_in_process(capsys, monkeypatch, "plan", "compare", "--profile", t, "--draft-profile",
                                          d, "--network", n, "--json")
    assert code == 0, err
    rows = {r["strategy"]: r for r in json.loads(stdout)}
    assert {"draft-only (dev)", "target-only (dev)", "target-only (edge)", "target-only (cloud)", "best split",
            "cooperative k=2", "cooperative k=4"} <= set(rows)
    coop = next(r for s, r in rows.items() if s.startswith("best cooperative"))
    assert coop["latency_s"] == min(rows["cooperative k=2"]["latency_s"], rows["cooperative k=4"]["latency_s"])
    assert rows["best split"]["latency_s"] <= min(rows[f"target-only ({x})"]["latency_s"]
                                                  for x in ("dev", "edge", "cloud"))
    assert min(r["ratio"] for r in rows.values() if r["ratio"] is not None) == 1.0
    code, stdout, _ = aiflow_in_process(capsys, monkeypatch, "plan", "compare", "--profile", t, "--draft-profile",
                                        d, "--network", n)
    assert code == 0 and "best cooperative" in stdout


def test_bad_draft_profiles_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    t, d, n = _files(tmp_path, 0.9)
    code, _, err = aiflow_in_process(capsys, monkeypatch, "plan", "--profile", t, "--draft-profile", t,
                                     "--network", n, "--json")
    assert code == 2 and "no `speculative` section" in err and "Traceback" not in err
    code, _, err = aiflow_in_process(capsys, monkeypatch, "plan", "--profile", d, "--draft-profile", d,
                                     "--network", n, "--json")
    assert code == 2 and "measured against T" in err
    code, _, err = aiflow_in_process(capsys, monkeypatch, "plan", "--profile", t, "--draft-profile", d,
                                     "--network", n, "--objective", "throughput")
    assert code == 2 and "latency objective" in err


def test_shipped_family_profiles_choose_by_network(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The family's shipped profiles: split on the three-tier network (the phone holds the target),
    cooperative where the phone holds only the draft and the links are short (examples/family)."""
    root = Path(__file__).resolve().parents[2] / "examples"
    t, d = root / "captioner-target.profile.json", root / "captioner-draft.profile.json"
    answers = {}
    for net in ("three-tier.network.yaml", "family.network.yaml"):
        code, stdout, err = aiflow_in_process(capsys, monkeypatch, "plan", "--profile", t, "--draft-profile", d,
                                              "--network", root / net, "--json", "--no-store")
        assert code == 0, err
        answers[net] = json.loads(stdout)
    assert answers["three-tier.network.yaml"]["mode"] == "split"
    coop = answers["family.network.yaml"]
    assert coop["mode"] == "cooperative" and coop["draft_model"] == "captioner-draft"
    assert set(coop["draft_assignment"]) == {"phone"} and coop["assignment"][-1] != "phone"
