"""Cooperative decoding across the network: the draft proposes on the source, the target verifies on
another node (docs/runtime.md, "Cooperative decoding").

The verifier is a process serving the target model (`python -m runtime.cooperative --name NODE
--listen HOST:PORT --model MODEL`, started like a worker by runtime.local). Per request:

1. `open` (source -> verifier): the target's input at its cut: the image (no encoder unit on the
   source), the activation after the source's encoder units, or the whole encoder output; a causal
   LM's prompt ids. The verifier runs the rest of the encoder and keeps the encoder output (or the
   prompt) for the request: the encoder output reaches the target once, never again.
2. per round, `data` (source -> verifier): the draft's proposals, int64 [n]. The verifier runs one
   decoder pass over them, applies profiler.speculative.accept, extends its own copy of the output
   and answers a `result` frame, int64 [2]: (tokens kept of the proposals, the target's next token).
3. `close`: frees the request.

The source runs the draft (its encoder and its proposals) in this process. Under emulation every
message is held for its link's emulated time (runtime.links.EmulatedNetwork, dilation K included) and
every compute step is stretched to K x slowdown x its modelled time: the draft's passes and encoder
here, the verifier's encoder rest and verification there (the open/data frame carries `pace_s`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from profiler.adapters.base import ModelAdapter
from profiler.speculative import (
    Rounds,
    Scorer,
    encoder_range,
    greedy_propose,
    make_scorer,
    run_encoder,
    verify_with,
)
from runtime.codec import Frame, FrameError, ack_frame, decode_frame, encode_frame, error_frame
from runtime.links import EmulatedNetwork, sleep_until
from runtime.transport import FrameServer, Tls, Transport

T = TypeVar("T")

TOKEN_BYTES = 8          # an int64 token id on the wire


# -- the verifier --------------------------------------------------------------------------------------
@dataclass
class _Request:
    scorer: Scorer
    tokens: list[int] = field(default_factory=list)
    touched: float = field(default_factory=time.monotonic)


class Verifier:
    """The target's side of cooperative decoding on one node."""

    def __init__(self, name: str, adapter: ModelAdapter, *, state_timeout_s: float = 120.0,
                 token: str | None = None, tls: Tls | None = None) -> None:
        self.name, self.adapter = name, adapter
        self.state_timeout_s = state_timeout_s
        self.requests: dict[str, _Request] = {}
        self.served = 0
        # as a worker: a call without `token` is refused; with `tls`, only clients with a certificate of its CA
        self.server = FrameServer(self.handle, self.health, token=token, tls=tls)

    def health(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.adapter.name, "role": "verifier", "open": len(self.requests),
                "served": self.served}

    async def start(self, listen: str) -> str:
        return await self.server.start(listen)

    async def stop(self) -> None:
        await self.server.stop()

    def _expire(self) -> None:
        now = time.monotonic()
        for rid in [r for r, q in self.requests.items() if now - q.touched > self.state_timeout_s]:
            del self.requests[rid]

    async def handle(self, data: bytes | memoryview) -> list[bytes]:
        try:
            frame = decode_frame(data)
        except FrameError as exc:
            return [error_frame(str(exc), code="bad-frame")]
        self._expire()
        try:
            if frame.kind == "open":
                return [await self._open(frame)]
            if frame.kind == "data":
                return [await self._verify(frame)]
            if frame.kind in ("close", "cancel"):
                self.requests.pop(frame.request_id, None)
                return [ack_frame(frame.request_id)]
        except ValueError as exc:
            return [error_frame(str(exc), frame.request_id, code="bad-request")]
        return [error_frame(f"a verifier takes open, data and close frames, not {frame.kind!r}",
                            frame.request_id, code="bad-kind")]

    async def _open(self, frame: Frame) -> bytes:
        if frame.request_id in self.requests:
            return error_frame("request already open", frame.request_id, code="duplicate-request")
        if frame.tensor is None:
            raise ValueError("open: the target's input is missing")
        t0 = time.perf_counter()
        enc = encoder_range(self.adapter)
        if enc:
            if not enc.start <= frame.unit <= enc.stop:
                raise ValueError(f"open: unit {frame.unit} is not in the encoder (0..{enc.stop})")
            context = run_encoder(self.adapter, frame.unit, enc.stop - 1, frame.tensor)
        else:
            if frame.tensor.dtype != torch.int64:
                raise ValueError("open: a causal LM's input is int64 prompt ids")
            context = frame.tensor
        self.requests[frame.request_id] = _Request(make_scorer(self.adapter, context))
        await _pace(t0, frame.meta.get("pace_s"))
        return ack_frame(frame.request_id)

    async def _verify(self, frame: Frame) -> bytes:
        req = self.requests.get(frame.request_id)
        if req is None:
            return error_frame("unknown request (never opened, closed or expired)", frame.request_id,
                               code="unknown-request")
        t = frame.tensor
        if t is None or t.dtype != torch.int64 or t.dim() != 1:
            raise ValueError("data: the proposals are an int64 vector")
        t0 = time.perf_counter()
        n, kept = verify_with(req.scorer, req.tokens, t.tolist())
        req.tokens += kept
        req.touched = time.monotonic()
        self.served += 1
        await _pace(t0, frame.meta.get("pace_s"))
        return encode_frame(Frame(kind="result", request_id=frame.request_id,
                                  tensor=torch.tensor([n, kept[-1]], dtype=torch.long)))


