"""`aiflow profile`: measure what each unit of a model costs, and read profiles back.

    aiflow profile MODEL [--input image=64,prompt=16,new=16] [--hardware NAME] [--estimate DEVICE ...]
                         [--out FILE] [--repeats N] [--warmup N] [--threads N] [--no-store]
    aiflow profile speculative DRAFT_PROFILE --draft MODEL --target MODEL [--ks 1,2,3,4,6,8] [--samples N]
                               [--prompt TEXT ...] [--max-new-tokens N] --out FILE
    aiflow profile reductions PROFILE [--model M] [--methods dpc,tome] [--keep 48,32,24,16,8] [--scenes N] --out FILE
    aiflow profile merge A B [...] --out C
    aiflow profile estimate PROFILE DEVICE [...] --out C
    aiflow profile list
    aiflow profile show ID|FILE
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.cli.groups import default_group
from profiler.errors import InputError

if TYPE_CHECKING:
    from profiler.profile import Profile

app = typer.Typer(cls=default_group("model"), no_args_is_help=True, add_completion=False,
                  help="Profile a model (aiflow profile MODEL), or merge, estimate, list and show profiles.")
# Tables are wide (a column per hardware class): when output is not a terminal, do not squeeze them to 80.
console = Console() if Console().is_terminal else Console(width=200)
err_console = Console(stderr=True)


# -- formatting --------------------------------------------------------------------------------
def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def human_flops(f: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if f >= size:
            return f"{f / size:.2f} {unit}"
    return f"{f:.0f}"


def human_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} µs"


def latency_cell(profile: Profile, unit_index: int, hw: str, phase: str) -> str:
    u = profile.units[unit_index]
    t = u.latency_s.get(hw, {}).get(phase)
    if t is None:
        return "-"
    if u.source.get(hw) == "estimated":
        return f"~{human_seconds(t)}"
    spread = u.spread.get(hw, {}).get(phase)
    return human_seconds(t) + (f" ±{spread * 50:.0f}%" if spread is not None else "")


def profile_table(profile: Profile) -> Table:
    """One row per (unit, phase): params, memory, FLOPs, bytes out, latency on every hardware class."""
    hws = profile.hardware_classes
    title = f"{profile.model} ({profile.weights or 'weights unknown'}), input {profile.input or '-'}"
    table = Table(title=title, title_justify="left", caption="latency per hardware class: seconds of one pass",
                  caption_justify="left")
    for col, justify in (("#", "right"), ("unit", "left"), ("params", "right"), ("mem", "right"),
                         ("phase", "left"), ("FLOPs", "right"), ("out", "right")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for hw in hws:
        table.add_column(hw, justify="right", no_wrap=True)
    for i, u in enumerate(profile.units):
        phases = [p.name for p in profile.phases if p.first <= i <= p.last]
        for k, ph in enumerate(phases):
            head = [str(i), u.name, human_bytes(u.param_bytes), human_bytes(u.mem_bytes)] if k == 0 else [""] * 4
            row = [*head, ph, human_flops(u.flops.get(ph, 0.0)), human_bytes(u.out_bytes.get(ph, 0.0))]
            row += [latency_cell(profile, i, hw, ph) for hw in hws]
            table.add_row(*row, end_section=k == len(phases) - 1)
    return table


def totals_line(profile: Profile) -> str:
    """Compute time of one request per hardware class: sum over phases of repeat x the phase's units."""
    parts = []
    for hw in profile.hardware_classes:
        total = 0.0
        for ph in profile.active_phases:
            total += ph.repeat * sum(profile.units[i].latency_s.get(hw, {}).get(ph.name, 0.0)
                                     for i in range(ph.first, ph.last + 1))
        parts.append(f"{hw} {human_seconds(total)}")
    phases = ", ".join(f"{p.name} x{p.repeat}" for p in profile.phases)
    return f"one request ({phases}), compute only: " + "; ".join(parts)


def show_profile(profile: Profile) -> None:
    console.print(profile_table(profile))
    console.print(totals_line(profile), highlight=False)
    console.print("latency: median of the timed runs ± half the p10-p90 spread; ~ marks a roofline estimate",
                  style="dim", highlight=False)


# -- store -------------------------------------------------------------------------------------
def _store_profile(profile: Profile) -> str:
    """Save to the history store; the line to print (the store is optional at this stage)."""
    try:
        from orchestrator.store import Store
    except ImportError:
        return "not stored: the history store is not installed"
    with Store.open() as store:
        pid = store.save_profile(profile)
        return f"stored as profile {pid} in {store.url}"


