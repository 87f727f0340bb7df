"""`aiflow worker` (serve one node) and `aiflow run` (run inputs through workers placed by a plan)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.cli.backend_opts import backend_option, check_cli_backend, open_cli_backend, ray_address_option
from orchestrator.cli.options import (
    check_listen,
    reply_listen_option,
    serve_options,
    threads_option,
    token_option,
)
from profiler.errors import InputError

console = Console()
err_console = Console(stderr=True)


_WORKER = serve_options("worker")
_VERIFIER = serve_options("verifier")


def worker(
    name: str = _WORKER["name"],
    listen: str = _WORKER["listen"],
    model: str = typer.Option(..., "--model", help="Built-in model name or a Hugging Face model folder."),
    token: str | None = _WORKER["token"],
    threads: int | None = threads_option(),
    state_timeout: float = _WORKER["state_timeout"],
    release_unused: bool = typer.Option(False, "--release-unused",
                                        help="Drop the weights of units no applied plan gives this node."),
    join: str | None = typer.Option(None, "--join", help="URL of a running daemon to join once serving."),
    hardware: str | None = typer.Option(None, "--hardware", help="With --join: this node's hardware class "
                                        "(default: this machine's, e.g. cpu-epyc-7b13-2t)."),
    mem_bytes: float | None = typer.Option(None, "--mem-bytes", help="With --join: memory units may use "
                                           "(default: this machine's total)."),
    advertise: str | None = typer.Option(None, "--advertise", help="With --join: HOST:PORT the daemon and the "
                                         "other workers reach this worker at (default: the listening address)."),
    link: list[str] = typer.Option([], "--link", help="With --join: NODE=BANDWIDTH_BPS[,LATENCY_S], a link to a "
                                   "node of the network (repeat for several)."),
    tier: str | None = typer.Option(None, "--tier", help="With --join: device, edge or cloud."),
    api_token: str | None = typer.Option(None, "--api-token", envvar="AIFLOW_API_TOKEN",
                                         help="With --join: the daemon API's token, if it needs one."),
) -> None:
    """Serve one node: run the units a plan gives it and pass activations on. Prints READY HOST:PORT."""
    from profiler.models import resolve_folder
    from runtime.worker import serve

    check_listen(listen)
    resolve_folder(model)                     # a bad model name is a one-line error before serving
    on_ready = None
    if join is not None:
        request = _join_request(name, hardware, mem_bytes, link, tier)
        on_ready = _joiner(join, request, advertise, api_token)
    elif link or advertise or hardware or mem_bytes or tier:
        raise InputError("--link, --advertise, --hardware, --mem-bytes and --tier go with --join URL")
    # the controller's credential comes only from the environment (kept out of `ps`): with it, plans and
    # opens are taken only from a controller that holds it (docs/runtime.md, Security)
    asyncio.run(serve(name, listen, model, token=token, threads=threads, state_timeout_s=state_timeout,
                      release_unused=release_unused, on_ready=on_ready,
                      controller_token=os.environ.get("AIFLOW_CONTROLLER_TOKEN") or None, tls=_tls()))


def _tls() -> Any:
    """Mutual TLS from $AIFLOW_TLS_CA, $AIFLOW_TLS_CERT, $AIFLOW_TLS_KEY (all or none), else None."""
    from runtime.transport import Tls

    try:
        return Tls.from_env()
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _join_request(name: str, hardware: str | None, mem_bytes: float | None, links: list[str],
                  tier: str | None) -> dict[str, Any]:
    from profiler.hardware import hardware_class

    if not links:
        raise InputError("--link: a joining worker needs at least one link, e.g. --link edge=2e7,0.005")
    parsed = []
    for spec in links:
        node, _, rest = spec.partition("=")
        parts = rest.split(",")
        try:
            bw = float(parts[0])
            lat = float(parts[1]) if len(parts) > 1 else 0.0
        except ValueError:
            raise InputError(f"--link: expected NODE=BANDWIDTH_BPS[,LATENCY_S], got {spec!r}") from None
        if not node or len(parts) > 2 or not (bw > 0 and math.isfinite(bw)) or not lat >= 0:
            raise InputError(f"--link: expected NODE=BANDWIDTH_BPS[,LATENCY_S], got {spec!r}")
        parsed.append({"to": node, "bandwidth_bps": bw, "latency_s": lat})
    if mem_bytes is None:
        import os
        mem_bytes = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return {"name": name, "hardware": hardware or hardware_class(), "mem_bytes": mem_bytes, "links": parsed,
            **({"tier": tier} if tier else {})}


def _joiner(url: str, request: dict[str, Any], advertise: str | None, api_token: str | None) -> Any:
    async def join(address: str) -> None:
        import httpx

        body = {**request, "address": advertise or address}
        headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
        try:
            async with httpx.AsyncClient(timeout=660.0, trust_env=False) as client:
                r = await client.post(url.rstrip("/") + "/v1/nodes", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise InputError(f"--join: no aiflow daemon answers at {url} ({type(exc).__name__})") from None
        if r.status_code != 200:
            from orchestrator.cli.daemon_cmd import error_detail
            raise InputError(f"--join: {url} refused: HTTP {r.status_code}: {error_detail(r)}")
        print(f"JOINED {url} ({r.json().get('profile')})", flush=True)

    return join


def _dilation(value: str, profile: Any, network: Any, local_hw: str) -> float:
    from runtime.stages import dilation_factor

    if value == "auto":
        if profile is None:
            return 1.0
        return dilation_factor(profile, network, _stand_in(profile, local_hw))
    try:
        k = float(value)
    except ValueError:
        raise InputError(f"--dilation: expected 'auto' or a number >= 1, got {value!r}") from None
    if not math.isfinite(k) or k < 1:
        raise InputError(f"--dilation: must be >= 1, got {value}")
    return k


def _stand_in(profile: Any, local_hw: str) -> str:
    """The class whose latencies say how fast this machine is: its own, else (a profile measured on
    another CPU, as the shipped example is) the profile's first class measured on a CPU, with a note."""
    from profiler.hardware import measured_cpu_classes

    classes = profile.hardware_classes
    if local_hw in classes:
        return local_hw
    others = [k for k in measured_cpu_classes(profile.hardware) if k in classes]
    if not others:
        raise InputError(f"--dilation auto: the profile has no latencies for this machine's class {local_hw!r} "
                         "(give --local-hardware or a number)")
    err_console.print(f"aiflow: note: the profile has no latencies for this machine's class {local_hw}; time "
                      f"dilation K is computed from {others[0]} ({profile.hardware[others[0]]['cpu_model']}, another "
                      "CPU): give --local-hardware or --dilation to choose", highlight=False)
    return others[0]


