"""A reference greedy generator that drives an adapter through its phases with the model cut into ranges.

Each range gets its OWN RequestState, as a separate worker would; tensors are copied between
ranges; the encoder output is copied into every state whose range holds a cross-attention unit;
the sampled token goes back to the phase's first unit each step. The runtime mirrors this across
processes, and the tests use it to check that any cut gives the unsplit model's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from profiler.adapters.base import InputSpec, ModelAdapter, PhaseInfo, RequestState
from profiler.token_merge import Reduction, install, reduce_packed


@dataclass
class Generation:
    tokens: torch.Tensor          # [B, n] generated ids (prompt not included), n <= new_tokens
    steps: int                    # passes of the decoder made (prefill + decode steps)


def check_cuts(cuts: Sequence[tuple[int, int]] | None, n_units: int) -> list[tuple[int, int]]:
    """Ranges that cover 0..n_units-1 in order without gaps; None means one range, unsplit."""
    if not cuts:
        return [(0, n_units - 1)]
    ranges = [(int(a), int(b)) for a, b in cuts]
    expect = 0
    for a, b in ranges:
        if a != expect or b < a:
            raise ValueError(f"cut ranges {ranges} must cover units 0..{n_units - 1} in order")
        expect = b + 1
    if expect != n_units:
        raise ValueError(f"cut ranges {ranges} must end at unit {n_units - 1}")
    return ranges


def run_phase(adapter: ModelAdapter, phase: PhaseInfo, x: torch.Tensor | None, position: int,
              ranges: list[tuple[int, int]], states: list[RequestState]) -> torch.Tensor:
    """One pass of `phase` through the ranges that intersect it, copying the tensor between ranges."""
    out = x
    for (a, b), state in zip(ranges, states, strict=True):
        lo, hi = max(a, phase.first), min(b, phase.last)
        if lo > hi:
            continue
        out = adapter.run(lo, hi, out, phase=phase.name, position=position, state=state).clone()
    assert out is not None
    return out


def greedy_generate(adapter: ModelAdapter, source: torch.Tensor, *, new_tokens: int,
                    cuts: Sequence[tuple[int, int]] | None = None, stop_at_eos: bool = True,
                    reduction: Reduction | None = None) -> Generation:
    """Greedy decoding of `new_tokens` tokens from `source` (prompt ids [B, S], or pixels for a captioner).

    Stops early once every row has produced the adapter's eos token (kept in the output); rows
    that finished earlier are padded with eos, as Hugging Face's generate pads them. With a
    `reduction` the encoder output is merged (profiler.token_merge) before the decoder reads it.
    """
    if new_tokens < 1:
        raise ValueError("new_tokens must be >= 1")
    units = adapter.units()
    ranges = check_cuts(cuts, len(units))
    states = [adapter.new_state() for _ in ranges]
    batch = int(source.shape[0])
    for state in states:
        state.extra["batch"] = batch
    phases = {p.name: p for p in adapter.phases(InputSpec(new_tokens=new_tokens, batch=batch))}
    if "prefill" not in phases:
        raise ValueError(f"{adapter.name}: a {adapter.family} model does not generate")

    if "encode" in phases:
        enc = run_phase(adapter, phases["encode"], source, 0, ranges, states)
        packed = reduce_packed(enc, reduction) if reduction is not None else None
        for (a, b), state in zip(ranges, states, strict=True):
            if any(units[u].reads_edge for u in range(a, b + 1)):
                if packed is None:
                    state.encoder_out = enc.clone()
                else:
                    install(state, packed.clone())
        prefill_in, length = None, 1       # the decoder's first unit makes the start token
    else:
        prefill_in, length = source, adapter.positions(source)

    eos = adapter.eos_token_id if stop_at_eos else None
    logits = run_phase(adapter, phases["prefill"], prefill_in, 0, ranges, states)
    token = logits.argmax(dim=-1, keepdim=True)
    out = [token]
    done = token.squeeze(1) == eos if eos is not None else torch.zeros(batch, dtype=torch.bool, device=token.device)
    steps = 1
    for step in range(new_tokens - 1):
        if bool(done.all()):
            break
        logits = run_phase(adapter, phases["decode"], token, length + step, ranges, states)
        token = logits.argmax(dim=-1, keepdim=True)
        if eos is not None:
            token = torch.where(done.unsqueeze(1), torch.full_like(token, eos), token)
            done = done | (token.squeeze(1) == eos)
        out.append(token)
        steps += 1
    return Generation(tokens=torch.cat(out, dim=1), steps=steps)
