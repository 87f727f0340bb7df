"""Caption quality under token reduction: scene accuracy (and agreement with the unreduced captions)
of a captioner whose encoder output is merged to k tokens before the decoder reads it
(profiler.token_merge; docs/captioner.md, "Token reduction").

    python -m profiler.captioner.reduction_eval [MODEL] [N] [METHOD-KEEP ...]

scores MODEL (default tiny-captioner) on the first N (default 500) fixed held-out test scenes, the
same ones as `profiler.captioner.evaluate`, unreduced and under each reduction, and prints JSON.
Quality loss is in points of scene accuracy: unreduced minus reduced (negative: reduction helped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from profiler.captioner.data import TEST_SEED, fixed_examples
from profiler.captioner.evaluate import score
from profiler.generate import greedy_generate
from profiler.token_merge import Reduction

MAX_NEW_TOKENS = 32
DEFAULT_REDUCTIONS = ("tome-48", "tome-32", "tome-24", "tome-16", "tome-8",
                      "dpc-48", "dpc-32", "dpc-24", "dpc-16", "dpc-8")


@dataclass(frozen=True)
class ReductionQuality:
    method: str                    # "none" for the unreduced model
    keep: int                      # tokens the decoder sees
    scenes: int
    scene_accuracy: float          # percent
    quality_loss: float            # points: unreduced accuracy minus this one
    agreement: float               # percent of captions equal to the unreduced model's
    bleu4: float


def captions_under(adapter: object, pixels: torch.Tensor, reduction: Reduction | None,
                   batch_size: int = 100) -> list[str]:
    """Greedy captions of the adapter's model with the encoder output reduced (or not)."""
    out: list[str] = []
    eos = adapter.eos_token_id                                    # type: ignore[attr-defined]
    for i in range(0, pixels.shape[0], batch_size):
        gen = greedy_generate(adapter, pixels[i:i + batch_size], new_tokens=MAX_NEW_TOKENS,  # type: ignore[arg-type]
                              reduction=reduction)
        for row in gen.tokens.tolist():
            out.append(adapter.decode_tokens(row[: row.index(eos)] if eos in row else row))  # type: ignore[attr-defined]
    return out


def evaluate_reductions(model: str, reductions: Sequence[Reduction], n: int = 500,
                        seed: int = TEST_SEED) -> list[ReductionQuality]:
    """The unreduced row first, then one row per reduction, on n fixed held-out test scenes."""
    from profiler.models import load_adapter

    if n < 1:
        raise ValueError(f"scenes: must be >= 1, got {n}")
    adapter = load_adapter(model)
    first = fixed_examples("test", 1, seed)[0].pixel_values        # the encoder's token count, before scoring
    n_tokens = int(adapter.run(0, adapter.n_vision - 1, first, phase="encode", position=0,  # type: ignore[attr-defined]
                               state=adapter.new_state()).shape[1])
    for r in reductions:
        if r.keep >= n_tokens:
            raise ValueError(f"reduction {r.label}: keeps {r.keep} of {n_tokens} tokens, nothing to reduce")
    examples = fixed_examples("test", n, seed)
    pixels = torch.cat([e.pixel_values for e in examples])
    truths = [e.scene for e in examples]
    refs = [e.references for e in examples]
    base_caps = captions_under(adapter, pixels, None)
    base = score(truths, base_caps, refs)
    rows = [ReductionQuality("none", n_tokens, n, 100 * base.scene_accuracy, 0.0, 100.0, base.bleu4)]
    for r in reductions:
        caps = captions_under(adapter, pixels, r)
        s = score(truths, caps, refs)
        agree = 100 * sum(a == b for a, b in zip(caps, base_caps, strict=True)) / n
        rows.append(ReductionQuality(r.method, r.keep, n, 100 * s.scene_accuracy,
                                     100 * (base.scene_accuracy - s.scene_accuracy), agree, s.bleu4))
    return rows


def main() -> None:
    import json
    import sys

    torch.set_num_threads(2)
    model = sys.argv[1] if len(sys.argv) > 1 else "tiny-captioner"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    names = sys.argv[3:] or list(DEFAULT_REDUCTIONS)
    rows = evaluate_reductions(model, [Reduction.parse(x) for x in names], n)
    print(json.dumps({"model": model, "seed": TEST_SEED, "rows": [asdict(r) for r in rows]}, indent=2))


if __name__ == "__main__":
    main()
