"""ViT: units vision.embed (patch + position embeddings), vision.layer.{i}, vision.norm (final layernorm).

Layers are called the way ViTModel.forward calls them in transformers 5 (with the bidirectional
mask from `create_bidirectional_mask`, None unless the attention needs one). The pooler is not a
unit: ViTModel's `last_hidden_state` (what an encoder-decoder reads) does not use it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import ViTModel
from transformers.masking_utils import create_bidirectional_mask

from profiler.adapters.base import InputSpec, ModelAdapter, PhaseInfo, RequestState, UnitInfo
from profiler.adapters.common import EXAMPLE_SEED, model_device
from profiler.images import image_to_pixel_values, load_image


class ViTStack:
    """The units of a ViTModel; local unit 0 = embed, 1..n = layers, n+1 = norm (+ `extra_norm`)."""

    def __init__(self, vit: ViTModel, extra_norm: nn.Module | None = None) -> None:
        self.vit = vit
        self.config = vit.config
        self.n_layers = len(vit.layers)
        self.extra_norm = extra_norm        # an encoder-decoder's enc_to_dec_proj, when it has one
        self.image_size = int(self.config.image_size)

    def run(self, first: int, last: int, x: torch.Tensor) -> torch.Tensor:
        n = self.n_layers
        if not 0 <= first <= last <= n + 1:
            raise ValueError(f"unit range {first}..{last} outside the vision encoder's 0..{n + 1}")
        h = x
        if first == 0:
            if x is None or x.dim() != 4:
                raise ValueError("the vision embedding needs pixel values of shape [batch, 3, H, W]")
            px = x.to(self.vit.embeddings.patch_embeddings.projection.weight.dtype)
            resize = px.shape[-1] != self.image_size or px.shape[-2] != self.image_size
            h = self.vit.embeddings(px, bool_masked_pos=None, interpolate_pos_encoding=resize)
        if max(first, 1) <= min(last, n):
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=h, attention_mask=None)
            for local in range(max(first, 1), min(last, n) + 1):
                h = self.vit.layers[local - 1](h, mask)
        if last == n + 1:
            h = self.vit.layernorm(h)
            if self.extra_norm is not None:
                h = self.extra_norm(h)
        return h

    def modules_of(self, local: int) -> list[nn.Module]:
        if local == 0:
            return [self.vit.embeddings]
        if 1 <= local <= self.n_layers:
            return [self.vit.layers[local - 1]]
        if local == self.n_layers + 1:
            return [self.vit.layernorm] + ([self.extra_norm] if self.extra_norm is not None else [])
        raise IndexError(f"no unit {local}")

    def unit_infos(self) -> list[UnitInfo]:
        ph = ("encode",)
        return ([UnitInfo("vision.embed", ph)]
                + [UnitInfo(f"vision.layer.{i}", ph) for i in range(self.n_layers)]
                + [UnitInfo("vision.norm", ph)])

    def example_pixels(self, spec: InputSpec) -> torch.Tensor:
        size = spec.image_size or self.image_size
        gen = torch.Generator().manual_seed(EXAMPLE_SEED)
        channels = int(self.config.num_channels)
        return torch.randn(spec.batch, channels, size, size, generator=gen).to(model_device(self.vit))

    def prepare_image(self, image: Any) -> torch.Tensor:
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            image = load_image(image, self.image_size)
        return image_to_pixel_values(image, self.image_size)


class ViTAdapter(ModelAdapter):
    """A ViT encoder alone: one phase, `encode`; the output is the final hidden state [B, tokens, d]."""

    family = "vit"

    def __init__(self, model: ViTModel, name: str, weights: str) -> None:
        super().__init__(model, name, weights)
        self.stack = ViTStack(model)

    def units(self) -> list[UnitInfo]:
        return self.stack.unit_infos()

    def phases(self, spec: InputSpec) -> list[PhaseInfo]:
        return [PhaseInfo("encode", 0, self.stack.n_layers + 1, 1, "source")]

    def unit_modules(self, index: int) -> list[nn.Module]:
        return self.stack.modules_of(index)

    def example_input(self, spec: InputSpec, phase: str) -> torch.Tensor | None:
        if phase != "encode":
            raise ValueError(f"{self.name}: no phase {phase!r} (phases: encode)")
        return self.stack.example_pixels(spec)

    @torch.no_grad()
    def run(self, first: int, last: int, x: torch.Tensor | None, *, phase: str, position: int,
            state: RequestState, all_logits: bool = False) -> torch.Tensor:
        if phase != "encode":
            raise ValueError(f"{self.name}: no phase {phase!r} (phases: encode)")
        return self.stack.run(first, last, x)

    def prepare_image(self, image: Any) -> torch.Tensor:
        return self.stack.prepare_image(image)
