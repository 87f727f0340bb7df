"""`aiflow demo`: the tiny captioner profiled, planned and run across phone, edge and cloud."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from profiler.errors import InputError

console = Console()


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def register(app: typer.Typer) -> None:
    app.command("demo", help="Profile, plan and run the tiny captioner on a low-end device, an edge box and "
                "a cloud GPU.")(demo)


def demo(
    images: int = typer.Option(4, "--images", help="Held-out test images to caption."),
    repeats: int = typer.Option(3, "--repeats", help="Times each image is captioned per strategy (timed)."),
    network: Path | None = typer.Option(None, "--network",
                                        help="Network file (default: examples/low-end.network.yaml)."),
    refresh_profile: bool = typer.Option(False, "--refresh-profile", help="Measure the profile again."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the test images and results.json."),
) -> None:
    from orchestrator import demo as d
    from orchestrator.network import load_network
    from orchestrator.strategies import describe_assignment, strategy_plans, why_optimal
    from profiler.models import load_adapter
    from profiler.paths import cache_root
    from runtime.local import LocalWorkers

    if images < 1 or repeats < 1:
        raise InputError("--images and --repeats must be at least 1")
    net = load_network(network) if network else d.default_network()
    out = out or cache_root() / "demo"
    console.rule("[bold]aiflow demo[/]: a captioner split across device, edge and cloud")

    console.print("[bold]1/5[/] loading the model", highlight=False)
    adapter = load_adapter(d.DEMO_MODEL)
    if adapter.weights != "trained":
        raise InputError(f"{d.DEMO_MODEL}: the built-in trained weights are missing (profiler/builtin/"
                         f"{d.DEMO_MODEL}/model.safetensors); restore them from the repository, or retrain with "
                         f"`aiflow train-captioner --out profiler/builtin/{d.DEMO_MODEL}`")

    console.print("[bold]2/5[/] profiling it on this machine (cached after the first run)", highlight=False)
    cols = (TextColumn("  {task.fields[what]:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=console, transient=True) as bar:
        task = bar.add_task("profile", total=None, what="")
        profile, ppath, cached = d.cached_profile(
            adapter, net, refresh=refresh_profile,
            progress=lambda done, total, what: bar.update(task, completed=done, total=total, what=what))
    console.print(f"  {'reused' if cached else 'measured'} {ppath.name}; hardware: "
                  f"{', '.join(profile.hardware_classes)}", highlight=False)

    console.print("[bold]3/5[/] planning every strategy on the network", highlight=False)
    strategies = strategy_plans(profile, net)
    K = d.local_dilation(profile, net)

    console.print(f"[bold]4/5[/] writing {images} held-out test images and captioning them unsplit", highlight=False)
    imgs = d.write_test_images(out / "images", images)
    unsplit = d.unsplit_captions(adapter, [i.path for i in imgs])

    console.print(f"[bold]5/5[/] running each strategy through local workers (emulated network, time dilation "
                  f"K = {K:.2f})", highlight=False)
    runs = []
    # one worker per node serves every strategy in turn (each run forgets its plan when it ends)
    with LocalWorkers(d.DEMO_MODEL, net.node_names, threads=d.WORKER_THREADS) as pool, \
            Progress(TextColumn("  {task.description:<14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=console, transient=True) as bar:
        task = bar.add_task("strategies", total=len(strategies))
        for s in strategies:
            bar.update(task, description=s.name)
            runs.append(d.run_strategy(s, d.DEMO_MODEL, net, profile, [i.path for i in imgs], dilation=K,
                                       repeats=repeats, adapter=adapter, pool=pool))
            bar.advance(task)

    _print_captions(imgs, unsplit, runs)
    _print_latency(runs, unsplit, K)
    best = next((r for r in runs if r.strategy.name == "optimal" and r.strategy.plan), None)
    if best is not None:
        plan = best.strategy.plan
        console.print(f"optimal plan ({plan.solver}, {plan.status}, solved in {plan.solve_time_s * 1e3:.0f} ms): "
                      f"{describe_assignment(plan.assignment)}", highlight=False)
    why = why_optimal(strategies)
    if why:
        console.print(why, highlight=False)
    _record(profile, net, runs)
    results = out / "results.json"
    results.write_text(json.dumps(_summary(runs, unsplit, imgs, K), indent=2) + "\n")
    console.print(f"results: {results}; history: `aiflow history runs`", highlight=False)


def _print_captions(imgs, unsplit, runs) -> None:  # noqa: ANN001 - demo-internal types
    table = Table(title="captions of held-out test images", title_justify="left")
    for col in ("image", "true scene", "caption (unsplit model)", "same under every strategy"):
        table.add_column(col)
    for i, img in enumerate(imgs):
        same = all(req.caption == unsplit[i] for r in runs for req in r.requests if req.image == img.path.name)
        table.add_row(img.path.name, img.truth, unsplit[i], "yes" if same else "[red]NO[/]")
    console.print(table)


def _print_latency(runs, unsplit, K: float) -> None:  # noqa: ANN001
    table = Table(title=f"latency per request (measured / K, K = {K:.2f}; median and p90 over the timed requests; "
                        "predicted: the plan's L for each request's caption length, median)",
                  title_justify="left")
    for col, just in (("strategy", "left"), ("placement", "left"), ("predicted ms", "right"),
                      ("measured ms", "right"), ("p90 ms", "right"), ("measured/predicted", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    from orchestrator.strategies import describe_assignment

    for r in runs:
        plan = r.strategy.plan
        if plan is None:
            table.add_row(r.strategy.name, f"[dim]{r.strategy.why_not}[/]", "-", "-", "-", "-")
            continue
        predicted = r.predicted_median_s
        ratio = r.median_s / predicted if predicted else float("nan")
        table.add_row(r.strategy.name, describe_assignment(plan.assignment), _ms(predicted),
                      _ms(r.median_s), _ms(r.p90_s()), f"{ratio:.2f}")
    console.print(table)


def _record(profile, net, runs) -> None:  # noqa: ANN001
    from orchestrator.store import Store

    with Store.open() as store:
        pid = store.save_profile(profile)
        nid = store.save_network(net, origin="demo")
        for r in runs:
            if r.strategy.plan is None:
                continue
            r.plan_id = store.save_plan(r.strategy.plan, profile_id=pid, network_id=nid)
            for req in r.requests:
                store.record_run(r.plan_id, strategy=r.strategy.name, output=req.caption, measured_s=req.measured_s,
                                 predicted_s=req.predicted_s, breakdown=req.breakdown)


def _summary(runs, unsplit, imgs, K: float) -> dict:  # noqa: ANN001
    return {
        "dilation": K,
        "images": [{"file": i.path.name, "truth": i.truth, "unsplit": c} for i, c in zip(imgs, unsplit, strict=True)],
        "strategies": [
            {"name": r.strategy.name, "why_not": r.strategy.why_not,
             "assignment": r.strategy.plan.assignment if r.strategy.plan else None,
             "plan_predicted_s": r.strategy.plan.predicted_latency_s if r.strategy.plan else None,
             "predicted_s": [req.predicted_s for req in r.requests],
             "measured_s": r.measured_s, "median_s": r.median_s if r.measured_s else None,
             "captions": r.captions_by_image(),
             "requests_differing_from_unsplit": r.differs_from(
                 {i.path.name: c for i, c in zip(imgs, unsplit, strict=True)}) if r.requests else None}
            for r in runs
        ],
    }
