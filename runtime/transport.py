"""How a stage is reached: send a frame to an address, get frames back.

`Transport` is the one small interface the worker and the client use; `GrpcTransport` and
`FrameServer` are its gRPC implementation (grpc.aio, generic handlers carrying raw bytes, so no
protoc code generation). Another way of reaching stages (Ray actors, say) is another subclass.

Service `aiflow.Stage`:
- `Stream(stream of frames) -> stream of bundles`: what `GrpcTransport.send` uses. One long-lived
  call per destination carries every frame sent there, each message `frame bytes + u64 sequence
  number` (little-endian, at the end so the frame is read in place); the receiver answers each
  frame, in any order, with `bundle + the same sequence number`. A new unary call per frame costs
  three times a message on an open stream with grpc.aio (0.42 against 0.14 ms on loopback here:
  HTTP/2 stream setup, headers, the deadline, more event-loop turns), and a hop is mostly that.
- `Push(frame bytes) -> bundle of frames` (codec.pack_frames): the same for one frame, as a unary
  call (kept for other clients; `send_unary` uses it).
- `Health(b"") -> JSON bytes`.
The receiver validates a frame and answers at once with `ack` or `error` frames; work it starts runs
after the reply. Every call carries the shared token in the `x-aiflow-token` metadata; a server with
a token rejects calls without it (UNAUTHENTICATED; a stream is refused before any frame is read). A
server that accepts a stream sends its initial metadata at once, and the sender writes no frame before
it: a frame written while the stream is refused would make grpc-core end the call as INTERNAL.
Deadlines: every send has a timeout. Message size limits are raised to `max_message_bytes`
(activations of large models are tens of MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import itertools
import json
import logging
import os
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from runtime.codec import error_frame, pack_frames, unpack_frames

SERVICE = "aiflow.Stage"
PUSH = f"/{SERVICE}/Push"
STREAM = f"/{SERVICE}/Stream"
HEALTH = f"/{SERVICE}/Health"
TOKEN_KEY = "x-aiflow-token"
# The controller's credential, beside the shared token: a server with a controller token takes the frames
# that steer it (plans, opens, emulation, probes) only from a call that carries it (runtime.worker).
CONTROLLER_KEY = "x-aiflow-controller"
# Whether the call being answered carries the controller's credential (True where the server sets none).
caller_is_controller: contextvars.ContextVar[bool] = contextvars.ContextVar("caller_is_controller", default=True)
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30     # gRPC's own default (4 MiB) is far below one activation
DEFAULT_TIMEOUT_S = 30.0
# A stream stays open while idle: the sender pings the connection every KEEPALIVE_MS when no data
# flows and gives it KEEPALIVE_TIMEOUT_MS to answer, so a connection that died silently (a NAT or a
# peer gone) ends the stream (UNAVAILABLE) and the next send opens a new one, instead of every send
# on it waiting out its deadline. Servers accept pings that often.
KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
RECONNECT_MIN_MS = 100                 # reconnect backoff of a channel whose peer went away: from this ...
RECONNECT_MAX_MS = 1_000               # ... to at most this

_SEQ = struct.Struct("<Q")

FrameHandler = Callable[[bytes | memoryview], Awaitable[list[bytes]]]
HealthHandler = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class Tls:
    """Mutual TLS: this end's certificate and key, and the CA that signs every peer's certificate. A server
    with it accepts only clients presenting a certificate of that CA; a sender checks the server's the same
    way (its certificate must name the address's host: an IP or DNS subject alternative name)."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_files(cls, ca: str | Path, cert: str | Path, key: str | Path) -> Tls:
        def read(path: str | Path, what: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"TLS {what} {path}: {exc.strerror}") from None

        return cls(read(ca, "CA"), read(cert, "certificate"), read(key, "key"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tls | None:
        """$AIFLOW_TLS_CA, $AIFLOW_TLS_CERT and $AIFLOW_TLS_KEY (paths), all three or none."""
        env = os.environ if env is None else env
        paths = [env.get(k) for k in ("AIFLOW_TLS_CA", "AIFLOW_TLS_CERT", "AIFLOW_TLS_KEY")]
        if not any(paths):
            return None
        if not all(paths):
            raise ValueError("TLS: set all of AIFLOW_TLS_CA, AIFLOW_TLS_CERT and AIFLOW_TLS_KEY, or none")
        return cls.from_files(*paths)  # type: ignore[arg-type]


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

    async def forget(self, address: str) -> None:  # noqa: B027 - a hook: most transports keep nothing per address
        """Drop what is kept for `address`, where a new process serves now."""


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_http_proxy", 0)]          # workers are reached directly, never through a proxy


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    # A channel whose peer died waits out a reconnect backoff (gRPC's grows to 120 s) and fails calls at
    # once meanwhile, even after a new process listens on the same port (a restarted worker can get a port
    # a dead one had): keep that wait short. And by default every channel of the process to an address
    # shares one connection and its backoff, so even a new channel (a new client, the next plan's) failed
    # at once: each channel connects on its own.
    return [*_options(max_message_bytes), ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_MIN_MS),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_MIN_MS), ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
            ("grpc.use_local_subchannel_pool", 1)]


def _server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [*_options(max_message_bytes), ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
            ("grpc.http2.max_ping_strikes", 0)]


class _FrameStream:
    """One open `Stream` call to an address. Frames go out through one writer task (a send that is
    cancelled must not cancel a write half done: grpc.aio would cancel the whole call); replies come
    back through one reader task and are matched to their senders by sequence number."""

    def __init__(self, address: str, call: Any) -> None:
        self.address = address
        self.call = call
        self.failed: TransportError | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._seq = itertools.count()
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks = (asyncio.create_task(self._write_loop()), asyncio.create_task(self._read_loop()))

    async def send(self, frame: bytes, timeout: float) -> bytes:
        if self.failed is not None:
            raise self.failed
        seq = next(self._seq)
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[seq] = reply
        self._outbox.put_nowait(b"".join((frame, _SEQ.pack(seq))))
        try:
            async with asyncio.timeout(timeout):
                return await reply
        except TimeoutError:
            raise TransportError(self.address, "DEADLINE_EXCEEDED", f"no reply within {timeout:g} s") from None
        finally:
            self._pending.pop(seq, None)

    async def _write_loop(self) -> None:
        try:
            # Nothing is written before the stage has accepted the call (its initial metadata, sent once the
            # token checked out): a write racing a refusal fails inside grpc-core, which then reports the
            # call as INTERNAL ("Internal error from Core") instead of the stage's UNAUTHENTICATED.
            await self.call.initial_metadata()
            if self.call.done():
                return                           # refused: the reader reports the stage's status
            while True:
                await self.call.write(await self._outbox.get())
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - AioRpcError, InvalidStateError, or grpc's RuntimeError on a call that ended
            self.call.cancel()                   # the reader sees the call end and says why

    async def _read_loop(self) -> None:
        error = TransportError(self.address, "UNAVAILABLE", "the stage ended the stream")
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                (seq,) = _SEQ.unpack_from(message, len(message) - _SEQ.size)
                reply = self._pending.pop(seq, None)
                if reply is not None and not reply.done():
                    reply.set_result(message[:-_SEQ.size])
        except grpc.aio.AioRpcError as exc:
            error = TransportError(self.address, exc.code().name, exc.details() or "")
        except (asyncio.InvalidStateError, struct.error) as exc:
            error = TransportError(self.address, "INTERNAL", str(exc) or type(exc).__name__)
        finally:
            self._fail(error if not self.failed else self.failed)
            # nothing more goes out on an ended call: the writer (waiting on the outbox) must not be left
            # pending, to be collected with the stream ("Task was destroyed but it is pending")
            self._tasks[0].cancel()

    def _fail(self, error: TransportError) -> None:
        self.failed = error
        pending, self._pending = self._pending, {}
        for reply in pending.values():
            if not reply.done():
                reply.set_exception(error)

    async def close(self) -> None:
        self._fail(TransportError(self.address, "CANCELLED", "the transport was closed"))
        self.call.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class GrpcTransport(Transport):
    """One channel per address, created on first use, and one `Stream` call on it that every frame
    to that address travels (reopened when it ends); calls carry the shared token."""

    def __init__(self, token: str | None = None, *, controller_token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, tls: Tls | None = None) -> None:
        self.token = token
        self.controller_token = controller_token
        self.tls = tls
        self.max_message_bytes = max_message_bytes
        self._channels: dict[str, tuple[grpc.aio.Channel, Any, Any]] = {}
        self._streams: dict[str, _FrameStream] = {}

    def _stubs(self, address: str) -> tuple[Any, Any]:
        entry = self._channels.get(address)
        if entry is None:
            options = _channel_options(self.max_message_bytes)
            if self.tls is None:
                channel = grpc.aio.insecure_channel(address, options=options)
            else:
                creds = grpc.ssl_channel_credentials(root_certificates=self.tls.ca, private_key=self.tls.key,
                                                     certificate_chain=self.tls.cert)
                channel = grpc.aio.secure_channel(address, creds, options=options)
            push = channel.unary_unary(PUSH, request_serializer=None, response_deserializer=None)
            health = channel.unary_unary(HEALTH, request_serializer=None, response_deserializer=None)
            entry = (channel, push, health)
            self._channels[address] = entry
        return entry[1], entry[2]

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        meta = ((TOKEN_KEY, self.token),) if self.token else ()
        return meta + (((CONTROLLER_KEY, self.controller_token),) if self.controller_token else ())

    def _stream(self, address: str) -> _FrameStream:
        stream = self._streams.get(address)
        if stream is None or stream.failed is not None:
            if stream is not None:
                stream.call.cancel()
            self._stubs(address)
            channel = self._channels[address][0]
            call = channel.stream_stream(STREAM, request_serializer=None,
                                         response_deserializer=None)(metadata=self._metadata())
            stream = self._streams[address] = _FrameStream(address, call)
        return stream

    async def send(self, address: str, frame: bytes, *, timeout: float = DEFAULT_TIMEOUT_S) -> list[bytes]:
        return unpack_frames(await self._stream(address).send(frame, timeout))

    async def send_unary(self, address: str, frame: bytes, *, timeout: float = DEFAULT_TIMEOUT_S) -> list[bytes]:
        """`send` as one unary `Push` call (no stream kept open)."""
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

    async def forget(self, address: str) -> None:
        """Drop the stream and channel kept for `address` (a process was started there: a channel to the
        one that had the port before may still be waiting out its reconnect backoff)."""
        stream = self._streams.pop(address, None)
        if stream is not None:
            await stream.close()
        entry = self._channels.pop(address, None)
        if entry is not None:
            await entry[0].close()

    async def close(self) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            await stream.close()
        channels, self._channels = self._channels, {}
        for channel, _, _ in channels.values():
            await channel.close()


def _settled(tasks: set[asyncio.Task]) -> Callable[[asyncio.Task], None]:
    """A done-callback: forget the task and take its exception (a write to a stream that ended; the
    caller learns of that from the call's status, not from here)."""
    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()
    return done


class FrameServer:
    """A gRPC server for one endpoint (a worker, or a client's reply address)."""

    def __init__(self, handler: FrameHandler, health: HealthHandler, *, token: str | None = None,
                 controller_token: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 tls: Tls | None = None) -> None:
        self._tls = tls
        self._handler = handler
        self._health = health
        self._token = token
        self._controller = controller_token
        self._max = max_message_bytes
        self._server: grpc.aio.Server | None = None
        self._streams: set[asyncio.Task] = set()      # open Stream calls, ended at stop
        self.address: str | None = None
        # when a call carrying the controller's credential (or, without one, any authenticated call) last
        # came: a daemon's local worker stops when its controller has been silent too long (runtime.worker)
        self.last_controller_call = time.monotonic()

    def _authorised(self, context: grpc.aio.ServicerContext) -> bool:
        """The call carries the shared token (if the server has one); notes whether it carries the
        controller's credential too (`caller_is_controller`, for the handler)."""
        meta = {key: value if isinstance(value, str) else value.decode("utf-8", "replace")
                for key, value in context.invocation_metadata() or ()}
        controller = self._controller is None or _same(meta.get(CONTROLLER_KEY), self._controller)
        caller_is_controller.set(controller)
        authorised = not self._token or _same(meta.get(TOKEN_KEY), self._token)
        if authorised and controller:
            self.last_controller_call = time.monotonic()
        return authorised

    async def _push(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if not self._authorised(context):
            _refused(context, "Push")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-aiflow-token")
        return pack_frames(await self._handler(request))

    async def _stream_call(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        if not self._authorised(context):
            _refused(context, "Stream")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-aiflow-token")
        await context.send_initial_metadata(())      # accepted: the sender starts writing (see _write_loop)
        # In a task of its own, so that stop() can end the stream (grpc's task around a handler
        # ignores a cancel); the call then ends with OK and the sender reopens or learns it is gone.
        serving = asyncio.create_task(self._answer_stream(requests, context))
        self._streams.add(serving)
        try:
            await serving
        except asyncio.CancelledError:
            if not serving.cancelled():
                raise                                        # the call itself was cancelled
        finally:
            self._streams.discard(serving)

    async def _answer_stream(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        """Answer every frame of a stream as it comes, each in its own task (a probe's answer waits for
        its emulated arrival and must not hold up the frames behind it)."""
        write = asyncio.Lock()
        answers: set[asyncio.Task] = set()

        async def answer(message: bytes) -> None:
            cut = len(message) - _SEQ.size
            try:
                frames = await self._handler(memoryview(message)[:cut])                # the frame, not copied
            except Exception as exc:  # noqa: BLE001 - the sender gets an answer, not a wait for its deadline
                frames = [error_frame(f"{type(exc).__name__}: {exc}", code="internal")]
            bundle = pack_frames(frames)
            async with write:
                await context.write(b"".join((bundle, message[cut:])))

        try:
            async for message in requests:
                if len(message) < _SEQ.size:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a stream message ends in a sequence number")
                task = asyncio.create_task(answer(message))
                answers.add(task)
                task.add_done_callback(_settled(answers))
            await asyncio.gather(*answers, return_exceptions=True)
        finally:
            for task in list(answers):
                task.cancel()

    async def _health_call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if not self._authorised(context):
            _refused(context, "Health")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-aiflow-token")
        return json.dumps(self._health()).encode("utf-8")

    async def start(self, listen: str) -> str:
        """Bind `host:port` (port 0: any free port) and serve; returns the bound `host:port`."""
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"listen address {listen!r}: expected HOST:PORT")
        server = grpc.aio.server(options=_server_options(self._max))
        handlers = {
            "Push": grpc.unary_unary_rpc_method_handler(self._push),
            "Stream": grpc.stream_stream_rpc_method_handler(self._stream_call),
            "Health": grpc.unary_unary_rpc_method_handler(self._health_call),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if self._tls is None:
            bound = server.add_insecure_port(listen)
        else:
            creds = grpc.ssl_server_credentials([(self._tls.key, self._tls.cert)], root_certificates=self._tls.ca,
                                                require_client_auth=True)
            bound = server.add_secure_port(listen, creds)
        if bound == 0:
            raise OSError(f"cannot listen on {listen}")
        await server.start()
        self._server = server
        self.address = f"{host}:{bound}"
        return self.address

    async def stop(self, grace: float | None = 0.5) -> None:
        for task in list(self._streams):      # open streams would hold the grace period to its end
            task.cancel()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _refused(context: grpc.aio.ServicerContext, method: str) -> None:
    """An unauthenticated call is logged with where it came from, never with what it presented."""
    logging.getLogger("aiflow.transport").warning("refused an unauthenticated %s call from %s", method,
                                                  context.peer())
