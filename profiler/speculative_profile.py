"""Measuring a draft against its target for the planner: per draft length k, on sample inputs, the
mean verification rounds, draft passes and tokens per request and the acceptance rate (by running
speculative decoding, which gives exactly the target's tokens), and r_k, the time of one target
decoder pass over k + 1 new positions relative to a one-token pass (timed with a key/value cache
holding a typical prefix, on this machine). The result is the draft profile's `speculative` section.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from profiler.adapters.base import ModelAdapter
from profiler.profile import Profile, SpecStats, Speculative
from profiler.speculative import encoder_range, local_speculative, make_scorer, run_encoder


def contexts(adapter: ModelAdapter, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each input's encoder output (the prompt ids themselves for a causal LM)."""
    enc = encoder_range(adapter)
    return [run_encoder(adapter, 0, enc.stop - 1, x) if enc else x for x in inputs]


def acceptance_stats(draft: ModelAdapter, target: ModelAdapter, inputs: Sequence[torch.Tensor], ks: Sequence[int],
                     max_new_tokens: int) -> dict[int, dict[str, float]]:
    """Per k: mean rounds, draft passes and tokens (EOS included) per request, and acceptance."""
    eos = target.eos_token_id
    t_ctx, d_ctx = contexts(target, inputs), contexts(draft, inputs)
    out: dict[int, dict[str, float]] = {}
    for k in ks:
        rounds = passes = accepted = tokens = 0
        for tc, dc in zip(t_ctx, d_ctx, strict=True):
            res = local_speculative(make_scorer(draft, dc), make_scorer(target, tc), k, max_new_tokens, eos)
            rounds += res.rounds
            passes += res.draft_passes
            accepted += res.accepted
            tokens += len(res.tokens) + (eos is not None and len(res.tokens) < max_new_tokens)  # EOS counts
        n = len(inputs)
        out[k] = {"acceptance": accepted / passes if passes else 0.0, "rounds": rounds / n,
                  "draft_passes": passes / n, "tokens": tokens / n}
    return out


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` runs: the least disturbed by other work on a shared machine."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def verify_ratios(target: ModelAdapter, context: torch.Tensor, ks: Sequence[int], *, prefix: int = 8,
                  repeats: int = 30) -> dict[int, float]:
    """r_k: a cached target pass over k + 1 new positions / a cached one-token pass."""
    enc = encoder_range(target)
    if enc:
        model = target.model.decoder
        kwargs = {"encoder_hidden_states": context}
        start = [int(target.start_token_id)]
    else:
        model = target.model
        kwargs = {}
        start = context.reshape(-1).tolist()
    ids = torch.tensor([start + [3] * prefix], dtype=torch.long)
    cache = model(input_ids=ids, use_cache=True, **kwargs)["cache"]

    def one_pass(n: int) -> Callable[[], object]:
        new = torch.full((1, n), 3, dtype=torch.long)

        def run() -> object:
            out = model(input_ids=new, cache=cache, use_cache=True, **kwargs)
            cache.crop(-n)                # back to the prefix for the next timing (in place)
            return out
        return run

    for _ in range(3):
        one_pass(1)()
    # three rounds, each timing the one-token pass beside every k, and the median ratio per k: a
    # shared machine's bursts then spoil one round, not the answer
    rounds = []
    for _ in range(3):
        base = _best_time(one_pass(1), repeats)
        rounds.append({k: _best_time(one_pass(k + 1), repeats) / base for k in ks})
    return {k: max(1.0, sorted(r[k] for r in rounds)[1]) for k in ks}


def measure_speculative(draft_profile: Profile, draft: ModelAdapter, target: ModelAdapter,
                        inputs: Sequence[torch.Tensor], ks: Sequence[int], max_new_tokens: int,
                        hardware: str) -> Profile:
    """The draft profile with its `speculative` section measured against `target`."""
    if not inputs:
        raise ValueError("no sample inputs")
    stats = acceptance_stats(draft, target, inputs, ks, max_new_tokens)
    ratios = verify_ratios(target, contexts(target, inputs[:1])[0], ks)
    section = Speculative(target=target.name, samples=len(inputs), new_tokens=max_new_tokens,
                          k={str(k): SpecStats(**stats[k], verify_ratio=ratios[k]) for k in ks},
                          verify_ratio_hardware=hardware)
    return draft_profile.model_copy(update={"speculative": section})
