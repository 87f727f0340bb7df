"""The daemon's HTTP API: a thin FastAPI layer over the Daemon's methods (OpenAPI at /openapi.json).

Errors are JSON `{"detail": "..."}` with a 4xx for bad input (400, 401/403, 404, 409, 413, 422) and
503 while the daemon starts or stops; never a 500 for something a client sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
from typing import Any, Literal

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.daemon.dashboard import add_dashboard
from orchestrator.daemon.limits import BodyLimit, OpenRequests, invalid_body
from orchestrator.daemon.service import Daemon, ServiceUnavailable
from orchestrator.daemon.view import finite
from profiler.errors import InputError
from runtime.client import RequestFailed
from runtime.session import is_generative, takes_images
from runtime.transport import TransportError

MAX_IMAGE_BYTES = 8 << 20
MAX_PROMPT_CHARS = 20_000


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: str | None = Field(None, description="The model to run; when given, it must be the one served")
    image: str | None = Field(None, description="Base64 of a PNG or JPEG file (captioners)")
    prompt: str | None = Field(None, description="Prompt text (language models)", max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int | None = Field(None, ge=1, description="Bound on generated tokens")


class InferenceResponse(BaseModel):
    output: str
    tokens: list[int]
    plan_version: int
    latency_s: float = Field(description="Latency on the network the daemon serves (wall time / K when emulated)")
    predicted_latency_s: float
    wall_s: float
    breakdown: dict[str, Any]


class LinkChange(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    a: str
    b: str
    bandwidth_bps: float | None = Field(None, ge=1e3, le=1e12)
    latency_s: float | None = Field(None, ge=0, lt=3600)


class JoinLink(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    to: str
    bandwidth_bps: float = Field(ge=1e3, le=1e12)
    latency_s: float = Field(0.0, ge=0, lt=3600)


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(min_length=1, max_length=200)
    hardware: str = Field(min_length=1, max_length=200)
    mem_bytes: float = Field(gt=0, le=1e15)
    address: str = Field(min_length=3, max_length=300, pattern=r"^[^\s]+:[0-9]{1,5}$")
    tier: Literal["device", "edge", "cloud"] | None = None
    links: list[JoinLink] = Field(default_factory=list, max_length=64)


class NodeChange(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str
    slowdown: float = Field(ge=1.0, lt=1e6)


def create_app(daemon: Daemon, *, token: str | None = None, open_reads: bool = True) -> FastAPI:
    """The API of `daemon`, and its dashboard at `/`. With `token`, POSTs need `Authorization: Bearer <token>`
    (and so do reads, the dashboard's included, unless `open_reads`; the page itself is always served)."""
    app = FastAPI(title="aiflow daemon", version="1",
                  description="Split inference across device, edge and cloud, kept optimal while the network moves.")
    app.add_middleware(BodyLimit, max_bytes=daemon.settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, invalid_body)
    open_requests = OpenRequests(daemon.settings.max_open_requests, daemon.settings.max_open_per_client)

    def check(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(header[7:].strip().encode(), token.encode()):
            raise HTTPException(403, "wrong token")

    def check_read(request: Request) -> None:
        if not open_reads:
            check(request)

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.get("/v1/status", dependencies=[Depends(check_read)])
    async def status() -> dict[str, Any]:
        return daemon.status()

    @app.get("/v1/plan", dependencies=[Depends(check_read)])
    async def plan() -> dict[str, Any]:
        cur = daemon.current
        if cur is None:
            raise ServiceUnavailable("no plan is in force yet")
        return {**cur.plan.model_dump(mode="json", exclude_none=True), "version": cur.number,
                "applied_at": cur.applied_at.isoformat()}

    @app.post("/v1/resolve", dependencies=[Depends(check)])
    async def resolve() -> dict[str, Any]:
        decision = await daemon.resolve("manual")
        return {**decision.to_dict(), "plan_version": daemon.current.number if daemon.current else None}

    @app.post("/v1/requests", response_model=InferenceResponse, dependencies=[Depends(check)])
    async def requests(body: InferenceRequest, request: Request) -> InferenceResponse:
        if body.model is not None and body.model not in (daemon.model, daemon.adapter.name):
            raise HTTPException(404, f"model: this daemon serves {daemon.model!r}, not {body.model!r}")
        with open_requests.hold(request.client.host if request.client else "?"):
            return await _infer(daemon, body)

    @app.post("/v1/nodes", dependencies=[Depends(check)])
    async def join(body: JoinRequest) -> dict[str, Any]:
        """A worker joins the running system (`aiflow worker --join URL`)."""
        try:
            return await daemon.join(body.name, body.hardware, body.mem_bytes, body.address,
                                     [lk.model_dump() for lk in body.links], body.tier)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        except TransportError as exc:
            raise HTTPException(422, f"address: the worker does not answer: {exc}") from None

    @app.get("/v1/emulation", dependencies=[Depends(check_read)])
    async def emulated() -> dict[str, Any]:
        """The network the local workers are emulating now, and what the API changed in it."""
        try:
            return daemon.emulation_view()
        except LookupError as exc:
            raise HTTPException(404, str(exc.args[0]) if exc.args else str(exc)) from None

    @app.post("/v1/emulation/links", dependencies=[Depends(check)])
    async def emulate_link(body: LinkChange) -> dict[str, Any]:
        try:
            return await daemon.set_link(body.a, body.b, body.bandwidth_bps, body.latency_s)
        except LookupError as exc:
            raise HTTPException(404, str(exc.args[0]) if exc.args else str(exc)) from None

    @app.post("/v1/emulation/nodes", dependencies=[Depends(check)])
    async def emulate_node(body: NodeChange) -> dict[str, Any]:
        try:
            return await daemon.set_node(body.name, body.slowdown)
        except LookupError as exc:
            raise HTTPException(404, str(exc.args[0]) if exc.args else str(exc)) from None

    @app.get("/metrics", dependencies=[Depends(check_read)])
    async def metrics() -> Response:
        return Response(daemon.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    add_dashboard(app, daemon, check_read)
    return app


async def _infer(daemon: Daemon, body: InferenceRequest) -> InferenceResponse:
    """Check the request against the model's limits, run it, record it."""
    limit = daemon.settings.max_new_tokens
    max_new = body.max_new_tokens or (32 if takes_images(daemon.adapter) else 16)
    if max_new > limit:
        raise HTTPException(422, f"max_new_tokens: at most {limit}, got {max_new}")
    source = await _input(daemon, body)
    positions = max_positions(daemon.adapter)
    prompt = 1 if takes_images(daemon.adapter) else int(source.shape[1])
    if positions is not None and prompt + max_new > positions:
        raise HTTPException(422, f"prompt and max_new_tokens: {prompt} + {max_new} tokens exceed the model's "
                                 f"{positions} positions")
    try:
        res, version, predicted = await daemon.run_request(source, max_new)
    except RequestFailed as exc:
        raise HTTPException(502, f"request failed: {exc}") from None
    ids = [int(t) for t in res.tokens[0]] if res.tokens is not None else []
    text = daemon.adapter.decode_tokens(ids) if ids else ""
    daemon.record_request(text, res, version, predicted)
    return InferenceResponse(output=text, tokens=ids, plan_version=res.plan_version, latency_s=res.scaled_s,
                             predicted_latency_s=predicted, wall_s=res.measured_s,
                             breakdown=finite(res.breakdown(scale=True)))


async def _input(daemon: Daemon, body: InferenceRequest) -> torch.Tensor:
    adapter = daemon.adapter
    if takes_images(adapter):
        if body.image is None or body.prompt is not None:
            raise HTTPException(422, f"model {adapter.name} takes {{'image': base64 of a PNG or JPEG}}")
        if len(body.image) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise HTTPException(413, f"image: larger than {MAX_IMAGE_BYTES} bytes")
        try:
            raw = base64.b64decode(body.image, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(422, "image: not valid base64") from None
        return await asyncio.to_thread(_pixels, adapter, raw)
    if not is_generative(adapter) or body.prompt is None or body.image is not None:
        raise HTTPException(422, f"model {adapter.name} takes {{'prompt': text}}")
    ids = adapter.encode_text(body.prompt)
    if not ids:
        raise HTTPException(422, "prompt: encodes to no tokens")
    if getattr(adapter, "source_input", "tensor") == "bytes":
        return torch.frombuffer(bytearray(body.prompt.encode("utf-8")), dtype=torch.uint8).reshape(1, -1)
    return torch.tensor([ids], dtype=torch.long)


def max_positions(adapter: Any) -> int | None:
    """How many token positions the model's decoder has (None when its config does not say)."""
    config = getattr(adapter.model, "config", None)
    config = getattr(config, "decoder", None) or config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _pixels(adapter: Any, raw: bytes) -> torch.Tensor:
    """The request input from an uploaded image file: the file's bytes for a model whose first unit
    decodes it (checked readable here with the same reduced-scale decode), else the model's pixels,
    made as `aiflow caption FILE` makes them (a large JPEG decoded at a reduced scale, upright)."""
    from PIL import Image

    from profiler.images import UNREADABLE, open_for_size

    try:
        with Image.open(io.BytesIO(raw)) as im:       # the header only: size before any decoding
            if im.width * im.height > 50_000_000:
                raise HTTPException(413, "image: more than 50 megapixels")
            if getattr(adapter, "source_input", "tensor") == "bytes":
                open_for_size(im, adapter.image_size)  # readable, or a 422 now rather than a failed run
                return adapter.prepare_image(raw)      # the file as sent: a first unit decodes it
        px = adapter.prepare_image(raw)
    except (*UNREADABLE, InputError) as exc:
        raise HTTPException(422, f"image: not a readable PNG or JPEG ({type(exc).__name__})") from None
    return px if px.dim() == 4 else px.unsqueeze(0)
