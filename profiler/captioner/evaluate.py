"""Caption quality on held-out scenes: scene accuracy (the caption parsed back equals the true scene,
whatever the wording), per-attribute accuracy and corpus BLEU-4 against the reference captions."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedTokenizerBase, VisionEncoderDecoderModel

from profiler.captioner.data import TEST_SEED, Split, fixed_examples
from profiler.captioner.model import caption_pixels
from profiler.captioner.parse import try_parse
from profiler.captioner.scenes import Scene


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus-level BLEU (Papineni et al. 2002) on whitespace words, uniform weights up to max_n, no
    smoothing: clipped n-gram precisions summed over the corpus (clipped by the most any one reference
    has), times the brevity penalty against the reference length closest to each hypothesis."""
    if len(hypotheses) != len(references):
        raise ValueError("one list of references per hypothesis")
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        h = hyp.split()
        rs = [r.split() for r in refs]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(h, n)
            most: Counter[tuple[str, ...]] = Counter()
            for r in rs:
                most |= _ngrams(r, n)
            matches[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


@dataclass(frozen=True)
class Scores:
    scenes: int
    scene_accuracy: float  # caption parses to exactly the true scene
    parse_rate: float  # caption parses to some valid scene
    attribute_accuracy: dict[str, float]  # background, count, and per true shape: kind, colour, size, position
    bleu4: float

    def as_dict(self) -> dict:
        return asdict(self)


def attribute_hits(truth: Scene, predicted: Scene | None) -> dict[str, list[bool]]:
    """Per-attribute right/wrong. A true shape is matched to the predicted shape at its position (or, if
    none is there, it counts as wrong in every attribute, position included)."""
    hits: dict[str, list[bool]] = {k: [] for k in ("background", "count", "kind", "colour", "size", "position")}
    hits["background"].append(predicted is not None and predicted.background == truth.background)
    hits["count"].append(predicted is not None and len(predicted.shapes) == len(truth.shapes))
    by_position = {s.position: s for s in predicted.shapes} if predicted is not None else {}
    for s in truth.shapes:
        p = by_position.get(s.position)
        hits["position"].append(p is not None)
        hits["kind"].append(p is not None and p.kind == s.kind)
        hits["colour"].append(p is not None and p.colour == s.colour)
        hits["size"].append(p is not None and p.size == s.size)
    return hits


def score(truths: Sequence[Scene], captions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    parsed = [try_parse(c) for c in captions]
    totals: dict[str, list[bool]] = {}
    for truth, pred in zip(truths, parsed, strict=True):
        for k, v in attribute_hits(truth, pred).items():
            totals.setdefault(k, []).extend(v)
    n = len(truths)
    return Scores(
        scenes=n,
        scene_accuracy=sum(p == t for p, t in zip(parsed, truths, strict=True)) / n,
        parse_rate=sum(p is not None for p in parsed) / n,
        attribute_accuracy={k: sum(v) / len(v) for k, v in totals.items()},
        bleu4=corpus_bleu(captions, references),
    )


def evaluate_model(model: VisionEncoderDecoderModel, tokenizer: PreTrainedTokenizerBase, *, split: Split = "test",
                   n: int = 500, seed: int = TEST_SEED, batch_size: int = 100) -> tuple[Scores, list[str]]:
    """Scores of the model's greedy captions on n fixed scenes of a split, and the captions."""
    examples = fixed_examples(split, n, seed)
    model.eval()
    captions: list[str] = []
    for i in range(0, n, batch_size):
        chunk = examples[i : i + batch_size]
        captions += caption_pixels(model, tokenizer, torch.cat([e.pixel_values for e in chunk]))
    scores = score([e.scene for e in examples], captions, [e.references for e in examples])
    return scores, captions


def main() -> None:
    """python -m profiler.captioner.evaluate [MODEL] [N] [SPLIT]: score a trained captioner folder or
    built-in name on N fixed scenes of a split (default: tiny-captioner, 500, test) and print JSON."""
    import json
    import sys

    from transformers import AutoTokenizer

    from profiler.captioner.inference import model_folder

    torch.set_num_threads(2)
    folder = model_folder(sys.argv[1] if len(sys.argv) > 1 else "tiny-captioner")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    split = sys.argv[3] if len(sys.argv) > 3 else "test"
    if split not in ("train", "val", "test"):
        raise SystemExit(f"split: expected train, val or test, got {split!r}")
    model = VisionEncoderDecoderModel.from_pretrained(folder, dtype=torch.float32)  # fp16 files compute in fp32
    tokenizer = AutoTokenizer.from_pretrained(folder)
    scores, captions = evaluate_model(model, tokenizer, split=split, n=n)  # type: ignore[arg-type]
    print(json.dumps({"model": str(folder.name), "split": split, "seed": TEST_SEED, **scores.as_dict(),
                      "examples": captions[:5]}, indent=2))


if __name__ == "__main__":
    main()
