"""The daemon's re-solve over modes and token reductions, without workers: `best_plan` (the candidate
`aiflow plan` and the daemon both take) against brute force over every cooperative placement and k;
`decide` weighing a cooperative plan in force against a split candidate (and k against k) on a changed
snapshot; a reduced plan weighed with its reduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.candidate import best_plan, plan_latency, same_plan
from orchestrator.cooperative import evaluate_cooperative, measured_ks
from orchestrator.costmodel import evaluate
from orchestrator.daemon.decide import decide
from orchestrator.daemon.settings import DaemonSettings
from orchestrator.network import NetworkState, load_network
from orchestrator.planner import solve
from orchestrator.reductions import profile_for_plan, solve_with_reductions
from profiler.profile import Profile, load_profile
from tests.helpers import aiflow_in_process
from tests.orchestrator.test_reductions import captioner, network

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "examples" / "captioner-target.profile.json"
DRAFT = ROOT / "examples" / "captioner-draft.profile.json"
FAMILY = ROOT / "examples" / "family.network.yaml"


def with_link(net: NetworkState, a: str, b: str, bw: float, lat: float) -> NetworkState:
    doc = net.model_dump(exclude_none=True)
    for lk in doc["links"]:
        if {lk["a"], lk["b"]} == {a, b}:
            lk["bandwidth_bps"], lk["latency_s"] = bw, lat
    return NetworkState.model_validate(doc)


def brute_cooperative(target: Profile, draft: Profile, net: NetworkState,
                      skip: tuple[str, ...] = ()) -> tuple[float, int]:
    """The least L_coop over every verifier (but those of `skip`), every placement of the target's
    encoder and every k."""
    n_enc = next(p.first for p in target.active_phases if p.input == "loop")
    best = (math.inf, 0)
    for v in net.node_names:
        if v == net.source or v in skip:
            continue
        for cut in range(n_enc + 1):                 # the runtime's rule: the source's units, then v's
            assignment = [*[net.source] * cut, *[v] * (len(target.units) - cut)]
            for k in measured_ks(draft):
                ev = evaluate_cooperative(target, draft, net, assignment, [net.source] * len(draft.units), k)
                if ev.feasible and ev.latency_s < best[0]:
                    best = (ev.latency_s, k)
    return best


@pytest.fixture(scope="module")
def family() -> tuple[Profile, Profile, NetworkState]:
    return load_profile(TARGET), load_profile(DRAFT), load_network(FAMILY)


@pytest.mark.parametrize("bw,lat", [(1e8, 0.002), (1e8, 0.03), (1e6, 0.002), (1e8, 0.008)])
def test_best_plan_is_the_faster_of_split_and_every_cooperative_plan(family: tuple[Profile, Profile, NetworkState],
                                                                     bw: float, lat: float) -> None:
    target, draft, base = family
    net = with_link(base, "phone", "edge", bw, lat)
    plan, search = best_plan(target, net, draft=draft)
    split = solve(target, net).predicted_latency_s
    coop, k = brute_cooperative(target, draft, net)
    assert search is not None
    assert plan.predicted_latency_s == pytest.approx(min(split, coop), rel=1e-9)
    assert plan.mode == ("cooperative" if coop < split else "split")
    if plan.mode == "cooperative":
        assert plan.k == k and plan.draft_assignment == ["phone"] * len(draft.units)
    assert plan_latency(plan, target, net, draft).latency_s == pytest.approx(plan.predicted_latency_s, rel=1e-9)


def test_the_choice_follows_the_link(family: tuple[Profile, Profile, NetworkState]) -> None:
    """The daemon test's scenario: a near edge makes the cooperative plan best; 30 ms on the phone-edge
    link makes the split plan (everything past the phone on the cloud) best."""
    target, draft, base = family
    near, _ = best_plan(target, base, draft=draft)
    far, _ = best_plan(target, with_link(base, "phone", "edge", 1e8, 0.03), draft=draft)
    assert near.mode == "cooperative" and far.mode == "split" and "edge" not in far.assignment


def test_no_cooperative_plan_verifies_where_no_verifier_answers(family: tuple[Profile, Profile, NetworkState]) -> None:
    """The daemon's `no_verifier` (a remote verifier not answering): the best plan is the faster of split
    and the cooperative plans verifying elsewhere (brute force over the other nodes), and a cooperative
    plan in force verifying there is replaced whatever the thresholds say."""
    target, draft, net = family
    coop, _ = best_plan(target, net, draft=draft)
    assert coop.mode == "cooperative" and coop.assignment[-1] == "edge"
    plan, search = best_plan(target, net, draft=draft, no_verifier={"edge"})
    assert search is not None and "edge: no verifier answers there" in search.skipped
    assert not (plan.mode == "cooperative" and plan.assignment[-1] == "edge")
    best_coop, _ = brute_cooperative(target, draft, net, skip=("edge",))
    assert plan.predicted_latency_s == pytest.approx(min(solve(target, net).predicted_latency_s, best_coop), rel=1e-9)
    lax = DaemonSettings(threshold=0.99, horizon_s=0.001)             # would keep any plan in force
    d = decide(coop, plan, target, net, lax, 0.0, draft, no_verifier={"edge"})
    assert d.apply and "verifies on edge, where no verifier answers" in d.reason
    assert not decide(coop, plan, target, net, lax, 0.0, draft).apply


def test_decide_moves_between_modes_and_k_with_hysteresis(family: tuple[Profile, Profile, NetworkState]) -> None:
    target, draft, base = family
    s = DaemonSettings(threshold=0.10, horizon_s=60, min_request_rate_hz=1.0)
    coop, _ = best_plan(target, base, draft=draft)
    assert coop.mode == "cooperative"
    first = decide(None, coop, target, base, s, 0.0, draft)
    assert first.apply and first.load_bytes["phone"] >= sum(u.param_bytes for u in draft.units)
    # the link slows: the cooperative plan in force is weighed by L_coop on the new snapshot
    slow = with_link(base, "phone", "edge", 1e8, 0.03)
    split, _ = best_plan(target, slow, draft=draft)
    d = decide(coop, split, target, slow, s, 1.0, draft)
    cur = evaluate_cooperative(target, draft, slow, coop.assignment, coop.draft_assignment or [], coop.k or 0)
    assert d.apply and "cooperative k=" in d.reason and "-> split" in d.reason
    assert d.current_s == pytest.approx(cur.latency_s) and d.candidate_s == pytest.approx(split.predicted_latency_s)
    # and back: the split plan in force against the cooperative candidate on the first snapshot
    back = decide(split, coop, target, base, s, 1.0, draft)
    assert back.apply and back.current_s == pytest.approx(evaluate(target, base, split.assignment).latency_s)
    # another k on the same placement is another plan: weighed (no weights move), taken only past the threshold
    ks = measured_ks(draft)
    other = coop.model_copy(update={"k": next(k for k in ks if k != coop.k)})
    assert not same_plan(other, coop)
    d_k = decide(other, coop, target, base, s, 1.0, draft)
    assert d_k.load_bytes == {} and d_k.migration_s == pytest.approx(s.switch_s)
    lo = evaluate_cooperative(target, draft, base, other.assignment, other.draft_assignment or [], other.k or 0)
    assert d_k.current_s == pytest.approx(lo.latency_s)
    assert d_k.apply == ((lo.latency_s - d_k.candidate_s) / lo.latency_s >= s.threshold)
    assert not decide(coop, coop.model_copy(), target, base, s, 1.0, draft).apply
    # a cooperative plan in force whose draft is unknown cannot run: replaced whatever the gain
    lost = decide(coop, split, target, slow, s, 0.0, None)
    assert lost.apply and "without its draft" in lost.reason


def test_the_daemon_candidate_takes_token_reductions() -> None:
    """best_plan is solve_with_reductions' plan; decide weighs a reduced plan with its reduction."""
    prof, net = captioner(0), network(2e5)
    plan, _ = best_plan(prof, net)
    ref, _ = solve_with_reductions(prof, net)
    timeless = {"solve_time_s": 0.0}
    assert plan.model_copy(update=timeless) == ref.model_copy(update=timeless)
    assert [(r["method"], r["keep"]) for r in plan.reductions or []] == [("dpc", 24)]
    plain = solve(prof, net)
    assert plan.predicted_latency_s < plain.predicted_latency_s
    s = DaemonSettings(threshold=0.0, min_request_rate_hz=1.0)
    d = decide(plain.model_copy(update={"reductions": []}), plan, prof, net, s, 1.0)
    reduced = evaluate(profile_for_plan(prof, plan), net, plan.assignment).latency_s
    assert d.candidate_s == pytest.approx(reduced) and d.candidate_s == pytest.approx(plan.predicted_latency_s)
    assert d.current_s == pytest.approx(plain.predicted_latency_s) and d.apply
    # the same placement with and without the reduction are two plans
    assert not same_plan(plan, plan.model_copy(update={"reductions": []}))
    # the quality cap and --no-reduction reach the daemon's candidate too
    capped = best_plan(prof, net, max_quality_loss=0.0)[0]
    assert capped.reductions == solve_with_reductions(prof, net, max_quality_loss=0.0)[0].reductions
    assert all(r["quality_loss"] <= 0.0 for r in capped.reductions or [])
    assert best_plan(prof, net, reduce=False)[0].reductions == []


