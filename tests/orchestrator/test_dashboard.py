"""The dashboard's parts without a browser: what it draws of a plan (against bytes counted by hand from
the planning model), the event hub's bounded buffers, and the endpoints' token checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator.daemon.api import create_app
from orchestrator.daemon.dashboard import dashboard_state
from orchestrator.daemon.events import EventHub, sse
from orchestrator.daemon.service import Daemon
from orchestrator.daemon.view import finite, plan_view, unit_spans
from orchestrator.network import load_network, parse_network
from profiler.models import load_adapter
from profiler.profile import load_profile, parse_profile

ROOT = Path(__file__).resolve().parents[2]


def toy_profile():
    units = [{"name": f"u{i}", "param_bytes": 10 * (i + 1), "mem_bytes": 100,
              "out_bytes": {"enc": 1000.0, "pre": 500.0, "dec": 10.0},
              "latency_s": {"cpu": {"enc": 1.0, "pre": 0.5, "dec": 0.1}}} for i in range(4)]
    return parse_profile({
        "format": "aiflow.profile/v1", "model": "toy", "units": units,
        "phases": [
            {"name": "enc", "first": 0, "last": 1, "repeat": 1, "input": "source", "in_bytes": 2000},
            {"name": "pre", "first": 2, "last": 3, "repeat": 1, "input": "none", "in_bytes": 0},
            {"name": "dec", "first": 2, "last": 3, "repeat": 3, "input": "loop", "in_bytes": 8},
        ],
        "edges": [{"from": 1, "to": [2, 3], "bytes": 4000}],
        "result_bytes": 100,
    })


def toy_network():
    # a chain a - b - c: a message between a and c crosses both links
    return parse_network({
        "format": "aiflow.network/v1", "source": "a",
        "nodes": [{"name": n, "hardware": "cpu", "mem_bytes": 1e9} for n in "abc"],
        "links": [{"a": "a", "b": "b", "bandwidth_bps": 8000, "latency_s": 0.5},
                  {"a": "b", "b": "c", "bandwidth_bps": 80000, "latency_s": 0.25}],
    })


def test_unit_spans() -> None:
    assert unit_spans([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert unit_spans([3]) == "3" and unit_spans([]) == ""


@pytest.mark.parametrize("assignment, links", [
    # enc u0 -> u1 crosses a~b and b~c (1000 B), the result comes back over both (100 B)
    (["a", "c", "c", "c"], {"a~b": (1100, 2, {"a->b": 1000, "b->a": 100}),
                            "b~c": (1100, 2, {"b->c": 1000, "c->b": 100})}),
    # the edge from u1 on a goes to b and to c (4000 B each, both over a~b); pre u2 -> u3 500 B; the decoder's
    # three passes: loop c -> b 8 B and u2 -> u3 10 B each; the result c -> a
    (["a", "a", "b", "c"], {"a~b": (8100, 3, {"a->b": 8000, "b->a": 100}),
                            "b~c": (4654, 9, {"b->c": 4530, "c->b": 124})}),
    (["a", "a", "a", "a"], {}),
])
def test_plan_view_counts_the_bytes_each_link_carries(assignment: list[str], links: dict) -> None:
    view = plan_view(toy_profile(), toy_network(), assignment)
    got = {k: (v["bytes"], v["messages"], v["directions"]) for k, v in view["links"].items()}
    assert got == links
    for v in view["links"].values():
        assert v["transfer_s"] > 0
    nodes = view["nodes"]
    assert set(nodes) == set(assignment)
    for node, entry in nodes.items():
        mine = [u for u, n in enumerate(assignment) if n == node]
        assert entry["units"] == mine and entry["unit_names"] == [f"u{u}" for u in mine]
        assert entry["param_bytes"] == sum(10 * (u + 1) for u in mine)


def test_finite_makes_json_safe() -> None:
    assert finite({"a": [1.0, float("inf")], "b": float("nan"), "c": "x"}) == {"a": [1.0, None], "b": None, "c": "x"}
    with pytest.raises(ValueError):
        sse("state", {"x": float("nan")})
    assert sse("request", {"x": 1}) == 'event: request\ndata: {"x":1}\n\n'


def test_event_hub_coalesces_bounds_and_closes() -> None:
    async def scenario() -> None:
        hub = EventHub(limit=3)
        sub = hub.subscribe()
        assert await sub.next(0.01) == []                       # nothing yet: a keepalive tick
        hub.publish("state")
        hub.publish("request", {"n": 1})
        assert await sub.next(1.0) == [("state", None), ("request", {"n": 1})]
        for n in range(5):                                     # more than the buffer holds: resynchronise
            hub.publish("request", {"n": n})
        items = await sub.next(1.0)
        assert sub.resync and ("state", None) in items and len(items) <= 3
        waiter = asyncio.create_task(sub.next(10.0))
        await asyncio.sleep(0.01)
        hub.close()                                            # the daemon stops: open streams end at once
        assert await asyncio.wait_for(waiter, 1.0) is None
        assert await hub.subscribe().next(1.0) is None          # and new ones end at once
        hub.unsubscribe(sub)

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def daemon() -> Daemon:
    return Daemon("tiny-captioner", load_network(ROOT / "examples" / "daemon.network.yaml"),
                  load_profile(ROOT / "examples" / "tiny-captioner.profile.json"), load_adapter("tiny-captioner"))


def test_the_page_is_served_and_its_reads_take_the_token(daemon: Daemon) -> None:
    api = TestClient(create_app(daemon, token="s3cret", open_reads=False))
    page = api.get("/")
    assert page.status_code == 200 and 'id="topology"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("dashboard.js", "dashboard.css"):
        assert api.get(f"/dashboard/{asset}").status_code == 200
    for path in ("/v1/dashboard", "/v1/events", "/v1/history/links?link=edge~phone", "/v1/status"):
        assert api.get(path).status_code == 401, path
        r = api.get(path, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 403 and r.json()["detail"] == "wrong token"
    ok = api.get("/v1/dashboard", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    st = ok.json()
    assert st["plan"] is None and [n["name"] for n in st["nodes"]] == ["phone", "edge", "cloud"]
    assert {lk["key"] for lk in st["links"]} == {"edge~phone", "cloud~edge"}
    assert [n["tier"] for n in st["nodes"]] == ["device", "edge", "cloud"]


def test_link_history_refuses_unknown_links_and_says_when_there_is_no_database(daemon: Daemon) -> None:
    api = TestClient(create_app(daemon))
    r = api.get("/v1/history/links", params={"link": "phone~cloud"})
    assert r.status_code == 404 and "no link 'phone~cloud'" in r.json()["detail"]
    r = api.get("/v1/history/links", params={"link": "edge~phone"})
    assert r.status_code == 404 and "no history database" in r.json()["detail"]
    assert api.get("/v1/history/links", params={"link": "edge~phone", "since_s": -1}).status_code == 422


def test_the_state_of_a_daemon_with_no_plan(daemon: Daemon) -> None:
    st = dashboard_state(daemon)
    assert st["plan"] is None and st["requests"] == [] and st["switches"] == [] and st["decisions"] == []
    played = {lk["key"]: lk["played"]["bandwidth_bps"] for lk in st["links"]}
    assert played == {"edge~phone": 2e7, "cloud~edge": 1e8}
    assert "requests" not in dashboard_state(daemon, with_requests=False)


def test_private_reads_without_a_token_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import aiflow_in_process

    monkeypatch.delenv("AIFLOW_API_TOKEN", raising=False)
    code, out, err = aiflow_in_process(capsys, monkeypatch, "daemon", "--model", "tiny-captioner", "--network",
                                       str(ROOT / "examples" / "daemon.network.yaml"), "--private-reads")
    assert code == 2 and out == ""
    assert err.strip() == ("aiflow: error: --private-reads: reads need a token; give one with --token "
                           "(or $AIFLOW_API_TOKEN)")
