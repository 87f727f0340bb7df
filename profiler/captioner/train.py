"""Training tiny-captioner from scratch on generated scenes, reproducibly from one seed, and saving it
as a Hugging Face folder (config.json, model.safetensors, tokenizer files) with its training record."""

from __future__ import annotations

import json
import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from profiler.captioner.data import IGNORE_INDEX, TEST_SEED, fixed_examples, training_batch
from profiler.captioner.evaluate import evaluate_model
from profiler.captioner.family import MEMBERS, build_member, decoder_flops_per_token, load_base
from profiler.captioner.model import build_model
from profiler.captioner.tokenizer import build_tokenizer, encode_caption

RECORD_FILE = "training.json"


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 4000
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    eval_every: int = 500  # validation loss and accuracy on a small fixed sample, for the progress log
    val_scenes: int = 200  # validation scenes scored at each evaluation
    test_scenes: int = 500  # held-out test scenes scored at the end (the record's test scores)
    threads: int = 2
    # A family member (profiler.captioner.family.MEMBERS) instead of tiny-captioner: its decoder shape,
    # the encoder copied from `base` (a captioner folder) and frozen, so only the decoder trains.
    member: str | None = None
    base: str | None = None


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    train_loss: float  # mean over the steps since the last report
    elapsed_s: float
    val_loss: float | None = None
    val_scene_accuracy: float | None = None


def lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at the last step."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    frac = (step - opts.warmup_steps) / max(1, opts.steps - opts.warmup_steps)
    return opts.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _val_loss(model: torch.nn.Module, tokenizer, examples) -> float:
    """Mean token loss on fixed validation scenes, each with its first reference caption."""
    targets = [encode_caption(tokenizer, e.references[0]) for e in examples]
    labels = torch.full((len(targets), max(map(len, targets))), IGNORE_INDEX, dtype=torch.long)
    for i, t in enumerate(targets):
        labels[i, : len(t)] = torch.tensor(t)
    model.eval()
    with torch.no_grad():
        loss = model(pixel_values=torch.cat([e.pixel_values for e in examples]), labels=labels).loss
    model.train()
    return float(loss)


def _initial_model(opts: TrainOptions, tokenizer) -> torch.nn.Module:
    if opts.member is None:
        return build_model(tokenizer)
    if opts.member not in MEMBERS:
        raise ValueError(f"member: expected one of {', '.join(MEMBERS)}, got {opts.member!r}")
    base = load_base(Path(opts.base)) if opts.base else None
    model = build_member(MEMBERS[opts.member], tokenizer, base)
    if base is not None:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    return model


def train(opts: TrainOptions, out: Path, on_progress: Callable[[Progress], None] | None = None,
          report_every: int = 50) -> dict:
    """Train, save the model and tokenizer to `out`, score the test scenes and write the record."""
    torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    rng = random.Random(opts.seed)
    tokenizer = build_tokenizer()
    model = _initial_model(opts, tokenizer)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=opts.lr)
    val_examples = fixed_examples("val", opts.val_scenes)
    losses: list[float] = []
    history: list[dict] = []
    start = time.perf_counter()
    window: list[float] = []
    for step in range(opts.steps):
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, opts)
        pixels, labels = training_batch(rng, tokenizer, opts.batch_size)
        loss = model(pixel_values=pixels, labels=labels).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimiser.step()
        losses.append(loss.item())
        window.append(loss.item())
        last = step + 1 == opts.steps
        if (step + 1) % opts.eval_every == 0 or last:
            val_loss = _val_loss(model, tokenizer, val_examples)
            val_scores, _ = evaluate_model(model, tokenizer, split="val", n=opts.val_scenes)
            model.train()
            entry = Progress(step + 1, opts.steps, sum(window) / len(window), time.perf_counter() - start,
                             val_loss, val_scores.scene_accuracy)
            history.append(entry.__dict__)
            window = []
            if on_progress:
                on_progress(entry)
        elif (step + 1) % report_every == 0:
            if on_progress:
                on_progress(Progress(step + 1, opts.steps, sum(window) / len(window), time.perf_counter() - start))
            window = []
    train_seconds = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    if opts.member is not None:
        model = model.half()  # the family ships lean: fp16 weights (the runtime computes in fp32)
    model.save_pretrained(out, safe_serialization=True)
    if opts.member is not None:
        model = model.float()
    tokenizer.save_pretrained(out)
    test_scores, _ = evaluate_model(model, tokenizer, split="test", n=opts.test_scenes)
    record = {
        "model": opts.member or "tiny-captioner",
        "data_seed": opts.seed,
        "options": opts.__dict__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": sum(p.numel() for p in trainable),
        "decoder_flops_per_token": decoder_flops_per_token(model),
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": sum(losses[-100:]) / len(losses[-100:]),
        "final_val_loss": history[-1]["val_loss"],
        "final_val_scene_accuracy": history[-1]["val_scene_accuracy"],
        "history": history,
        "test": {"seed": TEST_SEED, **test_scores.as_dict()},
        "software": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    """python -m profiler.captioner.train OUT [--steps N] [--seed S] [--member NAME --base FOLDER]
    [--threads T] [--eval-every E]: a bare runner without the CLI that logs progress lines."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m profiler.captioner.train")
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=TrainOptions.steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--member", choices=sorted(MEMBERS), default=None)
    ap.add_argument("--base", default=None, help="captioner folder whose encoder the member copies")
    ap.add_argument("--threads", type=int, default=TrainOptions.threads)
    ap.add_argument("--eval-every", type=int, default=TrainOptions.eval_every)
    args = ap.parse_args()

    def show(p: Progress) -> None:
        extra = f" val_loss {p.val_loss:.3f} val_acc {p.val_scene_accuracy:.3f}" if p.val_loss is not None else ""
        print(f"step {p.step}/{p.steps} loss {p.train_loss:.3f} {p.elapsed_s:.0f}s{extra}", flush=True)

    opts = TrainOptions(steps=args.steps, seed=args.seed, member=args.member, base=args.base,
                        threads=args.threads, eval_every=args.eval_every)
    record = train(opts, args.out, show, report_every=10)
    print(json.dumps(record["test"], indent=2))


if __name__ == "__main__":
    main()