def test_daemon_cli_draft_options_are_checked_before_anything_starts(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["daemon", "--model", "captioner-target", "--network", str(FAMILY), "--profile", str(TARGET),
              "--url", f"sqlite:///{tmp_path / 'h.db'}", "--api", "127.0.0.1:0"]
    untied = load_profile(DRAFT)
    assert untied.speculative is not None
    other = tmp_path / "other.json"
    other.write_text(untied.model_copy(update={"speculative": untied.speculative.model_copy(
        update={"target": "tiny-captioner"})}).model_dump_json(by_alias=True, exclude_none=True))
    for extra, message in ((["--draft", "captioner-draft"], "--draft: give the draft's profile"),
                           (["--draft-profile", str(DRAFT)], "--draft-profile: give the draft model too"),
                           (["--draft", "captioner-draft", "--draft-profile", str(ROOT / "examples" /
                                                                                 "tiny-captioner.profile.json")],
                            "no `speculative` section"),
                           (["--draft", "captioner-draft", "--draft-profile", str(other)],
                            "measured against tiny-captioner, not captioner-target"),
                           (["--request-timeout", "0"], "--request-timeout: must be in (0, 3600]"),
                           (["--request-timeout", "inf"], "--request-timeout: must be in (0, 3600]"),
                           (["--max-retries", "-1"], "--max-retries: must be 0 or more")):
        code, out, err = aiflow_in_process(capsys, monkeypatch, *common, *extra)
        errors = [line for line in err.splitlines() if line.startswith("aiflow: error:")]
        assert code == 2 and len(errors) == 1 and message in errors[0], (extra, err)