def _find_profile(path: Path | None, model: str, n_units: int) -> tuple[Any, str | None]:
    """The profile from --profile, else the newest stored profile of the model (with the right units)."""
    if path is not None:
        from profiler.profile import load_profile
        return load_profile(path), str(path)
    try:
        from orchestrator.store import Store
        store = Store.open()
        for row in store.list_profiles(model=model):
            prof = store.get_profile(row.id)
            if len(prof.units) == n_units:
                return prof, f"stored profile #{row.id}"
    except Exception:  # noqa: BLE001 - no store, or an unreadable one: run without a prediction
        pass
    return None, None


def _predict(profile: Any, network: Any, assignment: list[str], steps: int) -> float | None:
    """L of the plan for the number of decoder passes this request made."""
    if profile is None:
        return None
    from orchestrator.costmodel import latency_for_steps

    return latency_for_steps(profile, network, assignment, steps)


def _record(plan: Any, model: str, rows: list[dict[str, Any]]) -> str | None:
    try:
        from orchestrator.store import Store
        store = Store.open()
        for r in rows:
            store.record_run(None, strategy="plan", output=r["output"] or "", measured_s=r["measured_scaled_s"],
                             predicted_s=r["predicted_s"], breakdown=r["breakdown"], model=model)
    except Exception as exc:  # noqa: BLE001 - recording history must never lose the run's output
        return f"not recorded in the history store: {type(exc).__name__}: {exc}"
    return None


