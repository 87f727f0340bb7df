"""Bad network/profile/plan files give one line that names the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.network import load_network
from orchestrator.plan import load_plan
from profiler.errors import InputError
from profiler.profile import load_profile

GOOD_NET = """
format: aiflow.network/v1
source: phone
nodes:
  - {name: phone, hardware: cpu, mem_bytes: 4.0e9, slowdown: 6.0, tier: device}
  - {name: edge,  hardware: cpu, mem_bytes: 16.0e9, tier: edge}
links:
  - {a: phone, b: edge, bandwidth_bps: 2.0e7, latency_s: 0.01}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_network_loads(tmp_path: Path) -> None:
    net = load_network(_write(tmp_path, "n.yaml", GOOD_NET))
    assert net.sink_node == "phone" and net.node("phone").slowdown == 6.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("nodes: [", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping"),
        (GOOD_NET.replace("aiflow.network/v1", "aiflow.network/v9"), "field format"),
        (GOOD_NET.replace("b: edge,", "b: moon,"), "links[0].b: unknown node 'moon'"),
        (GOOD_NET.replace("2.0e7", "-5"), "links[0].bandwidth_bps"),
        (GOOD_NET.replace("slowdown: 6.0", "slowdown: 0.5"), "nodes[0].slowdown"),
        (GOOD_NET.replace("source: phone", "source: mars"), "source: unknown node"),
    ],
)
def test_bad_network_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, "net.yaml", text)
    with pytest.raises(InputError) as info:
        load_network(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg and needle in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_profile(tmp_path / "nope.json")


def test_profile_phase_out_of_range(tmp_path: Path) -> None:
    doc = {"format": "aiflow.profile/v1", "model": "m",
           "units": [{"name": "a", "param_bytes": 1, "mem_bytes": 1, "latency_s": {"cpu": {"p": 1.0}}}],
           "phases": [{"name": "p", "first": 0, "last": 3}]}
    path = _write(tmp_path, "p.json", json.dumps(doc))
    with pytest.raises(InputError, match=r"phases\[0\]\.last: 3 is out of range"):
        load_profile(path)


def test_profile_missing_phase_latency(tmp_path: Path) -> None:
    doc = {"format": "aiflow.profile/v1", "model": "m",
           "units": [{"name": "a", "param_bytes": 1, "mem_bytes": 1, "latency_s": {"cpu": {"x": 1.0}}}],
           "phases": [{"name": "p", "first": 0, "last": 0}]}
    with pytest.raises(InputError, match=r"units\[0\]\.latency_s\.cpu: no latency for phase 'p'"):
        load_profile(_write(tmp_path, "p.json", json.dumps(doc)))


def test_plan_round_trip(tmp_path: Path) -> None:
    from orchestrator.plan import Plan, save_plan

    plan = Plan(model="m", assignment=["a", "b"], predicted_latency_s=0.5, status="optimal", solver="cbc",
                breakdown={"compute_s": {"a": 0.1}, "transfer_s": {"a->b": 0.4}})
    save_plan(plan, tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json") == plan


def test_profile_round_trip_keeps_edge_alias(tmp_path: Path) -> None:
    from profiler.profile import parse_profile, save_profile

    doc = {"format": "aiflow.profile/v1", "model": "m",
           "units": [{"name": f"u{i}", "param_bytes": 1, "mem_bytes": 1, "latency_s": {"cpu": {"p": 1.0}}}
                     for i in range(3)],
           "phases": [{"name": "p", "first": 0, "last": 2}],
           "edges": [{"from": 0, "to": [1, 2], "bytes": 10}], "custom_field": 7}
    prof = parse_profile(doc)
    save_profile(prof, tmp_path / "p.json")
    text = (tmp_path / "p.json").read_text()
    assert '"from": 0' in text and '"custom_field": 7' in text
    assert load_profile(tmp_path / "p.json") == prof
