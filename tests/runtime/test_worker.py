"""A worker answers bad frames, wrong shapes, unknown request ids and bad tokens with an error and keeps
serving; per-request state is freed on completion, cancellation and timeout."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from runtime.client import Client
from runtime.codec import Frame, decode_frame, encode_frame
from runtime.transport import GrpcTransport, TransportError
from runtime.worker import Worker
from tests.runtime.conftest import TOKEN, adapter, running_workers, stage_plan

ASSIGNMENT = ["A", "B", "B", "A"]


def error_of(replies: list[bytes]) -> tuple[str, str]:
    frames = [decode_frame(r) for r in replies]
    assert len(frames) == 1 and frames[0].kind == "error", [f.kind for f in frames]
    return frames[0].meta["code"], frames[0].meta["error"]


def test_bad_frames_get_errors_while_requests_in_flight_finish(folders) -> None:
    ad = adapter(folders, "gpt2")
    prompt = torch.tensor([[3, 1, 4, 1, 5]])

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B")) as (workers, addresses):
            sp = stage_plan(ad, ASSIGNMENT, addresses)
            b = addresses["B"]
            async with Client(sp, token=TOKEN) as client:
                expect = (await client.generate(prompt, max_new_tokens=8)).tokens
                in_flight = asyncio.create_task(client.generate(prompt, max_new_tokens=8))
                t = GrpcTransport(TOKEN)
                # open a request of our own on B so that shape errors are about shapes, not ids
                opened = Frame("open", "mine", 1, meta={"reply": client.reply_address, "batch": 1,
                                                        "max_new_tokens": 2})
                assert decode_frame((await t.send(b, encode_frame(opened)))[0]).kind == "ack"
                hidden = torch.zeros(1, 5, 32)
                good = encode_frame(Frame("data", "mine", 1, "prefill", 1, 0, 0, hidden))

                # header and payload disagree: four payload bytes missing
                code, msg = error_of(await t.send(b, good[:-4]))
                assert code == "bad-frame" and "payload" in msg
                # not a frame at all
                code, _ = error_of(await t.send(b, b"\x00garbage"))
                assert code == "bad-frame"
                # wrong hidden size for block 0
                code, msg = error_of(await t.send(b, encode_frame(
                    Frame("data", "mine", 1, "prefill", 1, 0, 0, torch.zeros(1, 5, 31)))))
                assert code == "wrong-shape" and "31" in msg
                # token ids where a hidden state belongs; a decode step with two tokens; a wrong batch
                for bad in (torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 2, 32), torch.zeros(2, 5, 32)):
                    phase = "decode" if bad.shape == (1, 2, 32) else "prefill"
                    code, _ = error_of(await t.send(b, encode_frame(Frame("data", "mine", 1, phase, 1, 0, 0, bad))))
                    assert code == "wrong-shape"
                # a unit that B does not run, a phase that does not exist, a plan version never applied
                code, _ = error_of(await t.send(b, encode_frame(Frame("data", "mine", 1, "prefill", 3, 0, 0, hidden))))
                assert code == "wrong-unit"
                code, _ = error_of(await t.send(b, encode_frame(Frame("data", "mine", 1, "nope", 1, 0, 0, hidden))))
                assert code == "wrong-unit"
                code, _ = error_of(await t.send(b, encode_frame(Frame("open", "x", 99, meta={"reply": "h:1"}))))
                assert code == "unknown-plan"
                # an unknown request id
                code, msg = error_of(await t.send(b, encode_frame(Frame("data", "nobody", 1, "prefill", 1, 0, 0,
                                                                        hidden))))
                assert code == "unknown-request" and "nobody" in msg
                code, _ = error_of(await t.send(b, encode_frame(Frame("close", "nobody", 1))))
                assert code == "unknown-request"
                await t.close()

                # strangers: a wrong token and no token are refused before any frame is read
                for stranger in (GrpcTransport("wrong"), GrpcTransport(None)):
                    with pytest.raises(TransportError) as err:
                        await stranger.send(b, good)
                    assert err.value.code == "UNAUTHENTICATED"
                    with pytest.raises(TransportError):
                        await stranger.health(b)
                    await stranger.close()

                # the request in flight and a new one still come out right
                assert torch.equal((await in_flight).tokens, expect)
                assert torch.equal((await client.generate(prompt, max_new_tokens=8)).tokens, expect)
            health = await GrpcTransport(TOKEN).health(b)
            assert health["ok"] and health["errors"] >= 10
            assert "mine" in workers["B"].requests            # opened by hand, never closed: still held

    asyncio.run(scenario())


def test_state_is_freed_on_cancel_and_timeout(folders) -> None:
    ad = adapter(folders, "gpt2")

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B"), state_timeout_s=0.3) as (workers, addresses):
            sp = stage_plan(ad, ASSIGNMENT, addresses)
            async with Client(sp, token=TOKEN, timeout_s=0.3) as client:
                t = GrpcTransport(TOKEN)
                for rid in ("r1", "r2"):
                    f = Frame("open", rid, 1, meta={"reply": client.reply_address, "timeout_s": 0.3})
                    await t.send(addresses["A"], encode_frame(f))
                assert set(workers["A"].requests) == {"r1", "r2"}
                ack = decode_frame((await t.send(addresses["A"], encode_frame(Frame("cancel", "r1", 1))))[0])
                assert ack.kind == "ack" and ack.meta["known"] is True
                assert set(workers["A"].requests) == {"r2"}
                deadline = time.perf_counter() + 5
                while workers["A"].requests and time.perf_counter() < deadline:
                    await asyncio.sleep(0.05)
                assert workers["A"].requests == {}                   # r2 timed out
                assert workers["A"].freed == 2
                await t.close()
                # the worker still serves
                out = await client.forward(torch.tensor([[1, 2, 3]]))
                assert out.output.shape == (1, 97)

    asyncio.run(scenario())


def test_plans_that_do_not_fit_the_model_are_refused(folders) -> None:
    ad = adapter(folders, "gpt2")

    async def scenario() -> None:
        async with running_workers(ad, ("A",)) as (workers, addresses):
            t = GrpcTransport(TOKEN)
            good = stage_plan(ad, ["A"] * 4, addresses)
            short = good.to_dict() | {"assignment": ["A"] * 3}
            code, msg = error_of(await t.send(addresses["A"], encode_frame(Frame("plan", meta={"plan": short}))))
            assert code == "bad-plan" and "3 units" in msg
            code, _ = error_of(await t.send(addresses["A"], encode_frame(Frame("plan", meta={"plan": {"x": 1}}))))
            assert code == "bad-plan"
            await t.close()
            assert workers["A"].plans == {}

    asyncio.run(scenario())


def test_a_worker_needs_a_model() -> None:
    with pytest.raises(ValueError):
        Worker("A")
