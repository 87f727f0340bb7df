"""A worker's bounds on what one peer may ask of it: finite, capped idle deadlines, open requests per client,
frames per request, and activations that hold NaN or infinities. Each is refused with an error code and the
worker keeps serving."""

from __future__ import annotations

import asyncio
import math

import torch

from runtime import worker as worker_module
from runtime.client import Client
from runtime.codec import Frame, decode_frame, encode_frame
from runtime.transport import GrpcTransport
from runtime.validate import frame_budget
from tests.runtime.conftest import TOKEN, adapter, running_workers, stage_plan

ASSIGNMENT = ["A", "B", "B", "A"]


def reply_of(replies: list[bytes]) -> Frame:
    frames = [decode_frame(r) for r in replies]
    assert len(frames) == 1
    return frames[0]


def test_limits_are_refused_and_the_worker_keeps_serving(folders, monkeypatch) -> None:
    ad = adapter(folders, "gpt2")
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    monkeypatch.setattr(worker_module, "MAX_OPEN_PER_CLIENT", 3)

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B")) as (workers, addresses):
            sp = stage_plan(ad, ASSIGNMENT, addresses)
            b = addresses["B"]
            async with Client(sp, token=TOKEN) as client:
                expect = (await client.generate(prompt, max_new_tokens=6)).tokens
                t = GrpcTransport(TOKEN)

                async def open_(rid: str, **meta: object) -> Frame:
                    meta = {"reply": "127.0.0.1:9", "batch": 1, "max_new_tokens": 2, **meta}
                    return reply_of(await t.send(b, encode_frame(Frame("open", rid, 1, meta=meta))))

                # deadlines: negative, zero, over the cap or not a number are refused
                for bad in (-1.0, 0.0, worker_module.MAX_IDLE_S * 2, "10"):
                    f = await open_(f"t{bad}", timeout_s=bad)
                    assert f.kind == "error" and "timeout_s" in f.meta["error"], f.meta
                # an infinite or NaN deadline cannot travel in a header at all (the codec refuses it): a bad frame
                for lie in (b"Infinity", b"1e999", b"NaN"):
                    good = encode_frame(Frame("open", "tinf", 1, meta={"reply": "h:1", "timeout_s": 12345.0}))
                    hostile = good.replace(b"12345.0", lie.ljust(7))
                    assert reply_of(await t.send(b, hostile)).meta["code"] == "bad-frame"
                assert "tinf" not in workers["B"].requests
                assert (await open_("big", max_new_tokens=worker_module.MAX_NEW_TOKENS + 1)).meta["code"] == "too-large"

                # open requests per client: the fourth from one reply address is refused, another client's is not
                for i in range(3):
                    assert (await open_(f"c{i}")).kind == "ack"
                f = await open_("c3")
                assert f.kind == "error" and f.meta["code"] == "too-many-requests"
                assert (await open_("other", reply="127.0.0.1:10")).kind == "ack"

                # an activation with NaN in it
                hidden = torch.zeros(1, 5, 32)
                hidden[0, 2, 7] = math.nan
                f = reply_of(await t.send(b, encode_frame(Frame("data", "c0", 1, "prefill", 1, 0, 0, hidden))))
                assert f.meta["code"] == "not-finite" and "NaN" in f.meta["error"]
                hidden[0, 2, 7] = math.inf
                f = reply_of(await t.send(b, encode_frame(Frame("data", "c0", 1, "prefill", 1, 0, 0, hidden))))
                assert f.meta["code"] == "not-finite"

                # frames per request: B runs one prefill and one decode segment; with max_new_tokens 2 that is
                # 1 + 2 data frames (+1 edge) at most. A peer replaying accepted frames (here decode steps held
                # back by a 30 s emulated delay, so none computes) is cut off and the request freed.
                budget = frame_budget(sp, "B", 2)
                assert budget == 4
                step = encode_frame(Frame("data", "c0", 1, "decode", 1, 5, 1, torch.zeros(1, 1, 32),
                                          meta={"delay_s": 30.0}))
                kinds = [reply_of(await t.send(b, step)).kind for _ in range(budget)]
                assert kinds == ["ack"] * budget
                f = reply_of(await t.send(b, step))
                assert f.meta["code"] == "too-many-frames"
                assert "c0" not in workers["B"].requests
                await t.close()

                # real requests still come out right
                assert torch.equal((await client.generate(prompt, max_new_tokens=6)).tokens, expect)

    asyncio.run(scenario())


def test_the_frame_budget_covers_a_real_generation(folders) -> None:
    """The budget must never refuse an honest request: a generation to its last token on a plan that
    crosses nodes at every unit (A,B,A,B) runs through, and each worker stays within its budget."""
    ad = adapter(folders, "gpt2")

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B")) as (workers, addresses):
            sp = stage_plan(ad, ["A", "B", "A", "B"], addresses)
            async with Client(sp, token=TOKEN) as client:
                res = await client.generate(torch.tensor([[2, 7, 1]]), max_new_tokens=12)
                assert res.tokens.shape == (1, 12)
            assert all(w.errors == 0 for w in workers.values())

    asyncio.run(scenario())
