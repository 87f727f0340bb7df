"""GPT-2: units text.embed (wte + wpe), text.block.{i}, text.head (ln_f + lm_head).

Each block is called the way GPT2Model.forward calls it in transformers 5, with the causal mask
made by `create_causal_mask` sized against that block's own cache slot, so a worker that owns
only blocks 4-5 sizes its mask from its own caches, not from block 0's (which it never fills).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache, GPT2LMHeadModel
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from profiler.adapters.common import CausalLMAdapter, TextCodec, TextStack, last_position_logits


class GPT2Stack(TextStack):
    """The decoder of a GPT2LMHeadModel, standalone or (with cross-attention) inside an encoder-decoder."""

    def __init__(self, lm: GPT2LMHeadModel) -> None:
        self.lm = lm
        self.tr = lm.transformer
        self.config = lm.config
        self.n_blocks = len(self.tr.h)
        self.vocab_size = int(self.config.vocab_size)
        self.cross = bool(getattr(self.config, "add_cross_attention", False))

    def new_cache(self) -> Any:
        cache = DynamicCache(config=self.config)
        if self.cross:
            return EncoderDecoderCache(cache, DynamicCache(config=self.config))
        return cache

    def embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.tr.drop(self.tr.wte(ids) + self.tr.wpe(pos))

    def block(self, i: int, h: torch.Tensor, pos: torch.Tensor, cache: Any,
              encoder_out: torch.Tensor | None, encoder_bias: torch.Tensor | None = None) -> torch.Tensor:
        mask = create_causal_mask(config=self.config, inputs_embeds=h, attention_mask=None, cache=cache,
                                  position_ids=pos, layer_idx=i)
        enc_mask = None
        if self.cross:
            if encoder_out is None:
                raise ValueError(f"text.block.{i} has cross-attention but the state holds no encoder output")
            enc_mask = create_bidirectional_mask(config=self.config, inputs_embeds=h, attention_mask=None,
                                                 encoder_hidden_states=encoder_out)
            if encoder_bias is not None:
                # merged encoder tokens (profiler.token_merge): log(size) added to the cross-attention logits
                enc_mask = encoder_bias[:, None, None, :].to(h.dtype)
        return self.tr.h[i](h, cache, mask, encoder_out if self.cross else None,
                            encoder_attention_mask=enc_mask, use_cache=True, position_ids=pos)

    def head(self, h: torch.Tensor, all_logits: bool) -> torch.Tensor:
        return last_position_logits(self.tr.ln_f(h), self.lm.lm_head, all_logits)

    def modules_of(self, local: int) -> list[nn.Module]:
        if local == 0:
            return [self.tr.wte, self.tr.wpe]
        if 1 <= local <= self.n_blocks:
            return [self.tr.h[local - 1]]
        if local == self.n_blocks + 1:
            return [self.tr.ln_f, self.lm.lm_head]
        raise IndexError(f"no unit {local}")

    def has_cross_attention(self, i: int) -> bool:
        return self.cross and hasattr(self.tr.h[i], "crossattention")


class GPT2Adapter(CausalLMAdapter):
    family = "gpt2"

    def __init__(self, model: GPT2LMHeadModel, name: str, weights: str, codec: TextCodec,
                 eos_token_id: int | None) -> None:
        super().__init__(model, name, weights, GPT2Stack(model), codec, eos_token_id)