def _open_store():  # noqa: ANN202 - the Store type is imported lazily
    try:
        from orchestrator.store import Store
    except ImportError:
        raise InputError("the history store is not installed (orchestrator.store)") from None
    return Store.open()


def default_out(model: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-") or "model"
    return Path(f"{safe}.profile.json")


def _at_least_one(**options: int | None) -> None:
    """Each given count option (None: not given) is at least 1, or a one-line InputError naming its flag."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")


def _check_out(out: Path) -> None:
    if out.exists() and out.is_dir():
        raise InputError(f"--out: {out} is a folder, expected a file name")
    if not out.parent.exists():
        raise InputError(f"--out: {out.parent}: no such folder")


def _with_overheads(profile: Profile) -> Profile:
    """The profile with this host's runtime overheads under its measured class, with progress shown."""
    from runtime.overheads import measure_overheads, with_overheads

    with console.status("measuring the runtime's overheads on this host"):
        o = measure_overheads()
    console.print(f"runtime overheads on {profile.hardware_classes[0]}: {o.hop_s * 1e3:.2f} ms per hop, "
                  f"{o.pass_s * 1e3:.2f} ms per pass, {o.request_s * 1e3:.2f} ms per request", highlight=False)
    return with_overheads(profile, o)


# -- commands ----------------------------------------------------------------------------------
@app.command("model", help="Profile MODEL (a built-in name or a Hugging Face folder) on this machine.")
def profile_model(
    model: str = typer.Argument(..., help="Built-in name (tiny-captioner, tiny-gpt2, ...) or a model folder."),
    input_spec: str | None = typer.Option(None, "--input", help="Request shape: image=PX,prompt=N,new=N,batch=N."),
    hardware: str | None = typer.Option(None, "--hardware", help="This machine's class name (default "
                                          "cpu-<model>-<threads>t, e.g. cpu-epyc-7b13-2t)."),
    estimate: list[str] = typer.Option([], "--estimate", help="Device YAML (or a shipped name: h200, "
                                       "jetson-orin-nano, phone-a78) to add roofline estimates for; repeatable."),
    out: Path | None = typer.Option(None, "--out", help="Profile file to write (default MODEL.profile.json)."),
    repeats: int = typer.Option(10, "--repeats", help="Timed runs per unit and phase (the median is kept)."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed runs before timing."),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (default: torch's own choice)."),
    device: str = typer.Option("cpu", "--device", help="Where the units run: cpu, or cuda (this machine's GPU; "
                               "the class is then named after it, e.g. nvidia-h200)."),
    overheads: bool = typer.Option(True, "--overheads/--no-overheads", help="Also measure the runtime's own "
                                   "costs on this host (per request, per hop, codec; about 6 s) into the profile."),
    store: bool = typer.Option(True, "--store/--no-store", help="Save the profile in the history database."),
) -> None:
    from profiler.build import parse_input_spec

    spec = parse_input_spec(input_spec)
    _at_least_one(repeats=repeats)
    if warmup < 0:
        raise InputError(f"--warmup: must be 0 or more, got {warmup}")
    _at_least_one(threads=threads)
    if hardware is not None and not hardware.strip():
        raise InputError("--hardware: empty name")
    from profiler.hardware import check_device, load_device

    torch_device = check_device(device)
    devices = [load_device(e) for e in estimate]   # bad device files fail before minutes of profiling
    if out is not None:
        _check_out(out)

    import torch

    from profiler.build import build_profile
    from profiler.estimate import estimate_profile
    from profiler.models import load_adapter
    from profiler.profile import save_profile

    if threads is not None:
        torch.set_num_threads(threads)
    with console.status(f"loading {model}"):
        adapter = load_adapter(model)
        adapter.model.to(torch_device)
    columns = (TextColumn("[bold]profiling[/] {task.fields[what]:<28}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("profile", total=None, what="")

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, what=what)

        profile = build_profile(adapter, spec, hardware=hardware, repeats=repeats, warmup=warmup, progress=progress)
    if overheads and device == "cpu":
        profile = _with_overheads(profile)
    for dev in devices:
        profile = estimate_profile(profile, dev)
    path = out or default_out(profile.model)
    save_profile(profile, path)
    show_profile(profile)
    console.print(f"wrote {path}", highlight=False)
    if store:
        console.print(_store_profile(profile), highlight=False)


def parse_ks(text: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4]; a one-line InputError otherwise."""
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise InputError(f"--ks: expected whole numbers separated by commas, got {text!r}") from None
    if not ks or ks[0] < 1 or ks[-1] > 32:
        raise InputError(f"--ks: draft lengths between 1 and 32, got {text!r}")
    return ks


@app.command("speculative", help="Measure a draft against its target (acceptance per k) into the draft's profile.")
def speculative_cmd(
    draft_profile: Path = typer.Argument(..., help="The draft model's profile (from `aiflow profile MODEL`)."),
    draft: str = typer.Option(..., "--draft", help="The draft model (built-in name or folder)."),
    target: str = typer.Option(..., "--target", help="The target model it proposes for."),
    ks: str = typer.Option("1,2,3,4,6,8", "--ks", help="Draft lengths k to measure."),
    samples: int = typer.Option(50, "--samples", help="Sample inputs: generated validation scenes (captioners)."),
    prompt: list[str] = typer.Option([], "--prompt", help="Sample prompts for a causal LM; repeatable."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Tokens per request at most."),
    out: Path = typer.Option(..., "--out", help="The draft profile with its `speculative` section."),
    threads: int = typer.Option(1, "--threads", help="torch threads (r_k is timed with them)."),
) -> None:
    from profiler.hardware import hardware_class
    from profiler.models import load_adapter
    from profiler.profile import load_profile, save_profile
    from profiler.speculative import encoder_range
    from profiler.speculative_profile import measure_speculative

    k_list = parse_ks(ks)
    _at_least_one(threads=threads, samples=samples, max_new_tokens=max_new_tokens)
    _check_out(out)
    base = load_profile(draft_profile)
    import torch

    torch.set_num_threads(threads)
    d, t = load_adapter(draft), load_adapter(target)
    if base.model != d.name:
        raise InputError(f"{draft_profile}: a profile of {base.model}, not of the draft {d.name}")
    if d.eos_token_id != t.eos_token_id or d.decode_tokens(list(range(8))) != t.decode_tokens(list(range(8))):
        raise InputError(f"--draft/--target: {d.name} and {t.name} do not share a tokenizer")
    if encoder_range(t):
        from profiler.captioner.data import fixed_examples

        inputs = [e.pixel_values for e in fixed_examples("val", samples)]
        where = f"{samples} generated validation scenes"
    else:
        if not prompt:
            raise InputError("--prompt: give sample prompts for a causal LM")
        inputs = [torch_ids(t.encode_text(p)) for p in prompt]
        where = f"{len(prompt)} prompts"
    with console.status(f"measuring {d.name} against {t.name} on {where}"):
        prof = measure_speculative(base, d, t, inputs, k_list, max_new_tokens, hardware_class(threads=threads))
    save_profile(prof, out)
    table = Table(title=f"{d.name} proposing for {t.name} ({where})", title_justify="left")
    for col in ("k", "acceptance", "rounds", "draft passes", "tokens", "r_k"):
        table.add_column(col, justify="right")
    assert prof.speculative is not None
    for k, st in prof.speculative.k.items():
        table.add_row(k, f"{st.acceptance:.3f}", f"{st.rounds:.2f}", f"{st.draft_passes:.2f}", f"{st.tokens:.2f}",
                      f"{st.verify_ratio:.2f}")
    console.print(table)
    console.print(f"wrote {out}", highlight=False)


def torch_ids(ids: list[int]):  # noqa: ANN201 - torch is imported lazily
    import torch

    if not ids:
        raise InputError("--prompt: a prompt encodes to no tokens")
    return torch.tensor([ids], dtype=torch.long)


def parse_reductions(methods: str, keeps: str) -> list:  # noqa: ANN201 - Reductions, imported lazily
    """"dpc,tome" x "48,24" -> [Reduction] (every method at every keep); a one-line InputError otherwise."""
    from profiler.token_merge import METHODS, Reduction

    names = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if not names or bad:
        raise InputError(f"--methods: expected some of {', '.join(METHODS)}, got {methods!r}")
    try:
        ks = sorted({int(x) for x in keeps.split(",") if x.strip()}, reverse=True)
    except ValueError:
        raise InputError(f"--keep: expected whole numbers separated by commas, got {keeps!r}") from None
    if not ks or ks[-1] < 2:
        raise InputError(f"--keep: token counts of at least 2, got {keeps!r}")
    return [Reduction(m, k) for m in names for k in ks]


@app.command("reductions", help="Measure token-reduction options of the encoder output into the profile.")
def reductions_cmd(
    file: Path = typer.Argument(..., help="The model's profile (from `aiflow profile MODEL`)."),
    model: str = typer.Option("tiny-captioner", "--model", help="Captioner whose caption quality is measured."),
    methods: str = typer.Option("dpc,tome", "--methods", help="Merging methods: dpc, tome."),
    keep: str = typer.Option("48,32,24,16,8", "--keep", help="Tokens kept (the CLS token included)."),
    scenes: int = typer.Option(500, "--scenes", help="Held-out test scenes scored per option."),
    threads: int = typer.Option(1, "--threads", help="torch threads (the reduction is timed with them)."),
    out: Path = typer.Option(..., "--out", help="The profile with its `reductions` section."),
) -> None:
    from profiler.hardware import hardware_class
    from profiler.profile import load_profile, save_profile
    from profiler.reduction_profile import build_reductions, with_reductions

    wanted = parse_reductions(methods, keep)
    _at_least_one(scenes=scenes, threads=threads)
    _check_out(out)
    base = load_profile(file)
    import torch

    torch.set_num_threads(threads)
    with console.status(f"scoring {len(wanted)} reductions of {base.model}'s encoder output on {scenes} test scenes"):
        try:
            section = build_reductions(base, model, wanted, scenes=scenes, local_hw=hardware_class(threads=threads))
        except ValueError as exc:
            raise InputError(str(exc)) from None
    save_profile(with_reductions(base, section), out)
    table = Table(title=f"token reduction of the {section.tokens} x {section.dim} encoder output "
                        f"({section.model}, {scenes} test scenes, unreduced {section.base_accuracy:.1f}%)",
                  title_justify="left")
    for col in ("option", "bytes", "ratio", "scene accuracy", "lost (points)", "same caption", "reduce"):
        table.add_column(col, justify="left" if col == "option" else "right")
    for o in section.options:
        local = [s for hw, s in o.reduce_s.items() if o.source.get(hw) == "measured"]
        table.add_row(o.label, f"{o.bytes:.0f}", f"{o.bytes / section.bytes:.3f}", f"{o.scene_accuracy:.1f}%",
                      f"{o.quality_loss:.1f}", f"{o.agreement:.1f}%", human_seconds(local[0]) if local else "-")
    console.print(table)
    console.print(f"wrote {out}", highlight=False)


@app.command("merge", help="Combine profiles of one model from several hardware classes into one file.")
def merge(
    files: list[Path] = typer.Argument(..., help="Profile files (two or more)."),
    out: Path = typer.Option(..., "--out", help="The merged profile file to write."),
) -> None:
    from profiler.merge import merge_profiles
    from profiler.profile import load_profile, save_profile

    if len(files) < 2:
        raise InputError("merge: give at least two profile files")
    _check_out(out)
    profiles = [load_profile(f) for f in files]
    merged, replaced = merge_profiles(profiles, [str(f) for f in files])
    save_profile(merged, out)
    if replaced:
        err_console.print(f"note: later files replaced the entries of {', '.join(replaced)}", highlight=False)
    console.print(f"wrote {out}: {merged.model}, hardware {', '.join(merged.hardware_classes)}", highlight=False)


@app.command("estimate", help="Add roofline estimates for described devices to a measured profile.")
def estimate_cmd(
    file: Path = typer.Argument(..., help="A profile measured with `aiflow profile`."),
    devices: list[str] = typer.Argument(..., help="Device YAML files or shipped names (h200, ...)."),
    out: Path = typer.Option(..., "--out", help="The profile file to write."),
) -> None:
    from profiler.estimate import estimate_profile
    from profiler.hardware import load_device
    from profiler.profile import load_profile, save_profile

    _check_out(out)
    profile = load_profile(file)
    for dev in [load_device(d) for d in devices]:
        profile = estimate_profile(profile, dev)
    save_profile(profile, out)
    show_profile(profile)
    console.print(f"wrote {out}", highlight=False)


@app.command("list", help="Profiles in the history store, newest first.")
def list_cmd(model: str | None = typer.Option(None, "--model", help="Only this model's profiles.")) -> None:
    with _open_store() as store:
        rows = store.list_profiles(model=model)
    table = Table(title=f"{len(rows)} stored profile{'s' if len(rows) != 1 else ''}", title_justify="left")
    for col in ("id", "model", "weights", "hardware", "units", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r.id), r.model, r.weights or "-", ", ".join(r.hardware), str(r.units),
                      r.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


@app.command("show", help="Print a profile: a stored profile id, or a profile file.")
def show(ref: str = typer.Argument(..., help="Stored profile id, or a profile file.")) -> None:
    from profiler.profile import load_profile

    path = Path(ref)
    if path.exists():
        profile = load_profile(path)
    elif ref.isdigit():
        with _open_store() as store:
            profile = store.get_profile(int(ref))
    else:
        raise InputError(f"{ref}: no such profile file (nor a stored profile id)")
    show_profile(profile)
