"""Speculative (cooperative) greedy decoding: a draft proposes k tokens, the target checks them in one
pass and keeps the longest prefix it agrees with, plus its own next token.

The output is the target's own greedy output token for token: every token kept is one the target
itself predicted after exactly the tokens before it. The draft only decides how many target tokens
one target pass yields (Leviathan et al. 2023, greedy case).

Pieces:
- `accept(proposed, target_next)`: the accept rule, a pure function on token ids.
- `Scorer`: a model reduced to "the target's greedy next token after each of the last `count`
  prefixes of this token list" (one pass over the whole list: the verification pass).
  `EncoderDecoderScorer` (a cross-attention decoder given the encoder output once) and
  `CausalScorer` (a causal LM given the prompt once) implement it over a key/value cache (`KVCache`),
  so a verification pass runs the k+1 new positions only and a draft pass one.
- `speculative_decode(propose, verify, k, ...)`: the round loop, over any proposer and verifier
  (in-process here, across the network in runtime.cooperative).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from profiler.adapters.base import InputSpec, ModelAdapter


def accept(proposed: Sequence[int], target_next: Sequence[int]) -> tuple[int, list[int]]:
    """(n, kept): n = how many proposed tokens the target agrees with, kept = proposed[:n] plus the
    target's own token after them. `target_next[i]` is the target's greedy token after the prefix
    extended by proposed[:i], for i = 0..len(proposed)."""
    if len(target_next) != len(proposed) + 1:
        raise ValueError(f"target_next: expected {len(proposed) + 1} tokens, got {len(target_next)}")
    n = 0
    while n < len(proposed) and proposed[n] == target_next[n]:
        n += 1
    return n, [*proposed[:n], target_next[n]]


class Scorer(Protocol):
    def predict(self, tokens: Sequence[int], count: int) -> list[int]:
        """Greedy next tokens after tokens[:len(tokens) - count + 1], ..., tokens (count >= 1)."""


class KVCache:
    """A decoder's key/value cache over the ids it has run, so that a pass runs only the positions it has
    not seen: a verification pass k + 1 new positions, a draft pass one (the passes the cooperative cost
    model prices, profiler.speculative_profile.verify_ratios). Proposals the target rejected are cropped
    off before the next pass."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.seen: list[int] = []

    def logits(self, model: torch.nn.Module, ids: Sequence[int], count: int, **kwargs: Any) -> torch.Tensor:
        """[count, vocab]: the logits at the last `count` positions of `ids`, which are always run anew."""
        keep, limit = 0, min(len(self.seen), len(ids) - count)
        while keep < limit and self.seen[keep] == ids[keep]:
            keep += 1
        if keep == 0:
            self.cache = None
        elif keep < len(self.seen):
            self.cache.crop(keep - len(self.seen))          # drop the positions after the common prefix
        new = torch.tensor([list(ids[keep:])], dtype=torch.long)
        out = model(input_ids=new, cache=self.cache, use_cache=True, **kwargs)
        self.cache, self.seen = out["cache"], list(ids)
        return out.logits[0, -count:]


class EncoderDecoderScorer:
    """A cross-attention decoder (GPT-2 with add_cross_attention) on a fixed encoder output (already
    through enc_to_dec_proj when the model has one), the sequence started by `start_token_id`."""

    def __init__(self, decoder: torch.nn.Module, encoder_out: torch.Tensor, start_token_id: int) -> None:
        self.decoder = decoder
        self.encoder_out = encoder_out
        self.start = start_token_id
        self.passes = 0
        self.kv = KVCache()

    @torch.no_grad()
    def predict(self, tokens: Sequence[int], count: int) -> list[int]:
        logits = self.kv.logits(self.decoder, [self.start, *tokens], count, encoder_hidden_states=self.encoder_out)
        self.passes += 1
        return logits.argmax(-1).tolist()


class CausalScorer:
    """A causal language model continuing a fixed prompt (token ids)."""

    def __init__(self, model: torch.nn.Module, prompt_ids: Sequence[int]) -> None:
        if not prompt_ids:
            raise ValueError("prompt_ids: a causal LM needs at least one prompt token")
        self.model = model
        self.prompt = list(prompt_ids)
        self.passes = 0
        self.kv = KVCache()

    @torch.no_grad()
    def predict(self, tokens: Sequence[int], count: int) -> list[int]:
        logits = self.kv.logits(self.model, [*self.prompt, *tokens], count)
        self.passes += 1
        return logits.argmax(-1).tolist()