def run(
    inputs: list[str] = typer.Argument(..., help="Image files (a captioner) or prompt texts (an LLM).",
                                       show_default=False),
    model: str = typer.Option(..., "--model", help="Built-in model name or a Hugging Face model folder."),
    network: Path = typer.Option(..., "--network", help="Network file (aiflow.network/v1)."),
    plan: Path = typer.Option(..., "--plan", help="Plan file (aiflow.plan/v1)."),
    profile: Path | None = typer.Option(None, "--profile", help="Profile for the prediction and emulated compute "
                                        "(default: the newest stored profile of the model)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per input."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", help="Bound on generated tokens."),
    no_emulation: bool = typer.Option(False, "--no-emulation", help="No emulated links, slowdowns or dilation."),
    dilation: str = typer.Option("auto", "--dilation", help="Time dilation K, or 'auto' (from the profile)."),
    local_hardware: str | None = typer.Option(None, "--local-hardware",
                                              help="This machine's hardware class in the profile (default: detected)."),
    compression: str | None = typer.Option(None, "--compression", help="Per-hop activation compression: fp16, int8."),
    concurrency: int = typer.Option(1, "--concurrency", help="Requests in flight at once."),
    record: bool = typer.Option(True, "--record/--no-record", help="Record each request in the history store."),
    kernel_links: bool = typer.Option(False, "--kernel-links",
                                      help="Each node in a network namespace, link rates shaped by tc tbf "
                                           "(root only); latencies stay in the transport."),
    draft: str | None = typer.Option(None, "--draft", help="Draft model for a cooperative plan: it proposes on "
                                     "the source and --model verifies where the plan says."),
    draft_profile: Path | None = typer.Option(None, "--draft-profile", help="With --draft: the draft's profile "
                                              "(with its measured acceptance) for pacing and the prediction."),
    token: str | None = token_option(),
    reply_listen: str | None = reply_listen_option(),
    backend: str = backend_option(),
    ray_address: str | None = ray_address_option(),
) -> None:
    """Run inputs through workers placed by a plan; print output, measured vs predicted latency, breakdown."""
    from orchestrator.apply import load_network_and_plan
    from profiler.hardware import hardware_class, local_key, native_class
    from profiler.models import load_adapter
    from runtime.session import run_on_network

    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens: must be at least 1, got {max_new_tokens}")
    if compression not in (None, "none", "fp16", "int8"):
        raise InputError(f"--compression: expected fp16 or int8, got {compression!r}")
    if concurrency < 1:
        raise InputError(f"--concurrency: must be at least 1, got {concurrency}")
    if backend != "grpc" or ray_address:
        check_cli_backend(backend, ray_address, cooperative=draft is not None, kernel_links=kernel_links)
    if draft is not None:
        _run_cooperative(inputs, model, draft, network, plan, profile, draft_profile, as_json, max_new_tokens,
                         no_emulation, dilation, local_hardware, record)
        return
    if draft_profile is not None:
        raise InputError("--draft-profile goes with --draft")
    adapter = load_adapter(model)
    net, pl, base = load_network_and_plan(network, plan, adapter)
    prof, prof_source = _find_profile(profile, model, len(adapter.units()))
    if prof is not None and getattr(pl, "reductions", None):
        from orchestrator.reductions import profile_for_plan

        try:
            prof = profile_for_plan(prof, pl)       # the plan's token reduction: its bytes and reduce cost
        except ValueError as exc:
            raise InputError(f"--plan: {exc}") from None
    emulate = not no_emulation
    # this machine's class as the profile names it (a legacy "cpu-<N>c" key counts when its fingerprint matches)
    local_hw = local_hardware or (local_key(prof.hardware, prof.hardware_classes, hardware_class()) if prof
                                  else hardware_class())
    native_hw, threads = native_class((n.hardware for n in net.nodes), local_hw) if emulate else (None, None)
    native = native_hw is not None
    if native:
        # Every node is this machine's class: compute runs at native speed (no stretching to the
        # profile, no dilation) and only the links are played, so measured/predicted tests the
        # profile, the transfer model and the runtime's overheads together.
        local_hw, k = native_hw, 1.0
        shown = f", {threads} torch thread(s) per worker" if threads else ""
        err_console.print(f"native run: every node is of this machine's class ({local_hw}): compute at native "
                          f"speed{shown}, no dilation; links emulated", highlight=False)
    else:
        k = _dilation(dilation, prof, net, local_hw) if emulate else 1.0
    stages = open_cli_backend(backend, ray_address, net, kernel_links=kernel_links, token=token)  # closed on exit
    results = run_on_network(model, net, pl, inputs, max_new_tokens=max_new_tokens, emulate=emulate, profile=prof,
                             dilation=k, compression=compression, trace_base=base, adapter=adapter,
                             concurrency=concurrency, kernel_links=kernel_links,
                             native_hardware=local_hw if native else None, token=token, reply_listen=reply_listen,
                             backend=stages, threads=threads)
    rows = []
    for r in results:
        res = r.result
        predicted = _predict(prof, net, list(pl.assignment), res.steps)
        rows.append({"input": r.input, "output": r.text, "tokens": r.tokens, "steps": res.steps,
                     "measured_s": res.measured_s, "dilation": res.dilation, "measured_scaled_s": res.scaled_s,
                     "predicted_s": predicted, "plan_predicted_s": pl.predicted_latency_s,
                     "ratio": res.scaled_s / predicted if predicted else None,
                     "emulated": res.emulated, "breakdown": res.breakdown(scale=True)})
    note = _record(pl, model, rows) if record else None
    if as_json:
        for row in rows:
            print(json.dumps(row))
    else:
        _print(rows, prof_source, k, emulate)
    if note:
        print(f"aiflow run: {note}", file=sys.stderr)


def _run_cooperative(inputs: list[str], model: str, draft: str, network: Path, plan: Path, profile: Path | None,
                     draft_profile: Path | None, as_json: bool, max_new_tokens: int, no_emulation: bool,
                     dilation: str, local_hardware: str | None, record: bool) -> None:
    """`aiflow run --draft`: the cooperative plan's requests, measured beside L_coop of each request."""
    from orchestrator.apply import load_network_and_plan
    from orchestrator.cooperative import CooperativeUnsupported, latency_for_rounds
    from profiler.hardware import hardware_class
    from profiler.models import load_adapter
    from runtime.cooperative_session import run_cooperative

    target_a, draft_a = load_adapter(model), load_adapter(draft)
    net, pl, base = load_network_and_plan(network, plan)
    if pl.mode != "cooperative" or pl.draft_assignment is None or pl.k is None:
        raise InputError(f"{plan}: not a cooperative plan (make one with aiflow plan --draft-profile)")
    prof, prof_source = _find_profile(profile, model, len(target_a.units()))
    dprof, _ = _find_profile(draft_profile, draft, len(draft_a.units()))
    if dprof is not None and dprof.speculative is None:
        raise InputError(f"{draft_profile or draft}: the draft profile has no measured acceptance "
                         "(aiflow profile speculative)")
    emulate = not no_emulation
    local_hw = local_hardware or hardware_class()
    k = 1.0
    if emulate and prof is not None and dprof is not None:
        k = max(_dilation(dilation, prof, net, local_hw), _dilation(dilation, dprof, net, local_hw))
    results = run_cooperative(model, draft, net, pl, inputs, max_new_tokens=max_new_tokens, emulate=emulate,
                              target_profile=prof, draft_profile=dprof, dilation=k, trace_base=base,
                              adapters=(target_a, draft_a))
    rows = []
    for r in results:
        res = r.result
        predicted = None
        if prof is not None and dprof is not None:
            try:
                predicted = latency_for_rounds(prof, dprof, net, pl.assignment, pl.draft_assignment, pl.k,
                                               res.rounds, res.draft_passes)
            except CooperativeUnsupported as exc:
                raise InputError(f"--draft-profile: {exc}") from None
        rows.append({"input": r.input, "output": r.text, "tokens": r.tokens, "mode": "cooperative", "k": pl.k,
                     "rounds": res.rounds, "draft_passes": res.draft_passes, "accepted": res.accepted,
                     "measured_s": res.measured_s, "dilation": res.dilation, "measured_scaled_s": res.scaled_s,
                     "predicted_s": predicted, "plan_predicted_s": pl.predicted_latency_s,
                     "ratio": res.scaled_s / predicted if predicted else None, "emulated": emulate,
                     "paced": emulate and prof is not None and dprof is not None, "bytes": res.bytes_sent})
    note = None
    if record:
        note = _record(pl, model, [{**r, "breakdown": {"bytes": r["bytes"], "rounds": r["rounds"]}} for r in rows])
    if as_json:
        for row in rows:
            print(json.dumps(row))
    else:
        for row in rows:
            console.print(f"[bold]{row['input']}[/]: {row['output']}", highlight=False, soft_wrap=True)
            console.print(f"  k={row['k']}: {row['rounds']} rounds, {row['draft_passes']} draft passes, "
                          f"{row['accepted']} kept; measured {row['measured_s']:.4f} s"
                          + (f", / K ({row['dilation']:.3g}) {row['measured_scaled_s']:.4f} s" if emulate else "")
                          + (f"; predicted {row['predicted_s']:.4f} s ({prof_source})" if row["predicted_s"] else ""),
                          highlight=False)
    if note:
        print(f"aiflow run: {note}", file=sys.stderr)


def _print(rows: list[dict[str, Any]], prof_source: str | None, k: float, emulate: bool) -> None:
    for row in rows:
        console.print(f"[bold]{row['input']}[/]: {row['output'] if row['output'] is not None else '(no text)'}",
                      highlight=False, soft_wrap=True)
        t = Table(show_header=True, header_style="bold", box=None)
        t.add_column("latency")
        t.add_column("seconds", justify="right")
        t.add_row("measured (wall clock)", f"{row['measured_s']:.4f}")
        if emulate:
            t.add_row(f"measured / K (K = {k:.3g}): the emulated network's", f"{row['measured_scaled_s']:.4f}")
        if row["predicted_s"] is not None:
            t.add_row(f"predicted for {row['steps']} decoder passes ({prof_source})", f"{row['predicted_s']:.4f}")
            t.add_row("ratio measured / predicted", f"{row['ratio']:.3f}")
        t.add_row("plan file's prediction", f"{row['plan_predicted_s']:.4f}")
        console.print(t)
        b = Table(show_header=True, header_style="bold", box=None,
                  title="breakdown" + (" (divided by K)" if emulate else ""))
        b.add_column("where")
        b.add_column("seconds", justify="right")
        for node, s in row["breakdown"]["compute_s"].items():
            b.add_row(f"compute on {node}", f"{s:.4f}")
        for hop, s in row["breakdown"]["transfer_s"].items():
            b.add_row(f"link {hop} ({row['breakdown']['transfer_bytes'].get(hop, 0)} bytes)", f"{s:.4f}")
        if row["breakdown"]["overrun_s"] > 0:
            b.add_row("real compute beyond its emulated target (raw)", f"{row['breakdown']['overrun_s']:.4f}")
        console.print(b)


def verifier(
    name: str = _VERIFIER["name"],
    listen: str = _VERIFIER["listen"],
    model: str = typer.Option(..., "--model", help="The target model it verifies with (e.g. captioner-target)."),
    token: str | None = _VERIFIER["token"],
    threads: int | None = threads_option(),
    state_timeout: float = _VERIFIER["state_timeout"],
) -> None:
    """Serve cooperative decoding's target on one node: check a draft's proposals in one pass each. Prints
    READY HOST:PORT; name it as the node's verifier_address in the network file."""
    from profiler.models import resolve_folder
    from runtime.cooperative import serve as serve_verifier

    check_listen(listen)
    resolve_folder(model)                     # a bad model name is a one-line error before serving
    asyncio.run(serve_verifier(name, listen, model, token=token, threads=threads, state_timeout_s=state_timeout,
                               tls=_tls()))


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("verifier")(verifier)
    app.command("run")(run)
