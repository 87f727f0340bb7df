"""A worker with a controller credential takes the frames that steer it (plans, opens, emulation, probes)
only from a caller that presents it: a peer holding just the shared token can send activations, but can
neither push a plan that names other addresses nor open a request with a reply address of its choosing."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from profiler.generate import greedy_generate
from runtime.client import Client, RequestFailed
from runtime.codec import Frame, decode_frame, encode_frame
from runtime.transport import GrpcTransport, TransportError
from runtime.worker import CONTROL_KINDS
from tests.runtime.conftest import TOKEN, adapter, running_workers, stage_plan

CONTROLLER = "controller-secret"


def test_only_the_controller_steers_a_worker(folders) -> None:
    ad = adapter(folders, "gpt2")
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    expect = greedy_generate(ad, prompt, new_tokens=6).tokens

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B"), controller_token=CONTROLLER) as (workers, addresses):
            sp = stage_plan(ad, ["A", "B", "B", "A"], addresses)
            # the controller: plans, opens and the request's activations all pass
            async with Client(sp, token=TOKEN, controller_token=CONTROLLER) as client:
                assert torch.equal((await client.generate(prompt, max_new_tokens=6)).tokens, expect)

                peer = GrpcTransport(TOKEN)                    # holds the shared token, not the controller's
                # a plan that would send B's output to an address of the peer's choosing
                hostile = dataclasses.replace(sp, version=7, nodes=tuple(
                    dataclasses.replace(n, address="127.0.0.1:1") if n.name == "A" else n for n in sp.nodes))
                for kind, frame in [
                    ("plan", Frame("plan", plan_version=7, meta={"plan": hostile.to_dict()})),
                    ("open", Frame("open", "evil", 1, meta={"reply": "127.0.0.1:1", "batch": 1})),
                    ("forget", Frame("forget", plan_version=1)),
                    ("emulate", Frame("emulate", meta={})),
                    ("measure", Frame("measure", meta={"to": "A", "address": "127.0.0.1:1", "sizes": [64]})),
                    ("report", Frame("report")),
                ]:
                    reply = decode_frame((await peer.send(addresses["B"], encode_frame(frame)))[0])
                    assert reply.kind == "error" and reply.meta["code"] == "forbidden", (kind, reply.meta)
                    assert kind in CONTROL_KINDS
                assert set(workers["B"].plans) == {1} and "evil" not in workers["B"].requests
                # activations from a peer are still taken (workers send each other data with the shared token)
                reply = decode_frame((await peer.send(addresses["B"], encode_frame(
                    Frame("data", "nobody", 1, "prefill", 1, 0, 0, torch.zeros(1, 5, 32)))))[0])
                assert reply.meta["code"] == "unknown-request"     # refused for its id, not for who sent it
                await peer.close()

                # and requests keep coming out right
                assert torch.equal((await client.generate(prompt, max_new_tokens=6)).tokens, expect)

            # a client without the controller's credential cannot even start
            with pytest.raises(RequestFailed, match="controller only"):
                async with Client(sp, token=TOKEN) as stranger:
                    await stranger.generate(prompt, max_new_tokens=2)

    asyncio.run(scenario())


def test_a_wrong_token_is_always_refused_as_unauthenticated(folders) -> None:
    """A caller with a wrong token gets UNAUTHENTICATED, every time: before, a frame written while the worker
    refused the stream made grpc-core report the call as INTERNAL about half the time with several frames in
    flight (the sender now writes only once the worker accepted the call)."""
    ad = adapter(folders, "gpt2")
    prompt = torch.tensor([[3, 1, 4, 1, 5]])

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B"), controller_token=CONTROLLER) as (_workers, addresses):
            sp = stage_plan(ad, ["A", "B", "B", "A"], addresses)
            for _ in range(40):                              # frames racing the refusal on one stream
                stranger = GrpcTransport("not-the-token")
                try:
                    results = await asyncio.gather(*(stranger.send(addresses["B"], encode_frame(Frame("report")),
                                                                   timeout=10.0) for _ in range(4)),
                                                   return_exceptions=True)
                finally:
                    await stranger.close()
                assert all(isinstance(r, TransportError) and r.code == "UNAUTHENTICATED" for r in results), results
            for _ in range(5):                               # and through the client, as one clear error
                with pytest.raises(RequestFailed, match="UNAUTHENTICATED"):
                    async with Client(sp, token="not-the-token", controller_token=CONTROLLER) as client:
                        await client.generate(prompt, max_new_tokens=2)

    asyncio.run(scenario())
