"""`aiflow plan` end to end: the shipped examples solve, plans are stored, bad input is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.costmodel import evaluate
from orchestrator.network import load_network
from orchestrator.plan import load_plan
from profiler.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CAPTIONER = (EXAMPLES / "tiny-captioner.profile.json", EXAMPLES / "three-tier.network.yaml")
LLM = (EXAMPLES / "smollm2-135m.synthetic.profile.json", EXAMPLES / "three-tier-llm.network.yaml")


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    monkeypatch.setenv("AIFLOW_DATABASE_URL", url)
    import os

    return {**os.environ, "AIFLOW_DATABASE_URL": url}


def aiflow(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "from orchestrator.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize("files", [CAPTIONER, LLM], ids=["captioner", "llm"])
def test_examples_solve_and_are_stored(files: tuple[Path, Path], env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    res = aiflow("plan", "--profile", files[0], "--network", files[1], "--out", out, "--json", env=env)
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    plan = load_plan(out)
    assert printed["assignment"] == plan.assignment and plan.status == "optimal"
    prof, net = load_profile(files[0]), load_network(files[1])
    assert plan.predicted_latency_s == evaluate(prof, net, plan.assignment).latency_s

    from orchestrator.store import Store

    with Store.open() as store:
        stored = store.get_plan(1)
        assert stored.assignment == plan.assignment
        assert all(i is not None for i in store.plan_inputs(1))

    # explain by stored id, diff against device-only, compare: all exit 0 and print.
    res = aiflow("plan", "explain", "1", "--profile", files[0], "--network", files[1], "--json", env=env)
    assert res.returncode == 0, res.stderr
    ex = json.loads(res.stdout)
    assert ex["latency_s"] == pytest.approx(plan.predicted_latency_s)
    res = aiflow("plan", "compare", "--profile", files[0], "--network", files[1], "--json", env=env)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert rows[0]["strategy"] == "optimal"
    assert all(r["ratio"] is None or r["ratio"] >= 1 - 1e-9 for r in rows)


def test_table_output_and_diff(env: dict[str, str], tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert aiflow("plan", "--profile", LLM[0], "--network", LLM[1], "--out", a, "--no-store", env=env).returncode == 0
    res = aiflow("plan", "--profile", LLM[0], "--network", LLM[1], "--objective", "throughput", "--solver", "highs",
                 "--out", b, "--no-store", env=env)
    assert res.returncode == 0, res.stderr
    assert "predicted latency" in res.stdout and "busiest resource" in res.stdout
    res = aiflow("plan", "diff", a, b, "--profile", LLM[0], "--network", LLM[1], env=env)
    assert res.returncode == 0, res.stderr
    assert "latency" in res.stdout


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda p, n: (p.write_text("{not json"), n), "not valid JSON"),
    (lambda p, n: (p, n.write_text(n.read_text().replace("aiflow.network/v1", "aiflow.network/v0"))), "field format"),
    (lambda p, n: (p, n.write_text(n.read_text().replace("b: edge,", "b: moon,", 1))), "unknown node 'moon'"),
    (lambda p, n: (p, n.write_text(n.read_text().replace("2.0e7", "-2.0e7", 1))), "bandwidth_bps"),
    (lambda p, n: (p.write_text(p.read_text().replace('"last": 31', '"last": 99', 1)), n), "out of range"),
    (lambda p, n: (p, n.write_text(n.read_text().replace("mem_bytes: 3.0e8", "mem_bytes: 1.0e3")
                                   .replace("mem_bytes: 8.0e9", "mem_bytes: 1.0e3")
                                   .replace("mem_bytes: 1.41e11", "mem_bytes: 1.0e3"))), "no plan exists"),
])
def test_bad_input_is_one_line_and_exit_2(mutate, needle: str, env: dict[str, str], tmp_path: Path) -> None:
    prof, net = tmp_path / "p.json", tmp_path / "n.yaml"
    prof.write_text(LLM[0].read_text())
    net.write_text(LLM[1].read_text())
    mutate(prof, net)
    res = aiflow("plan", "--profile", prof, "--network", net, env=env)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_bad_options_exit_2(env: dict[str, str]) -> None:
    for extra, needle in ((["--solver", "gurobi"], "--solver"), (["--objective", "energy"], "--objective"),
                          (["--time-limit", "-1"], "--time-limit")):
        res = aiflow("plan", "--profile", LLM[0], "--network", LLM[1], "--no-store", *extra, env=env)
        assert res.returncode == 2 and needle in res.stderr, res.stderr
    res = aiflow("plan", "explain", "nope.json", "--profile", LLM[0], "--network", LLM[1], env=env)
    assert res.returncode == 2 and "no such file" in res.stderr


def test_explain_shows_the_runtimes_own_costs(env: dict[str, str], tmp_path: Path) -> None:
    prof = load_profile(CAPTIONER[0])
    doc = prof.model_dump(by_alias=True, exclude_none=True)
    doc["overheads"] = {"phone-a78": {"hop_s": 0.004, "request_s": 0.003}, "jetson-orin-nano": {"hop_s": 0.002}}
    pfile = tmp_path / "with-overheads.profile.json"
    pfile.write_text(json.dumps(doc))
    out = tmp_path / "plan.json"
    assert aiflow("plan", "--profile", pfile, "--network", CAPTIONER[1], "--out", out, "--no-store",
                  env=env).returncode == 0
    res = aiflow("plan", "explain", out, "--profile", pfile, "--network", CAPTIONER[1], "--json", "--no-price", env=env)
    assert res.returncode == 0, res.stderr
    ex = json.loads(res.stdout)
    assert ex["request_s"] == pytest.approx(0.003)
    plain = evaluate(prof, load_network(CAPTIONER[1]), load_plan(out).assignment).latency_s
    assert ex["latency_s"] == pytest.approx(plain + ex["overhead_s"], rel=1e-12)
    res = aiflow("plan", "explain", out, "--profile", pfile, "--network", CAPTIONER[1], "--no-price", env=env)
    assert "runtime, per request" in res.stdout and "runtime's own costs" in res.stdout
