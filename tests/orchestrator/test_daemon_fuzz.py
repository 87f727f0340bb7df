"""Schemathesis against the daemon's own OpenAPI document, in process (ASGI): every operation, with
bodies that follow the schema and bodies that break it. The daemon answers each with a documented status
and a JSON reason; never a 500, never a dropped connection. A bounded number of examples keeps it fast.

The daemon is not started (no worker processes): a valid inference request is answered 503 ("not
serving"), which is its documented answer then; everything before it (the limits, the input checks) runs
for real. Joining is pointed at a transport that reaches nothing, so no address is ever contacted."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from orchestrator.daemon.api import create_app
from orchestrator.daemon.service import Daemon
from orchestrator.network import load_network
from profiler.models import load_adapter
from profiler.profile import load_profile
from runtime.transport import TransportError

ROOT = Path(__file__).resolve().parents[2]
# what a client may be answered: 502 (the workers failed the request) and 503 (starting or stopping) are
# the daemon's own documented outcomes; any other 5xx is a failure
ALLOWED = {200, 400, 401, 403, 404, 405, 409, 413, 422, 429, 502, 503}


class _Unreachable:
    async def health(self, address: str, *, timeout: float = 5.0) -> dict:
        raise TransportError(address, "UNAVAILABLE", "not contacted in this test")

    async def send(self, address: str, frame: bytes, *, timeout: float = 5.0) -> list[bytes]:
        raise TransportError(address, "UNAVAILABLE", "not contacted in this test")

    async def close(self) -> None:
        return None


def _app() -> object:
    daemon = Daemon("tiny-captioner", load_network(ROOT / "examples" / "daemon.network.yaml"),
                    load_profile(ROOT / "examples" / "tiny-captioner.profile.json"), load_adapter("tiny-captioner"))
    daemon.transport = _Unreachable()
    return create_app(daemon)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_answers_every_generated_request_with_a_documented_status(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code in ALLOWED, (case.method, case.path, case.body, response.status_code,
                                             response.text[:300])
    if response.status_code >= 400:
        detail = response.json().get("detail")
        assert detail, response.text[:300]
    elif case.method == "GET" and case.path == "/metrics":
        assert "aiflow_" in response.text
    else:
        case.operation.validate_response(response)


@pytest.mark.parametrize("raw, code", [
    (b"{", 422), (b"[]", 422), (b'{"image": NaN}', 422), (b'{"max_new_tokens": Infinity, "image": "AAAA"}', 422),
    (b"\xff\xfe", 422), (b'{"image": "' + b"A" * (13 << 20) + b'"}', 413),
])
def test_malformed_and_oversized_bodies(raw: bytes, code: int) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(_app())
    r = client.post("/v1/requests", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == code, r.text[:200]
    assert r.json()["detail"]
