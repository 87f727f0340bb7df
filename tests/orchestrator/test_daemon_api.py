"""The daemon's HTTP API refuses bad input and missing tokens with a clear 4xx (never a 500), before any
worker is involved: a daemon that is not started answers every valid request with 503."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from orchestrator.cli.daemon_cmd import _loopback
from orchestrator.daemon.api import create_app
from orchestrator.daemon.service import Daemon
from orchestrator.network import load_network
from profiler.models import load_adapter
from profiler.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def api() -> TestClient:
    daemon = Daemon("tiny-captioner", load_network(ROOT / "examples" / "daemon.network.yaml"),
                    load_profile(ROOT / "examples" / "tiny-captioner.profile.json"), load_adapter("tiny-captioner"))
    return TestClient(create_app(daemon, token="s3cret"))


def png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_posts_need_the_token_reads_do_not(api: TestClient) -> None:
    assert api.post("/v1/requests", json={"image": png()}).status_code == 401
    r = api.post("/v1/requests", json={"image": png()}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json()["detail"] == "wrong token"
    assert api.post("/v1/resolve").status_code == 401
    assert api.post("/v1/emulation/links", json={"a": "phone", "b": "edge", "bandwidth_bps": 1}).status_code == 401
    assert api.get("/v1/status").status_code == 200
    assert api.get("/openapi.json").json()["info"]["title"] == "aiflow daemon"


@pytest.mark.parametrize("body, code, words", [
    ({"image": "not base64!"}, 422, "base64"),
    ({"image": base64.b64encode(b"GIF89a nonsense").decode()}, 422, "not a readable PNG or JPEG"),
    ({"prompt": "a captioner takes no prompt"}, 422, "takes {'image'"),
    ({}, 422, "takes {'image'"),
    ({"image": "AAAA", "model": "gpt2"}, 404, "serves 'tiny-captioner'"),
    ({"image": "AAAA", "max_new_tokens": 1000}, 422, "at most 64"),
    ({"image": "AAAA", "max_new_tokens": 0}, 422, "greater than or equal to 1"),
    ({"image": "AAAA", "bogus": 1}, 422, "Extra inputs"),
])
def test_bad_requests_get_a_clear_4xx(api: TestClient, body: dict, code: int, words: str) -> None:
    r = api.post("/v1/requests", json=body, headers=AUTH)
    assert r.status_code == code, r.text
    assert words in str(r.json()["detail"])


def test_a_request_longer_than_the_model_is_refused(api: TestClient) -> None:
    r = api.post("/v1/requests", json={"image": png(), "max_new_tokens": 40}, headers=AUTH)
    assert r.status_code == 422 and "exceed the model's 40 positions" in r.json()["detail"]


def test_a_valid_request_to_a_daemon_not_serving_is_503(api: TestClient) -> None:
    r = api.post("/v1/requests", json={"image": png()}, headers=AUTH)
    assert r.status_code == 503 and "not serving" in r.json()["detail"]
    assert api.get("/v1/plan").status_code == 503


def test_emulation_changes_are_checked(api: TestClient) -> None:
    r = api.post("/v1/emulation/links", json={"a": "phone", "b": "cloud", "bandwidth_bps": 1e6}, headers=AUTH)
    assert r.status_code == 404 and "no link between 'phone' and 'cloud'" in r.json()["detail"]
    r = api.post("/v1/emulation/links", json={"a": "phone", "b": "edge", "bandwidth_bps": -1}, headers=AUTH)
    assert r.status_code == 422
    r = api.post("/v1/emulation/nodes", json={"name": "phone", "slowdown": 0.5}, headers=AUTH)
    assert r.status_code == 422
    r = api.post("/v1/emulation/nodes", json={"name": "moon", "slowdown": 2}, headers=AUTH)
    assert r.status_code == 404


def test_a_token_is_generated_beyond_loopback_only() -> None:
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("10.1.2.3") and not _loopback("example.org")
