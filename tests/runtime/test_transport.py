"""The frame transport: one gRPC stream per destination carries every frame, replies matched by sequence."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.codec import Frame, ack_frame, decode_frame, encode_frame
from runtime.transport import FrameServer, GrpcTransport, TransportError

TOKEN = "transport-test"


def frame(rid: str, step: int = 0) -> bytes:
    return encode_frame(Frame("data", rid, 1, "decode", 1, 0, step))


async def serve(delays: dict[str, float]) -> FrameServer:
    """A server that acks each frame after `delays[request id]` seconds (0 when not named)."""
    async def handler(data: bytes | memoryview) -> list[bytes]:
        f = decode_frame(data)
        await asyncio.sleep(delays.get(f.request_id, 0.0))
        return [ack_frame(f.request_id, step=f.step)]

    server = FrameServer(handler, lambda: {"ok": True}, token=TOKEN)
    await server.start("127.0.0.1:0")
    return server


def test_concurrent_sends_on_one_stream_get_their_own_replies_in_any_order() -> None:
    async def scenario() -> None:
        server = await serve({"slow": 0.3})
        t = GrpcTransport(TOKEN)
        try:
            slow = asyncio.create_task(t.send(server.address, frame("slow", 7)))
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            fast = [decode_frame(r) for r in await t.send(server.address, frame("fast", 3))]
            # the slow frame's answer does not hold up the one behind it on the same stream
            assert time.perf_counter() - t0 < 0.25
            assert fast[0].request_id == "fast" and fast[0].meta["step"] == 3
            many = await asyncio.gather(*(t.send(server.address, frame(f"r{i}", i)) for i in range(50)))
            assert [decode_frame(r[0]).meta["step"] for r in many] == list(range(50))
            (s,) = [decode_frame(r) for r in await slow]
            assert s.request_id == "slow" and s.meta["step"] == 7
            assert len(t._streams) == 1                      # all of it on one stream
        finally:
            await t.close()
            await server.stop()

    asyncio.run(scenario())


def test_a_timeout_or_a_cancelled_send_leaves_the_stream_working() -> None:
    async def scenario() -> None:
        server = await serve({"stuck": 5.0})
        t = GrpcTransport(TOKEN)
        try:
            with pytest.raises(TransportError) as err:
                await t.send(server.address, frame("stuck"), timeout=0.1)
            assert err.value.code == "DEADLINE_EXCEEDED"
            waiting = asyncio.create_task(t.send(server.address, frame("stuck")))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            (ok,) = await t.send(server.address, frame("after"))
            assert decode_frame(ok).request_id == "after"
        finally:
            await t.close()
            await server.stop()

    asyncio.run(scenario())


def test_a_stopped_server_fails_pending_sends_and_stops_at_once() -> None:
    async def scenario() -> None:
        server = await serve({"stuck": 30.0})
        address = server.address
        t = GrpcTransport(TOKEN)
        try:
            await t.send(address, frame("warm"))
            pending = asyncio.create_task(t.send(address, frame("stuck")))
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            await server.stop(grace=5.0)
            assert time.perf_counter() - t0 < 2.0           # the open stream does not hold the grace period
            with pytest.raises(TransportError):
                await asyncio.wait_for(pending, 5.0)
            with pytest.raises(TransportError):             # nobody listens there any more
                await t.send(address, frame("later"), timeout=2.0)
        finally:
            await t.close()

    asyncio.run(scenario())


def test_the_unary_push_still_answers() -> None:
    async def scenario() -> None:
        server = await serve({})
        t = GrpcTransport(TOKEN)
        try:
            (ok,) = await t.send_unary(server.address, frame("unary"))
            assert decode_frame(ok).request_id == "unary"
            with pytest.raises(TransportError) as err:
                await GrpcTransport("wrong").send_unary(server.address, frame("x"))
            assert err.value.code == "UNAUTHENTICATED"
        finally:
            await t.close()
            await server.stop()

    asyncio.run(scenario())


def test_a_handler_that_raises_answers_with_an_error_frame_at_once() -> None:
    async def scenario() -> None:
        async def handler(data: bytes | memoryview) -> list[bytes]:
            raise ValueError("broken handler")

        server = FrameServer(handler, lambda: {"ok": True}, token=TOKEN)
        await server.start("127.0.0.1:0")
        t = GrpcTransport(TOKEN)
        try:
            t0 = time.perf_counter()
            (reply,) = await t.send(server.address, frame("x"), timeout=10.0)
            err = decode_frame(reply)
            assert err.kind == "error" and err.meta["code"] == "internal" and "broken handler" in err.meta["error"]
            assert time.perf_counter() - t0 < 2.0
        finally:
            await t.close()
            await server.stop()

    asyncio.run(scenario())


def test_an_idle_stream_survives_keepalive_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime.transport as transport
    monkeypatch.setattr(transport, "KEEPALIVE_MS", 200)
    monkeypatch.setattr(transport, "KEEPALIVE_TIMEOUT_MS", 200)

    async def scenario() -> None:
        server = await serve({})
        t = GrpcTransport(TOKEN)
        try:
            await t.send(server.address, frame("a"))
            stream = t._streams[server.address]
            await asyncio.sleep(2.0)                         # pings every 0.2 s, no data: not a GOAWAY
            (ok,) = await t.send(server.address, frame("b"))
            assert decode_frame(ok).request_id == "b" and t._streams[server.address] is stream
        finally:
            await t.close()
            await server.stop()

    asyncio.run(scenario())


def test_a_stream_to_a_stage_that_went_away_leaves_no_task_behind() -> None:
    """The stream to a stage that stopped (a killed worker) ends with both its tasks finished, so replacing it
    leaves no writer waiting for ever ("Task was destroyed but it is pending" once it is collected)."""
    import gc

    async def scenario() -> list[str]:
        problems: list[str] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: problems.append(ctx["message"]))
        server = await serve({})
        address = server.address
        t = GrpcTransport(TOKEN)
        try:
            await t.send(address, frame("a"))
            old = t._streams[address]
            await server.stop()
            with pytest.raises(TransportError):
                await t.send(address, frame("b"), timeout=5.0)
            async with asyncio.timeout(5.0):
                while not all(task.done() for task in old._tasks):
                    await asyncio.sleep(0.01)
            with pytest.raises(TransportError):
                await t.send(address, frame("c"), timeout=5.0)     # a new stream, refused again
            assert t._streams[address] is not old
            del old
            gc.collect()
            await asyncio.sleep(0.05)
        finally:
            await t.close()
        return problems

    problems = asyncio.run(scenario())
    gc.collect()
    assert not problems, problems


def test_a_process_started_on_a_dead_ones_port_is_reached_at_once_or_soon() -> None:
    """A restarted worker or verifier can get the port a dead one had. The channel kept for that address
    may be waiting out its reconnect backoff: `forget` drops it (the next call reaches the new server at
    once), and without it the backoff is capped (RECONNECT_MAX_MS), not gRPC's two minutes. A new
    transport is not held back by the old one's backoff (gRPC shares one connection per address across a
    process's channels unless told not to: a CI run's daemon could not apply its first plan so)."""
    async def main() -> tuple[dict, dict, float]:
        t = GrpcTransport(TOKEN)
        first = FrameServer(lambda f: [], lambda: {"ok": True, "which": 1}, token=TOKEN)
        address = await first.start("127.0.0.1:0")
        try:
            assert (await t.health(address))["which"] == 1
            await first.stop(0)
            for _ in range(3):                                  # the channel finds the peer gone
                with pytest.raises(TransportError):
                    await t.health(address, timeout=1.0)
            second = FrameServer(lambda f: [], lambda: {"ok": True, "which": 2}, token=TOKEN)
            await second.start(address)
            try:
                fresh = GrpcTransport(TOKEN)
                by_a_new_transport = await fresh.health(address, timeout=1.0)
                await fresh.close()
                await t.forget(address)
                at_once = await t.health(address, timeout=1.0)
                # the same without forget, on a second transport whose channel saw the port die too
                u = GrpcTransport(TOKEN)
                await second.stop(0)
                for _ in range(3):
                    with pytest.raises(TransportError):
                        await u.health(address, timeout=1.0)
                third = FrameServer(lambda f: [], lambda: {"ok": True, "which": 3}, token=TOKEN)
                await third.start(address)
                t0 = time.monotonic()
                while True:
                    try:
                        await u.health(address, timeout=1.0)
                        break
                    except TransportError:
                        assert time.monotonic() - t0 < 5.0, "the channel did not reconnect"
                        await asyncio.sleep(0.05)
                waited = time.monotonic() - t0
                await third.stop(0)
                await u.close()
                return by_a_new_transport, at_once, waited
            finally:
                await second.stop(0)
        finally:
            await t.close()

    by_a_new_transport, at_once, waited = asyncio.run(main())
    assert by_a_new_transport["which"] == 2 and at_once["which"] == 2
    assert waited < 2.0, waited
