"""How a stage is reached: send a frame to an address, get frames back.

`Transport` is the one small interface the worker and the client use; `GrpcTransport` and
`FrameServer` are its gRPC implementation (grpc.aio, generic handlers carrying raw bytes, so no
protoc code generation). Another way of reaching stages (Ray actors, say) is another subclass.

Service `aiflow.Stage`:
- `Push(frame bytes) -> bundle of frames` (codec.pack_frames): the receiver validates the frame and
  answers at once with `ack` or `error` frames; work it starts runs after the reply.
- `Health(b"") -> JSON bytes`.
Every call carries the shared token in the `x-aiflow-token` metadata; a server with a token rejects
calls without it (UNAUTHENTICATED). Deadlines: every call has a timeout. Message size limits are
raised to `max_message_bytes` (activations of large models are tens of MiB).
"""

from __future__ import annotations

import hmac
import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from runtime.codec import pack_frames, unpack_frames

SERVICE = "aiflow.Stage"
PUSH = f"/{SERVICE}/Push"
HEALTH = f"/{SERVICE}/Health"
TOKEN_KEY = "x-aiflow-token"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30     # gRPC's own default (4 MiB) is far below one activation
DEFAULT_TIMEOUT_S = 30.0

FrameHandler = Callable[[bytes], Awaitable[list[bytes]]]
HealthHandler = Callable[[], dict[str, Any]]


class TransportError(RuntimeError):
    """A stage could not be reached or refused the call (bad token, deadline exceeded, down)."""

    def __init__(self, address: str, code: str, detail: str) -> None:
        super().__init__(f"{address}: {code}: {detail}")
        self.address, self.code, self.detail = address, code, detail


class Transport(ABC):
    """Send a frame to a stage, get frames back."""

    @abstractmethod
    async def send(self, address: str, frame: bytes, *, timeout: float = DEFAULT_TIMEOUT_S) -> list[bytes]: ...

    @abstractmethod
    async def health(self, address: str, *, timeout: float = 5.0) -> dict[str, Any]: ...

    @abstractmethod
    async def close(self) -> None: ...


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_http_proxy", 0)]          # workers are reached directly, never through a proxy


class GrpcTransport(Transport):
    """One channel per address, created on first use; calls carry the shared token."""

    def __init__(self, token: str | None = None, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.token = token
        self.max_message_bytes = max_message_bytes
        self._channels: dict[str, tuple[grpc.aio.Channel, Any, Any]] = {}

    def _stubs(self, address: str) -> tuple[Any, Any]:
        entry = self._channels.get(address)
        if entry is None:
            channel = grpc.aio.insecure_channel(address, options=_options(self.max_message_bytes))
            push = channel.unary_unary(PUSH, request_serializer=None, response_deserializer=None)
            health = channel.unary_unary(HEALTH, request_serializer=None, response_deserializer=None)
            entry = (channel, push, health)
            self._channels[address] = entry
        return entry[1], entry[2]

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((TOKEN_KEY, self.token),) if self.token else ()

    async def send(self, address: str, frame: bytes, *, timeout: float = DEFAULT_TIMEOUT_S) -> list[bytes]:
        push, _ = self._stubs(address)
        try:
            reply = await push(frame, timeout=timeout, metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            raise TransportError(address, exc.code().name, exc.details() or "") from None
        return unpack_frames(reply)

    async def health(self, address: str, *, timeout: float = 5.0) -> dict[str, Any]:
        _, health = self._stubs(address)
        try:
            reply = await health(b"", timeout=timeout, metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            raise TransportError(address, exc.code().name, exc.details() or "") from None
        return json.loads(reply.decode("utf-8"))

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel, _, _ in channels.values():
            await channel.close()


class FrameServer:
    """A gRPC server for one endpoint (a worker, or a client's reply address)."""

    def __init__(self, handler: FrameHandler, health: HealthHandler, *, token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._handler = handler
        self._health = health
        self._token = token
        self._max = max_message_bytes
        self._server: grpc.aio.Server | None = None
        self.address: str | None = None

    def _authorised(self, context: grpc.aio.ServicerContext) -> bool:
        if not self._token:
            return True
        for key, value in context.invocation_metadata() or ():
            if key == TOKEN_KEY:
                given = value if isinstance(value, str) else value.decode("utf-8", "replace")
                return hmac.compare_digest(given.encode("utf-8"), self._token.encode("utf-8"))
        return False

    async def _push(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if not self._authorised(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-aiflow-token")
        return pack_frames(await self._handler(request))

    async def _health_call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if not self._authorised(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-aiflow-token")
        return json.dumps(self._health()).encode("utf-8")

    async def start(self, listen: str) -> str:
        """Bind `host:port` (port 0: any free port) and serve; returns the bound `host:port`."""
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"listen address {listen!r}: expected HOST:PORT")
        server = grpc.aio.server(options=_options(self._max))
        handlers = {
            "Push": grpc.unary_unary_rpc_method_handler(self._push),
            "Health": grpc.unary_unary_rpc_method_handler(self._health_call),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        bound = server.add_insecure_port(listen)
        if bound == 0:
            raise OSError(f"cannot listen on {listen}")
        await server.start()
        self._server = server
        self.address = f"{host}:{bound}"
        return self.address

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
