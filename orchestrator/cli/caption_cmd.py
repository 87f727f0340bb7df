"""`aiflow caption` (caption image files) and `aiflow train-captioner` (reproduce tiny-captioner)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.cli.backend_opts import backend_option, check_cli_backend, open_cli_backend, ray_address_option
from orchestrator.cli.options import reply_listen_option, token_option
from profiler.errors import InputError

console = Console()


def caption(
    images: list[Path] = typer.Argument(..., help="PNG/JPEG files of any size.", show_default=False),
    model: str = typer.Option("tiny-captioner", "--model", help="Built-in captioner name or a model folder."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {image, caption, scene}."),
    network: Path | None = typer.Option(None, "--network", help="Network file: caption through workers."),
    plan: Path | None = typer.Option(None, "--plan", help="Plan file: where each unit runs (with --network)."),
    draft: str | None = typer.Option(None, "--draft", help="Draft captioner for a cooperative plan: it proposes "
                                     "on the source, --model verifies (with --network and --plan)."),
    token: str | None = token_option(),
    reply_listen: str | None = reply_listen_option(),
    backend: str = backend_option(),
    ray_address: str | None = ray_address_option(),
) -> None:
    """Caption images with the unsplit model (greedy), or through workers with --network and --plan."""
    from transformers.utils import logging as hf_logging

    from profiler.captioner.inference import caption_files
    from profiler.captioner.parse import try_parse

    hf_logging.disable_progress_bar()  # keep stdout/stderr to the captions and one-line errors

    if (network is None) != (plan is None):
        raise InputError("--network/--plan: give both to caption through workers, or neither")
    if draft is not None and network is None:
        raise InputError("--draft: give --network and a cooperative --plan too")
    if backend != "grpc" or ray_address:
        check_cli_backend(backend, ray_address, cooperative=draft is not None)
        if network is None:
            raise InputError("--backend/--ray-address: stages run only with --network and --plan")
    if draft is not None and network is not None and plan is not None:
        from orchestrator.apply import caption_cooperative
        from profiler.captioner.model import MAX_NEW_TOKENS

        captions = [r.text for r in caption_cooperative([str(p) for p in images], model, draft, str(network),
                                                        str(plan), max_new_tokens=MAX_NEW_TOKENS)]
    elif network is not None and plan is not None:
        captions = _distributed(images, model, network, plan, token=token, reply_listen=reply_listen,
                                backend=backend, ray_address=ray_address)
    else:
        captions = caption_files(images, model)
    if as_json:
        rows = []
        for path, text in zip(images, captions, strict=True):
            scene = try_parse(text)
            rows.append({"image": str(path), "caption": text, "scene": scene.key() if scene else None})
        print(json.dumps(rows, indent=2))
    else:
        for path, text in zip(images, captions, strict=True):
            console.print(f"{path}: {text}", highlight=False, soft_wrap=True)


def _distributed(images: list[Path], model: str, network: Path, plan: Path, *, token: str | None = None,
                 reply_listen: str | None = None, backend: str = "grpc", ray_address: str | None = None) -> list[str]:
    """One caption per image, through local workers placed by the plan (orchestrator.apply)."""
    from orchestrator.apply import caption_distributed
    from profiler.captioner.model import MAX_NEW_TOKENS

    stages = open_cli_backend(backend, ray_address, network, token=token)          # closed with the command
    return list(caption_distributed([str(p) for p in images], model, str(network), str(plan),
                                    max_new_tokens=MAX_NEW_TOKENS, token=token, reply_listen=reply_listen,
                                    backend=stages))


def train_captioner(
    steps: int = typer.Option(4000, "--steps", help="Optimiser steps (batch 64)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data generator and of the initial weights."),
    out: Path = typer.Option(Path("tiny-captioner"), "--out", help="Folder to write the trained model to."),
    member: str | None = typer.Option(None, "--member", help="Train a family member instead: captioner-draft or "
                                      "captioner-target (its decoder; the encoder copied from --base, frozen)."),
    base: str = typer.Option("tiny-captioner", "--base", help="With --member: the captioner whose encoder it keeps."),
    threads: int = typer.Option(2, "--threads", help="torch threads."),
) -> None:
    """Train tiny-captioner from scratch on generated scenes (or a family member on tiny-captioner's
    encoder) and save it with its training record."""
    from profiler.captioner.train import Progress as Step
    from profiler.captioner.train import TrainOptions, train

    if steps < 1:
        raise InputError(f"--steps: must be at least 1, got {steps}")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder")
    if threads < 1:
        raise InputError(f"--threads: must be at least 1, got {threads}")
    base_folder = None
    if member is not None:
        from profiler.captioner.family import MEMBERS
        from profiler.captioner.inference import model_folder

        if member not in MEMBERS:
            raise InputError(f"--member: expected one of {', '.join(MEMBERS)}, got {member!r}")
        base_folder = str(model_folder(base))
    opts = TrainOptions(steps=steps, seed=seed, member=member, base=base_folder, threads=threads)
    columns = (TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("train", total=steps, info="")

        def show(p: Step) -> None:
            bar.update(task, completed=p.step, info=f"loss {p.train_loss:.3f}")
            if p.val_loss is not None:
                bar.console.print(f"step {p.step}: train loss {p.train_loss:.3f}, val loss {p.val_loss:.3f}, "
                                  f"val scene accuracy {p.val_scene_accuracy:.1%}", highlight=False)

        record = train(opts, out, show)
    test = record["test"]
    console.print(f"saved {out} ({record['parameters']:,} parameters, {record['train_seconds']:.0f} s of training)")
    console.print(f"test ({test['scenes']} held-out scenes): scene accuracy {test['scene_accuracy']:.1%}, "
                  f"BLEU-4 {test['bleu4']:.3f}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("caption")(caption)
    app.command("train-captioner")(train_captioner)
