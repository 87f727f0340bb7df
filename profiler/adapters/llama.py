"""Llama-family causal LMs (Llama, Qwen2, Mistral, SmolLM, ...): anything shaped
`model.embed_tokens`, `model.layers`, `model.norm`, `model.rotary_emb`, `lm_head`.

Units: text.embed (embed_tokens), text.block.{i}, text.head (norm + lm_head). Each layer gets
the rotary `position_embeddings` from the explicit positions and the mask of its own attention
type (full or sliding window), sized against its own cache slot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from profiler.adapters.common import CausalLMAdapter, TextCodec, TextStack, last_position_logits


def is_llama_shaped(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    return (inner is not None and hasattr(model, "lm_head")
            and all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")))


def layer_attention_types(config: Any, n: int) -> list[str]:
    """Per layer "full_attention" or "sliding_attention", as the family's own forward decides."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)[:n]
    # Mistral-style configs: one sliding window for every layer when set.
    sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    return ["sliding_attention" if sliding else "full_attention"] * n


class LlamaStack(TextStack):
    def __init__(self, lm: nn.Module) -> None:
        self.lm = lm
        self.inner = lm.model
        self.config = lm.config
        self.n_blocks = len(self.inner.layers)
        self.vocab_size = int(self.config.vocab_size)
        self.types = layer_attention_types(self.config, self.n_blocks)

    def new_cache(self) -> Any:
        return DynamicCache(config=self.config)

    def embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.inner.embed_tokens(ids)

    def block(self, i: int, h: torch.Tensor, pos: torch.Tensor, cache: Any,
              encoder_out: torch.Tensor | None) -> torch.Tensor:
        make_mask = create_sliding_window_causal_mask if self.types[i] == "sliding_attention" else create_causal_mask
        mask = make_mask(config=self.config, inputs_embeds=h, attention_mask=None, cache=cache,
                         position_ids=pos, layer_idx=i)
        rotary = self.inner.rotary_emb(h, pos)
        return self.inner.layers[i](h, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                                    position_embeddings=rotary)

    def head(self, h: torch.Tensor, all_logits: bool) -> torch.Tensor:
        return last_position_logits(self.inner.norm(h), self.lm.lm_head, all_logits)

    def modules_of(self, local: int) -> list[nn.Module]:
        if local == 0:
            return [self.inner.embed_tokens]
        if 1 <= local <= self.n_blocks:
            return [self.inner.layers[local - 1]]
        if local == self.n_blocks + 1:
            return [self.inner.norm, self.lm.lm_head]
        raise IndexError(f"no unit {local}")


class LlamaAdapter(CausalLMAdapter):
    family = "llama"

    def __init__(self, model: nn.Module, name: str, weights: str, codec: TextCodec,
                 eos_token_id: int | None) -> None:
        super().__init__(model, name, weights, LlamaStack(model), codec, eos_token_id)
