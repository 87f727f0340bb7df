"""Bounds the daemon's HTTP API puts on its callers, before any worker is involved.

- a request body larger than `max_body_bytes` is refused with 413 while it is still arriving (the
  Content-Length says so, or the bytes read pass the bound), so a huge body is never held in memory;
- at most `max_open` inference requests are open in all and `max_per_client` from one client address
  (429 beyond either, with the count in the reason).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fastapi import HTTPException

Scope = dict[str, Any]


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 with a JSON reason for a body over `max_bytes`."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        seen = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not started:
                await _too_large(send, self.max_bytes)


async def _too_large(send: Any, max_bytes: int) -> None:
    body = json.dumps({"detail": f"request body: larger than {max_bytes} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class OpenRequests:
    """Counts the inference requests open in all and per client; refuses (429) beyond the bounds."""

    def __init__(self, max_open: int, max_per_client: int) -> None:
        self.max_open = max_open
        self.max_per_client = max_per_client
        self.total = 0
        self.by_client: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        if self.total >= self.max_open:
            raise HTTPException(429, f"{self.total} requests are open, the most this daemon takes; retry later")
        if self.by_client[client] >= self.max_per_client:
            raise HTTPException(429, f"{self.by_client[client]} requests of this client are open, the most one "
                                     "client may have; retry later")
        self.total += 1
        self.by_client[client] += 1
        try:
            yield
        finally:
            self.total -= 1
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]


async def invalid_body(_: Any, exc: Any) -> Any:
    """422 for a body that does not fit the schema: where and what, without echoing the input (which may
    hold NaN, that JSON cannot carry, or megabytes of base64)."""
    from fastapi.responses import JSONResponse

    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)
