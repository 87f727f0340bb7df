"""Worker processes on loopback (slow: each process imports torch and loads the model)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from profiler.generate import greedy_generate
from runtime.local import LocalWorkers, WorkerStartError
from runtime.transport import GrpcTransport, TransportError
from tests.runtime.conftest import adapter

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

NETWORK = {"format": "aiflow.network/v1", "source": "phone", "nodes": [
    {"name": "phone", "hardware": "cpu", "mem_bytes": 4e9, "slowdown": 3.0, "tier": "device"},
    {"name": "edge", "hardware": "cpu", "mem_bytes": 16e9, "tier": "edge"},
    {"name": "cloud", "hardware": "fast", "mem_bytes": 1e11, "tier": "cloud"}], "links": [
    {"a": "phone", "b": "edge", "bandwidth_bps": 2e7, "latency_s": 0.01},
    {"a": "edge", "b": "cloud", "bandwidth_bps": 1e9, "latency_s": 0.02}]}
ASSIGNMENT = ["phone", "edge", "cloud", "edge"]      # gpt2 of the tests: embed, 2 blocks, head


def plan_doc(model: str) -> dict:
    return {"format": "aiflow.plan/v1", "model": model, "assignment": ASSIGNMENT, "predicted_latency_s": 0.0,
            "status": "heuristic", "solver": "hand"}


def profile_doc(model: str) -> dict:
    units = []
    for i, name in enumerate(["text.embed", "text.block.0", "text.block.1", "text.head"]):
        lat = {"prefill": 0.002 + 0.001 * i, "decode": 0.001}
        units.append({"name": name, "param_bytes": 1000, "mem_bytes": 2000,
                      "out_bytes": {"prefill": 640.0, "decode": 128.0},
                      "latency_s": {"cpu": lat, "fast": {k: v / 4 for k, v in lat.items()}}})
    return {"format": "aiflow.profile/v1", "model": model, "units": units, "result_bytes": 8,
            "phases": [{"name": "prefill", "first": 0, "last": 3, "repeat": 1, "input": "source", "in_bytes": 40},
                       {"name": "decode", "first": 0, "last": 3, "repeat": 5, "input": "loop", "in_bytes": 8}]}


def test_aiflow_run_prints_output_and_prediction(folders, tmp_path: Path) -> None:
    ad = adapter(folders, "gpt2")
    (tmp_path / "net.json").write_text(json.dumps(NETWORK))
    (tmp_path / "plan.json").write_text(json.dumps(plan_doc(ad.name)))
    (tmp_path / "profile.json").write_text(json.dumps(profile_doc(ad.name)))
    env = dict(os.environ, AIFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'h.db'}",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-c", "from orchestrator.cli import main; main()", "run", "--model", str(folders["gpt2"]),
           "--network", str(tmp_path / "net.json"), "--plan", str(tmp_path / "plan.json"), "--profile",
           str(tmp_path / "profile.json"), "--local-hardware", "cpu", "--max-new-tokens", "5", "--json",
           "--concurrency", "2", "abc", "hello there"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["input"] for r in rows] == ["abc", "hello there"]
    for r in rows:        # two requests in flight at once, each with the unsplit model's tokens
        expect = greedy_generate(ad, torch.tensor([ad.encode_text(r["input"])]), new_tokens=5).tokens[0].tolist()
        assert r["tokens"] == expect and r["output"] == ad.decode_tokens(expect)
    row = rows[0]
    assert row["dilation"] == pytest.approx(4 * 1.25)              # "fast" is 4x this machine's class
    assert row["predicted_s"] > 0 and row["measured_scaled_s"] > 0
    assert row["measured_s"] == pytest.approx(row["measured_scaled_s"] * row["dilation"])
    assert set(row["breakdown"]["compute_s"]) == {"phone", "edge", "cloud"}
    assert row["breakdown"]["transfer_s"]["edge->cloud"] > 0.02             # links were emulated
    # bad input is one line and exit code 2
    at = cmd.index("--max-new-tokens") + 1
    bad = subprocess.run(cmd[:at] + ["0"] + cmd[at + 1:], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "--max-new-tokens" in bad.stderr


def test_a_worker_process_refuses_strangers_and_bad_models(folders) -> None:
    with LocalWorkers(str(folders["gpt2"]), ["A"]) as workers:
        address = workers.addresses["A"]

        async def probe() -> None:
            good = GrpcTransport(workers.token)
            assert (await good.health(address))["name"] == "A"
            stranger = GrpcTransport("nope")
            with pytest.raises(TransportError, match="UNAUTHENTICATED"):
                await stranger.health(address)
            await good.close()
            await stranger.close()

        asyncio.run(probe())
    assert all(p.poll() is not None for p in workers.processes.values()) or not workers.processes
    with pytest.raises(WorkerStartError, match="no such model folder"):
        LocalWorkers("/nonexistent/model", ["A"]).start(timeout_s=120)


def test_workers_stop_when_their_parent_dies(folders) -> None:
    """A killed `aiflow run` must not leave worker processes behind."""
    code = ("import os, sys; from runtime.local import LocalWorkers\n"
            f"w = LocalWorkers({str(folders['gpt2'])!r}, ['a'], threads=1); w.start()\n"
            "print(w.processes['a'].pid, flush=True); os._exit(0)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    pid = int(done.stdout.split()[0])

    def alive() -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"

    deadline = time.monotonic() + 15
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(), f"worker {pid} outlived its parent"


def test_aiflow_run_is_native_when_every_node_is_this_machines_class(folders, tmp_path: Path) -> None:
    """No stretching to the profile and no dilation, but links still played."""
    ad = adapter(folders, "gpt2")
    net = {"format": "aiflow.network/v1", "source": "a", "nodes": [
        {"name": "a", "hardware": "cpu", "mem_bytes": 4e9}, {"name": "b", "hardware": "cpu", "mem_bytes": 4e9}],
        "links": [{"a": "a", "b": "b", "bandwidth_bps": 1e8, "latency_s": 0.05}]}
    prof = profile_doc(ad.name)
    for u in prof["units"]:              # a profile claiming 1 s per pass: an emulated run would take >20 s
        u["latency_s"]["cpu"] = {"prefill": 1.0, "decode": 1.0}
    plan = plan_doc(ad.name) | {"assignment": ["a", "a", "b", "b"]}
    for name, doc in (("net", net), ("plan", plan), ("profile", prof)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    env = dict(os.environ, AIFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'h.db'}",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-c", "from orchestrator.cli import main; main()", "run", "--model", str(folders["gpt2"]),
           "--network", str(tmp_path / "net.json"), "--plan", str(tmp_path / "plan.json"), "--profile",
           str(tmp_path / "profile.json"), "--local-hardware", "cpu", "--max-new-tokens", "3", "--json", "abc"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "native run: every node is of this machine's class (cpu)" in proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert row["dilation"] == 1.0
    assert row["measured_s"] < 2.0 < row["predicted_s"]          # compute was not stretched to the profile
    # Links were played: the loop token b -> a and the prefill's a -> b each wait 50 ms per pass.
    assert row["breakdown"]["transfer_s"]["a->b"] >= 3 * 0.05 and row["measured_s"] > 6 * 0.05