def greedy_propose(draft: Scorer, tokens: Sequence[int], k: int, eos: int | None) -> list[int]:
    """The draft's k greedy tokens after `tokens` (fewer if it proposes EOS: nothing follows EOS)."""
    out: list[int] = []
    for _ in range(k):
        nxt = draft.predict([*tokens, *out], 1)[0]
        out.append(nxt)
        if nxt == eos:
            break
    return out


def verify_with(target: Scorer, tokens: Sequence[int], proposed: Sequence[int]) -> tuple[int, list[int]]:
    """One target pass over the proposals and the accept rule: (accepted count, tokens kept)."""
    return accept(proposed, target.predict([*tokens, *proposed], len(proposed) + 1))


@dataclass
class SpecResult:
    tokens: list[int]               # the output, up to and excluding EOS (as greedy_decode gives it)
    rounds: int = 0                 # verification passes of the target
    draft_passes: int = 0           # tokens the draft proposed (one draft pass each)
    accepted: int = 0               # proposals the target kept
    per_round: list[int] = field(default_factory=list)   # accepted count per round

    @property
    def acceptance(self) -> float:
        return self.accepted / self.draft_passes if self.draft_passes else 0.0


Proposer = Callable[[Sequence[int], int], list[int]]
Verifier = Callable[[Sequence[int], Sequence[int]], tuple[int, list[int]]]


class Rounds:
    """The round loop's bookkeeping, shared by the in-process loop and the networked one: how many
    tokens to propose next (None: done), and the tokens a verdict adds."""

    def __init__(self, k: int, max_new_tokens: int, eos: int | None) -> None:
        if k < 1:
            raise ValueError(f"k: must be at least 1, got {k}")
        self.k, self.max_new_tokens, self.eos = k, max_new_tokens, eos
        self.out: list[int] = []
        self.result = SpecResult(tokens=[])

    def proposals(self) -> int | None:
        """Draft tokens to ask for this round: k, fewer near max_new_tokens so that a round never
        makes more tokens than are left (0: the target alone makes the last one); None when done."""
        if len(self.out) >= self.max_new_tokens or (self.eos is not None and self.eos in self.out):
            return None
        return min(self.k, self.max_new_tokens - len(self.out) - 1)

    def take(self, proposed: Sequence[int], n: int, kept: Sequence[int]) -> None:
        r = self.result
        r.rounds += 1
        r.draft_passes += len(proposed)
        r.accepted += n
        r.per_round.append(n)
        self.out += kept

    def finish(self) -> SpecResult:
        out, eos = self.out, self.eos
        self.result.tokens = out[: out.index(eos)] if eos is not None and eos in out else list(out)
        return self.result


def speculative_decode(propose: Proposer, verify: Verifier, k: int, max_new_tokens: int,
                       eos: int | None) -> SpecResult:
    """Rounds of propose-k / verify until EOS or max_new_tokens. `propose(tokens, k)` gives at most k
    draft tokens after `tokens`; `verify(tokens, proposed)` gives (n, kept) by the accept rule."""
    rounds = Rounds(k, max_new_tokens, eos)
    while (want := rounds.proposals()) is not None:
        proposed = propose(rounds.out, want) if want else []
        n, kept = verify(rounds.out, proposed)
        rounds.take(proposed, n, kept)
    return rounds.finish()


def local_speculative(draft: Scorer, target: Scorer, k: int, max_new_tokens: int, eos: int | None) -> SpecResult:
    """Both models in this process (the reference the networked runtime is tested against)."""
    return speculative_decode(lambda t, kk: greedy_propose(draft, t, kk, eos),
                              lambda t, p: verify_with(target, t, p), k, max_new_tokens, eos)


# -- what the adapters give ----------------------------------------------------------------------------
def encoder_range(adapter: ModelAdapter) -> range:
    """The units a request runs once before decoding (a vision encoder); empty for a causal LM."""
    for ph in adapter.phases(InputSpec()):
        if ph.name == "encode":
            return range(ph.first, ph.last + 1)
    return range(0)


def run_encoder(adapter: ModelAdapter, first: int, last: int, x: torch.Tensor) -> torch.Tensor:
    """Encoder units first..last on x (nothing when first > last)."""
    if first > last:
        return x
    return adapter.run(first, last, x, phase="encode", position=0, state=adapter.new_state())


def make_scorer(adapter: ModelAdapter, context: torch.Tensor) -> Scorer:
    """A scorer on the request's context: the encoder output, or the prompt ids of a causal LM."""
    if encoder_range(adapter):
        start = getattr(adapter, "start_token_id", None)
        if start is None:
            raise ValueError(f"{adapter.name}: no decoder start token")
        return EncoderDecoderScorer(adapter.model.decoder, context, int(start))
    return CausalScorer(adapter.model, context.reshape(-1).tolist())