async def _pace(started: float, pace_s: object) -> None:
    """Hold the reply until the step's emulated time has passed (no-op without emulation)."""
    if isinstance(pace_s, (int, float)) and not isinstance(pace_s, bool) and math.isfinite(pace_s) and pace_s > 0:
        await sleep_until(started + float(pace_s))


# -- the source's side ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CoopRoute:
    """Where a cooperative plan puts things, as the runtime runs them."""

    source: str
    verifier: str
    cut: int        # the target's units 0..cut-1 run on the source, the rest on the verifier
    k: int


def coop_route(target: ModelAdapter, source: str, assignment: Sequence[str], draft_assignment: Sequence[str],
               k: int) -> CoopRoute:
    """The route of a cooperative plan, or a ValueError saying which rule the runtime needs."""
    if set(draft_assignment) != {source}:
        raise ValueError(f"draft_assignment: the runtime runs the draft on the source ({source})")
    nodes = [n for n in dict.fromkeys(assignment) if n != source]
    if len(nodes) > 1:
        raise ValueError(f"assignment: the target runs on the source and one verifier, not on {', '.join(nodes)}")
    verifier = nodes[0] if nodes else source
    cut = next((i for i, n in enumerate(assignment) if n != source), len(assignment))
    if any(n != verifier for n in assignment[cut:]):
        raise ValueError("assignment: the target's units on the source must come first")
    enc = encoder_range(target)
    if cut > enc.stop:
        raise ValueError("assignment: the target's decoder must run on the verifier, not the source")
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")
    return CoopRoute(source, verifier, cut, k)


@dataclass(frozen=True)
class Pacing:
    """Emulated seconds of each compute step (dilation K and slowdowns included)."""

    draft_encode_s: float = 0.0
    draft_pass_s: float = 0.0
    target_source_s: float = 0.0      # the target's encoder units on the source
    target_rest_s: float = 0.0        # the rest of its encoder on the verifier
    verify_s: dict[int, float] = field(default_factory=dict)   # per number of proposals + 1


@dataclass
class CoopResult:
    tokens: list[int]
    rounds: int
    draft_passes: int
    accepted: int
    measured_s: float
    dilation: float = 1.0
    bytes_sent: dict[str, float] = field(default_factory=dict)   # "a->b" -> payload bytes

    @property
    def scaled_s(self) -> float:
        return self.measured_s / self.dilation


