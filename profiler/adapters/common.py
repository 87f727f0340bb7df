"""Pieces shared by the adapters: text coding, the run loop of a decoder stack, causal-LM structure.

A decoder stack ("text stack") is embed, then blocks, then a head. Its local unit numbering is
0 = embed, 1..n = blocks, n+1 = head; the adapters add an offset when the stack follows an encoder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from profiler.adapters.base import EdgeInfo, InputSpec, ModelAdapter, PhaseInfo, RequestState, UnitInfo

EXAMPLE_SEED = 1234  # example inputs are seeded so that profiling runs are repeatable


class TextCodec:
    """Text <-> token ids: a Hugging Face tokenizer when the model folder has one, else a byte fallback.

    The fallback (for random-init models without tokenizer files) maps each UTF-8 byte b of the text
    to the id b % vocab_size, and renders ids 32..126 as their ASCII character and any other id as
    "<id>". It exists so that prompts work end to end; the text it produces means nothing.
    """

    def __init__(self, tokenizer: Any | None, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return [b % self.vocab_size for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is not None:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))
        return "".join(chr(i) if 32 <= i <= 126 else f"<{i}>" for i in ids)


def position_ids(position: int, length: int, device: torch.device) -> torch.Tensor:
    """Positions position..position+length-1 as a [1, length] tensor, the shape HF builds itself."""
    return torch.arange(position, position + length, device=device).unsqueeze(0)


class TextStack(ABC):
    """A decoder stack of one family: how to run its embedding, one block, and its head."""

    n_blocks: int
    vocab_size: int

    @abstractmethod
    def new_cache(self) -> Any:
        """A fresh KV cache that holds a slot for every block, whether or not this worker runs it."""

    @abstractmethod
    def embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def block(self, i: int, h: torch.Tensor, pos: torch.Tensor, cache: Any,
              encoder_out: torch.Tensor | None) -> torch.Tensor: ...

    @abstractmethod
    def head(self, h: torch.Tensor, all_logits: bool) -> torch.Tensor: ...

    @abstractmethod
    def modules_of(self, local: int) -> list[nn.Module]: ...

    def cached_length(self, cache: Any, i: int) -> int:
        return int(cache.get_seq_length(i))

    def has_cross_attention(self, i: int) -> bool:
        return False


def run_text_stack(stack: TextStack, first: int, last: int, x: torch.Tensor, *, position: int,
                   state: RequestState, all_logits: bool) -> torch.Tensor:
    """Run local units first..last of `stack`; `x` is token ids when first == 0, else a hidden state."""
    n = stack.n_blocks
    if not 0 <= first <= last <= n + 1:
        raise ValueError(f"unit range {first}..{last} outside the decoder's 0..{n + 1}")
    h = x
    if first == 0:
        if x is None or x.dtype != torch.long or x.dim() != 2:
            raise ValueError("the embedding unit needs token ids of shape [batch, tokens]")
        h = stack.embed(x, position_ids(position, x.shape[1], x.device))
    pos = position_ids(position, h.shape[1], h.device)
    for local in range(max(first, 1), min(last, n) + 1):
        i = local - 1
        if state.cache is None:
            state.cache = stack.new_cache()
        cached = stack.cached_length(state.cache, i)
        if cached != position:
            # A wrong position would silently attend to the wrong keys: refuse instead.
            raise ValueError(f"block {i}: position {position} but {cached} tokens are cached")
        bias = state.extra.get("encoder_bias")          # set only for a reduced encoder output
        if bias is None:
            h = stack.block(i, h, pos, state.cache, state.encoder_out)
        else:
            h = stack.block(i, h, pos, state.cache, state.encoder_out, encoder_bias=bias)  # type: ignore[call-arg]
    if last == n + 1:
        h = stack.head(h, all_logits)
    return h


def last_position_logits(h: torch.Tensor, lm_head: nn.Module, all_logits: bool) -> torch.Tensor:
    """Logits as HF computes them: all positions, or (as generate does) the head on the last one only."""
    if all_logits:
        return lm_head(h)
    return lm_head(h[:, -1:, :])[:, -1, :]


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are: inputs the adapter makes itself are put there."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def example_ids(spec: InputSpec, length: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(EXAMPLE_SEED)
    return torch.randint(0, vocab_size, (spec.batch, length), generator=gen).to(device)


def valid_eos(eos: Any, vocab_size: int) -> int | None:
    """The first usable eos id: configs may hold a list, or an id outside a tiny vocabulary."""
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if isinstance(eos, int) and 0 <= eos < vocab_size:
        return eos
    return None


class CausalLMAdapter(ModelAdapter):
    """A decoder-only LM: units embed, blocks, head; phases prefill (the prompt) and decode (loop)."""

    family = "causal-lm"

    def __init__(self, model: nn.Module, name: str, weights: str, stack: TextStack,
                 codec: TextCodec, eos_token_id: int | None) -> None:
        super().__init__(model, name, weights)
        self.stack = stack
        self.codec = codec
        self._eos = eos_token_id

    def units(self) -> list[UnitInfo]:
        ph = ("prefill", "decode")
        n = self.stack.n_blocks
        return ([UnitInfo("text.embed", ph)]
                + [UnitInfo(f"text.block.{i}", ph) for i in range(n)]
                + [UnitInfo("text.head", ph)])

    def phases(self, spec: InputSpec) -> list[PhaseInfo]:
        last = self.stack.n_blocks + 1
        return [PhaseInfo("prefill", 0, last, 1, "source"),
                PhaseInfo("decode", 0, last, max(spec.new_tokens - 1, 0), "loop")]

    def edges(self) -> list[EdgeInfo]:
        return []

    def unit_modules(self, index: int) -> list[nn.Module]:
        return self.stack.modules_of(index)

    def example_input(self, spec: InputSpec, phase: str) -> torch.Tensor | None:
        if phase == "prefill":
            return example_ids(spec, spec.prompt_tokens, self.stack.vocab_size, model_device(self.model))
        if phase == "decode":
            return example_ids(spec, 1, self.stack.vocab_size, model_device(self.model))
        raise ValueError(f"{self.name}: no phase {phase!r} (phases: prefill, decode)")

    @torch.no_grad()
    def run(self, first: int, last: int, x: torch.Tensor | None, *, phase: str, position: int,
            state: RequestState, all_logits: bool = False) -> torch.Tensor:
        if phase not in ("prefill", "decode"):
            raise ValueError(f"{self.name}: no phase {phase!r} (phases: prefill, decode)")
        return run_text_stack(self.stack, first, last, x, position=position, state=state, all_logits=all_logits)

    def encode_text(self, text: str) -> list[int]:
        return self.codec.encode(text)

    def decode_tokens(self, ids: list[int]) -> str:
        return self.codec.decode(ids)

    @property
    def eos_token_id(self) -> int | None:
        return self._eos
