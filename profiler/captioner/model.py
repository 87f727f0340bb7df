"""The tiny-captioner architecture and its greedy decoder."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    PreTrainedTokenizerBase,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
)

from profiler.captioner.scenes import IMAGE_SIZE

MAX_NEW_TOKENS = 32  # the longest caption the writer produces is 25 words plus EOS


def build_model(tokenizer: PreTrainedTokenizerBase, *, width: int = 128, layers: int = 3,
                heads: int = 4, decoder_width: int | None = None, decoder_layers: int | None = None,
                decoder_heads: int | None = None) -> VisionEncoderDecoderModel:
    """A randomly initialised ViT (64 px, patch 8) + GPT-2 decoder with cross-attention. The decoder
    takes the encoder's width, depth and heads unless given its own (the captioner family's members
    keep tiny-captioner's encoder and change the decoder; a width change adds enc_to_dec_proj)."""
    d_width, d_layers, d_heads = decoder_width or width, decoder_layers or layers, decoder_heads or heads
    encoder = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=width,
                        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * width)
    decoder = GPT2Config(vocab_size=len(tokenizer), n_positions=MAX_NEW_TOKENS + 8, n_embd=d_width,
                         n_layer=d_layers, n_head=d_heads, n_inner=4 * d_width, add_cross_attention=True,
                         is_decoder=True,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = tokenizer.bos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return VisionEncoderDecoderModel(config=config)


@torch.no_grad()
def greedy_decode(model: VisionEncoderDecoderModel, pixel_values: torch.Tensor,
                  max_new_tokens: int = MAX_NEW_TOKENS) -> list[list[int]]:
    """Greedy token ids (without BOS, up to and excluding EOS) for a batch of images."""
    config = model.config
    encoder_outputs = model.encoder(pixel_values=pixel_values)
    batch = pixel_values.shape[0]
    ids = torch.full((batch, 1), config.decoder_start_token_id, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model(encoder_outputs=encoder_outputs, decoder_input_ids=ids, use_cache=False).logits
        nxt = logits[:, -1].argmax(-1)
        # finished rows repeat EOS (not PAD, which the decoder would take for unmasked padding)
        nxt = torch.where(done, torch.full_like(nxt, config.eos_token_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == config.eos_token_id
        if bool(done.all()):
            break
    out: list[list[int]] = []
    for row in ids[:, 1:].tolist():
        out.append(row[: row.index(config.eos_token_id)] if config.eos_token_id in row else row)
    return out


def caption_pixels(model: VisionEncoderDecoderModel, tokenizer: PreTrainedTokenizerBase,
                   pixel_values: torch.Tensor, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy captions of a batch of preprocessed images."""
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in greedy_decode(model, pixel_values,
                                                                                      max_new_tokens)]