class CoopClient:
    """Runs requests cooperatively: the draft here (the source), the target at `address`."""

    def __init__(self, draft: ModelAdapter, target: ModelAdapter, route: CoopRoute, address: str,
                 transport: Transport, *, network: EmulatedNetwork | None = None, pacing: Pacing | None = None) -> None:
        if route.verifier == route.source:
            raise ValueError("a cooperative plan verifies on another node than the source")
        self.draft, self.target, self.route = draft, target, route
        self.address, self.transport = address, transport
        self.network, self.pacing = network, pacing or Pacing()
        self.dilation = network.dilation if network is not None else 1.0

    async def _carry(self, src: str, dst: str, nbytes: float, sent: dict[str, float]) -> None:
        sent[f"{src}->{dst}"] = sent.get(f"{src}->{dst}", 0.0) + nbytes
        if self.network is not None:
            await self.network.carry(src, dst, nbytes)

    async def _call(self, frame: Frame) -> Frame:
        replies = [decode_frame(b) for b in await self.transport.send(self.address, encode_frame(frame))]
        if not replies:
            raise RuntimeError(f"{self.route.verifier}: no reply")
        if replies[0].kind == "error":
            raise RuntimeError(f"{self.route.verifier}: {replies[0].meta.get('error', replies[0].meta)}")
        return replies[0]

    def _source_encoders(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the draft's context, the target's input to the verifier): the encoders' parts on the source."""
        enc_d = encoder_range(self.draft)
        draft_context = run_encoder(self.draft, 0, enc_d.stop - 1, x) if enc_d else x
        target_in = run_encoder(self.target, 0, self.route.cut - 1, x) if encoder_range(self.target) else x
        return draft_context, target_in

    async def generate(self, x: torch.Tensor, *, max_new_tokens: int, eos: int | None) -> CoopResult:
        """One request (batch 1): the target's greedy tokens, made cooperatively. The source's compute
        (encoders, draft passes) runs in a worker thread: the event loop it shares (the daemon's, with
        its API, probes and other requests) is not held for it."""
        if x.shape[0] != 1:
            raise ValueError("cooperative decoding runs one request at a time (batch 1)")
        r, p = self.route, self.pacing
        sent: dict[str, float] = {}
        rid = uuid.uuid4().hex
        start = time.perf_counter()
        t0 = time.perf_counter()
        draft_context, target_in = await _off_loop(self._source_encoders, x)
        await sleep_until(t0 + p.draft_encode_s + p.target_source_s)
        draft = make_scorer(self.draft, draft_context)
        await self._carry(r.source, r.verifier, target_in.numel() * target_in.element_size(), sent)
        await self._call(Frame(kind="open", request_id=rid, unit=r.cut if encoder_range(self.target) else 0,
                               tensor=target_in.contiguous(), meta={"pace_s": p.target_rest_s}))
        try:
            async def propose(tokens: Sequence[int], k: int) -> list[int]:
                # the passes run back to back on the source: paced once for all of them (one sleep
                # per round rather than per pass, whose wake-up delays would add up)
                t = time.perf_counter()
                out = await _off_loop(greedy_propose, draft, tokens, k, eos)
                await sleep_until(t + len(out) * p.draft_pass_s)
                return out

            async def verify(tokens: Sequence[int], proposed: Sequence[int]) -> tuple[int, list[int]]:
                await self._carry(r.source, r.verifier, TOKEN_BYTES * len(proposed), sent)
                reply = await self._call(Frame(kind="data", request_id=rid,
                                               tensor=torch.tensor(list(proposed), dtype=torch.long),
                                               meta={"pace_s": p.verify_s.get(len(proposed) + 1, 0.0)}))
                await self._carry(r.verifier, r.source, 2 * TOKEN_BYTES, sent)
                if reply.tensor is None or reply.tensor.numel() != 2:
                    raise RuntimeError(f"{r.verifier}: a verdict is two token ids")
                n, nxt = (int(v) for v in reply.tensor.tolist())
                if not 0 <= n <= len(proposed):
                    raise RuntimeError(f"{r.verifier}: kept {n} of {len(proposed)} proposals")
                return n, [*proposed[:n], nxt]

            rounds = Rounds(r.k, max_new_tokens, eos)
            while (want := rounds.proposals()) is not None:
                proposed = await propose(rounds.out, want) if want else []
                n, kept = await verify(rounds.out, proposed)
                rounds.take(proposed, n, kept)
            result = rounds.finish()
        finally:
            with contextlib.suppress(Exception):
                await self._call(Frame(kind="close", request_id=rid))
        return CoopResult(result.tokens, result.rounds, result.draft_passes, result.accepted,
                          time.perf_counter() - start, self.dilation, sent)


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a worker thread under inference mode (a thread does not inherit the caller's mode)."""
    def run() -> T:
        with torch.inference_mode():
            return fn(*args)
    return await asyncio.to_thread(run)


# -- the verifier process ------------------------------------------------------------------------------
async def serve(name: str, listen: str, model: str, *, token: str | None = None, threads: int | None = None,
                state_timeout_s: float = 120.0, tls: Tls | None = None) -> None:
    """Serve until SIGINT/SIGTERM; prints `READY host:port` once serving (as runtime.worker does)."""
    from profiler.models import load_adapter
    from runtime.worker import wait_until_stopped

    if threads:
        torch.set_num_threads(threads)
    verifier = Verifier(name, load_adapter(model), state_timeout_s=state_timeout_s, token=token, tls=tls)
    address = await verifier.start(listen)
    print(f"READY {address}", flush=True)
    await wait_until_stopped()
    await verifier.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m runtime.cooperative", description="Serve a cooperative verifier.")
    ap.add_argument("--name", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--model", required=True)
    ap.add_argument("--token", default=None, help="shared token (default: $AIFLOW_TOKEN)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--state-timeout", type=float, default=120.0)
    a = ap.parse_args(argv)
    token = a.token or os.environ.get("AIFLOW_TOKEN") or None
    try:
        asyncio.run(serve(a.name, a.listen, a.model, token=token, threads=a.threads, state_timeout_s=a.state_timeout,
                          tls=Tls.from_env()))
    except ValueError as exc:
        print(f"aiflow verifier: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
