"""Lanes: the fast path of a small frame from one stage actor to another (runtime.ray_backend).

A direct actor call costs about 1.1-1.6 ms on this machine whatever aiflow does around it (Ray's task
submission, its gRPC between core workers, the callee's thread hops); a round trip over Ray's own
shared-memory channels (`ray.experimental.channel`, the transport of Ray's compiled graphs) between two
Ray nodes costs about 0.5 ms. A lane is a pair of such channels between a sending actor and a receiving
actor, opened with the first small frame from one to the other and kept:

- `out` (written by the sender, read by the receiver) carries `seq + frame`; `back` (the reverse)
  carries `seq + pack_frames(replies)`. Both are Ray objects owned by their writers; between Ray nodes
  Ray pushes each value from the writer's object store to the reader's (raylet to raylet), never
  through the driver.
- Each end has one thread blocked reading its channel; what it reads is handed to the actor's event
  loop, so frames are handled concurrently, as on a gRPC stream, and replies are matched by `seq`.
- A lane watches its receiver with one pending actor call (`watch`), which fails when the actor dies:
  every send waiting on the lane then fails UNAVAILABLE, as an actor call would.

Frames of `BY_REF_BYTES` or more, and anything the driver sends (it is no actor and cannot read a
channel), still go by actor call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import ray
import ray.exceptions
from ray.experimental.channel.shared_memory_channel import Channel

from runtime.codec import pack_frames, unpack_frames

LANE_BYTES = 256 * 1024        # a channel's buffer: every frame under BY_REF_BYTES fits, so none resizes
READ_WAIT_S = 1.0              # a reader thread looks up this often to see whether its lane was closed
WRITE_WAIT_S = 5.0             # a write still blocked after this long means the reader is gone
_SEQ = struct.Struct("<Q")

log = logging.getLogger("aiflow.ray")


class LaneBroken(Exception):
    """The lane cannot carry frames any more (its peer is gone or it was closed)."""


def open_channel(reader: Any, reader_node: str) -> Channel:
    """A channel this actor writes and `reader` (on Ray node `reader_node`) reads. Blocking: call it off
    the event loop (Ray asks the reader's actor to allocate its end when it is on another node)."""
    me = ray.get_runtime_context().current_actor
    return Channel(me, [(reader, reader_node)], LANE_BYTES)


def _write(channel: Channel, data: bytes) -> None:
    try:
        channel.write(data, timeout=WRITE_WAIT_S)
    except ray.exceptions.RayChannelError as exc:
        raise LaneBroken(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def _read_loop(channel: Channel, stop: threading.Event, deliver: Callable[[bytes], None]) -> None:
    """Read `channel` until `stop` is set or the channel fails; each value goes to `deliver`."""
    while not stop.is_set():
        try:
            value = channel.read(timeout=READ_WAIT_S)
        except ray.exceptions.RayChannelTimeoutError:
            continue
        except ray.exceptions.RayChannelError:
            break
        deliver(value)


def _start_reader(name: str, channel: Channel, stop: threading.Event, deliver: Callable[[bytes], None]) -> None:
    threading.Thread(target=_read_loop, args=(channel, stop, deliver), name=name, daemon=True).start()


class LaneServer:
    """The receiving end of one lane: frames read from `inbound` are answered by `handler` on the actor's
    event loop, and each answer written to `outbound`."""

    def __init__(self, inbound: Channel, outbound: Channel,
                 handler: Callable[[bytes], Awaitable[list[bytes]]]) -> None:
        self.inbound = inbound
        self.outbound = outbound
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self.stop = threading.Event()
        self.closed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        _start_reader("aiflow-lane-in", inbound, self.stop, self._deliver)

    def _deliver(self, value: bytes) -> None:
        self.loop.call_soon_threadsafe(self._spawn, value)

    def _spawn(self, value: bytes) -> None:
        task = self.loop.create_task(self._answer(value))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, value: bytes) -> None:
        seq, frame = value[:_SEQ.size], value[_SEQ.size:]
        replies = await self.handler(frame)
        if self.stop.is_set():
            return
        try:
            # on the loop: the sender's reader is always waiting, so the write only copies into shared memory
            _write(self.outbound, seq + pack_frames(replies))
        except LaneBroken as exc:
            log.info("a lane's sender is gone (%s); closing it", exc)
            self.close()

    def close(self) -> None:
        self.stop.set()
        self.closed.set()


class Lane:
    """The sending end of one lane to one receiver actor."""

    def __init__(self, address: str, out: Channel, back: Channel, receiver: Any, key: int) -> None:
        self.address = address
        self.out = out
        self.back = back
        self.receiver = receiver
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.stop = threading.Event()
        self.failed: BaseException | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._seq = itertools.count()
        _start_reader("aiflow-lane-back", back, self.stop, self._deliver)
        self._watcher = asyncio.ensure_future(self._watch(receiver.watch_lane.remote(key)))

    async def _watch(self, ref: Any) -> None:
        """`ref` is a call the receiver answers only when the lane closes; an error means it died."""
        try:
            await ref
        except ray.exceptions.RayError as exc:
            self.fail(exc)

    def _deliver(self, value: bytes) -> None:
        self.loop.call_soon_threadsafe(self._resolve, value)

    def _resolve(self, value: bytes) -> None:
        (seq,) = _SEQ.unpack_from(value, 0)
        reply = self._pending.pop(seq, None)
        if reply is not None and not reply.done():
            reply.set_result(value[_SEQ.size:])

    async def send(self, frame: bytes, timeout: float) -> list[bytes]:
        """Replies to `frame`; LaneBroken when the lane failed, TimeoutError after `timeout`."""
        if self.failed is not None:
            raise LaneBroken(str(self.failed))
        seq = next(self._seq)
        reply: asyncio.Future[bytes] = self.loop.create_future()
        self._pending[seq] = reply
        try:
            _write(self.out, _SEQ.pack(seq) + frame)
            async with asyncio.timeout(timeout):
                return unpack_frames(await reply)
        finally:
            self._pending.pop(seq, None)

    def fail(self, exc: BaseException) -> None:
        """Every waiting send fails with LaneBroken; so does every later one."""
        self.failed = exc
        pending, self._pending = self._pending, {}
        for reply in pending.values():
            if not reply.done():
                reply.set_exception(LaneBroken(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        self.close()

    def close(self) -> None:
        """Stop this end; a live receiver is told to stop its end too (its reader thread, its watch)."""
        if self.failed is None and not self.stop.is_set():
            self.receiver.close_lane.remote(self.key)
        self.stop.set()
        self._watcher.cancel()


class LaneHost:
    """The lanes an actor receives frames on (a StageHost's, a ReplyInbox's), answered by `handler`."""

    def __init__(self, handler: Callable[[bytes], Awaitable[list[bytes]]]) -> None:
        self.handler = handler
        self.servers: dict[int, LaneServer] = {}
        self._keys = itertools.count()

    async def open(self, inbound: Channel, sender: Any, sender_node: str) -> tuple[int, Channel]:
        """Serve `inbound` (from `sender`); return the lane's key and the channel replies go back on."""
        outbound = await asyncio.to_thread(open_channel, sender, sender_node)
        key = next(self._keys)
        self.servers[key] = LaneServer(inbound, outbound, self.handler)
        return key, outbound

    def close_lane(self, key: int) -> None:
        server = self.servers.get(key)
        if server is not None:
            server.close()

    async def watch(self, key: int) -> None:
        """Answered when lane `key` closes; never, while it serves (its sender learns of a death by it)."""
        server = self.servers.get(key)
        if server is not None:
            await server.closed.wait()
            self.servers.pop(key, None)

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


async def connect(address: str, receiver: Any) -> Lane:
    """Open a lane from this actor to `receiver` (a StageHost or ReplyInbox handle), three actor calls."""
    context = ray.get_runtime_context()
    me, my_node = context.current_actor, context.get_node_id()
    peer_node = await receiver.node_id.remote()
    out = await asyncio.to_thread(open_channel, receiver, peer_node)
    key, back = await receiver.open_lane.remote(out, me, my_node)
    return Lane(address, out, back, receiver, key)
