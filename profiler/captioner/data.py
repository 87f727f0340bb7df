"""Train / validation / test data. A scene belongs to exactly one split, decided by a hash of its
canonical text, so no test scene (in any wording, with any jitter) is ever seen in training."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from profiler.captioner.scenes import IMAGE_SIZE, TEMPLATES, Scene, caption, render, sample_scene
from profiler.captioner.tokenizer import encode_caption
from profiler.images import image_to_pixel_values

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
IGNORE_INDEX = -100  # label value the loss skips (padding after EOS)
TEST_SEED = 20240605  # the fixed test sample every score in docs/captioner.md uses


def split_of(scene: Scene) -> Split:
    """10% of scenes are test, 10% validation, 80% training, by a hash that never changes."""
    bucket = int(hashlib.sha256(scene.key().encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def sample_split_scene(rng: random.Random, split: Split) -> Scene:
    while True:
        scene = sample_scene(rng)
        if split_of(scene) == split:
            return scene


@dataclass(frozen=True)
class Example:
    scene: Scene
    pixel_values: torch.Tensor  # [1, 3, 64, 64]
    references: tuple[str, ...]  # one caption per template


def fixed_examples(split: Split, n: int, seed: int = TEST_SEED) -> list[Example]:
    """n distinct scenes of a split, their jittered images and one reference caption per template.
    The same (split, n, seed) always gives the same examples."""
    rng = random.Random(f"{split}:{seed}")
    seen: set[Scene] = set()
    examples: list[Example] = []
    while len(examples) < n:
        scene = sample_split_scene(rng, split)
        if scene in seen:
            continue
        seen.add(scene)
        pixels = image_to_pixel_values(render(scene, rng), IMAGE_SIZE)
        refs = tuple(caption(scene, rng, t) for t in range(len(TEMPLATES)))
        examples.append(Example(scene, pixels, refs))
    return examples


def training_batch(rng: random.Random, tokenizer: PreTrainedTokenizerBase, batch_size: int,
                   split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh batch from the split: pixel values [B, 3, 64, 64] and labels [B, T] (caption ids, EOS,
    then IGNORE_INDEX). Each scene gets a random wording and a random jitter."""
    pixels, targets = [], []
    for _ in range(batch_size):
        scene = sample_split_scene(rng, split)
        pixels.append(image_to_pixel_values(render(scene, rng), IMAGE_SIZE))
        targets.append(encode_caption(tokenizer, caption(scene, rng)))
    length = max(len(t) for t in targets)
    labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
    for i, t in enumerate(targets):
        labels[i, : len(t)] = torch.tensor(t)
    return torch.cat(pixels), labels
