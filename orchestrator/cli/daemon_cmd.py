"""`aiflow daemon` (the orchestrator service) and `aiflow status` (what a running daemon is doing)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.cli.backend_opts import backend_option, check_cli_backend, open_cli_backend, ray_address_option
from orchestrator.cli.options import reply_listen_option
from profiler.errors import InputError

console = Console()
err = Console(stderr=True)
DEFAULT_API = "127.0.0.1:8765"


def daemon(
    model: str = typer.Option(..., "--model", help="Built-in model name or a Hugging Face model folder."),
    network: Path = typer.Option(..., "--network", help="Network file (aiflow.network/v1). Nodes without an "
                                 "`address` get a local worker; links between local nodes are emulated."),
    profile: Path | None = typer.Option(None, "--profile", help="Profile file (default: the newest stored profile "
                                        "of the model covering the network's hardware, else profile it now)."),
    draft: str | None = typer.Option(None, "--draft", help="A draft model of the same family (e.g. captioner-draft): "
                                     "the re-solve also considers cooperative plans (the draft proposes on the "
                                     "source, the model verifies) and chooses the mode and k."),
    draft_profile: Path | None = typer.Option(None, "--draft-profile", help="The draft's profile with its "
                                              "acceptance measured against --model (aiflow profile speculative); "
                                              "needed with --draft."),
    max_quality_loss: float = typer.Option(1.0, "--max-quality-loss", help="Token reduction (a profile with a "
                                           "`reductions` section): points of scene accuracy a plan may lose."),
    api: str = typer.Option(DEFAULT_API, "--api", help="HOST:PORT of the HTTP API (port 0: any free port)."),
    probe_interval: float = typer.Option(5.0, "--probe-interval", help="Seconds between probes of links and nodes."),
    solve_interval: float = typer.Option(10.0, "--solve-interval", help="Seconds between re-solves."),
    threshold: float = typer.Option(0.10, "--threshold", help="Relative gain a new plan needs to replace the one in "
                                    "force (hysteresis against flapping)."),
    horizon: float = typer.Option(60.0, "--horizon", help="Seconds of requests over which a switch must repay its "
                                  "migration cost."),
    window: float = typer.Option(30.0, "--window", help="Seconds of samples the estimates are made from."),
    drain: float = typer.Option(30.0, "--drain", help="On SIGTERM/SIGINT, seconds requests in flight get to finish."),
    request_timeout: float = typer.Option(120.0, "--request-timeout", help="Seconds a request may take from its "
                                          "arrival, runs again included; later it fails with a 502."),
    max_retries: int = typer.Option(2, "--max-retries", help="Times a request whose node died runs again on the "
                                    "plan applied without (or with a restarted) node."),
    retain: str = typer.Option("7d", "--retain", help="Keep raw probe, node and request rows this long (30m, "
                               "12h, 7d); older ones become hourly roll-ups. 0 keeps every row."),
    solver: str = typer.Option("cbc", "--solver", help="Planner back-end: cbc, highs or cpsat."),
    token: str | None = typer.Option(None, "--token", envvar="AIFLOW_API_TOKEN",
                                     help="Token the API requires on POST (Authorization: Bearer T). Generated and "
                                          "printed once when the API listens beyond loopback without one."),
    private_reads: bool = typer.Option(False, "--private-reads", help="Reads (status, plan, metrics, the dashboard's "
                                       "data and events) need the token too; the dashboard page asks for it."),
    dilation: str = typer.Option("auto", "--dilation", help="Time dilation K of the emulated network, or 'auto'."),
    url: str | None = typer.Option(None, "--url", help="History database URL (default: $AIFLOW_DATABASE_URL, else "
                                   "the per-user SQLite file)."),
    worker_token: str | None = typer.Option(None, "--worker-token", envvar="AIFLOW_TOKEN",
                                            help="Token shared with the workers (default: generated for the local "
                                                 "ones; give it to workers that --join)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="AIFLOW_STATE_DIR",
                                          help="Folder for the local workers' credentials (mode 0600) and logs, "
                                               "so the next daemon can adopt them after a crash (default: beside a "
                                               "SQLite history file, else ~/.local/state/aiflow)."),
    worker_lease: float = typer.Option(600.0, "--worker-lease", help="Seconds a local worker keeps running "
                                       "without a call from its daemon (it outlives a crashed daemon this long)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every decision and switch to stderr."),
    reply_listen: str | None = reply_listen_option(),
    backend: str = backend_option(),
    ray_address: str | None = ray_address_option(),
) -> None:
    """Serve a model on a network: probe it, re-solve on a schedule, migrate live, answer HTTP requests."""
    from orchestrator.cli.history_cmd import parse_seconds
    from orchestrator.daemon.adopt import default_state_dir
    from orchestrator.daemon.run import parse_listen, serve
    from orchestrator.daemon.service import Daemon
    from orchestrator.daemon.settings import DaemonSettings
    from orchestrator.demo import local_class
    from orchestrator.network import load_network
    from orchestrator.store import Store
    from profiler.models import load_adapter
    from runtime.worker import MAX_IDLE_S

    host, port = parse_listen(api)
    if draft_profile is not None and draft is None:
        raise InputError("--draft-profile: give the draft model too (--draft NAME)")
    if draft is not None and draft_profile is None:
        raise InputError("--draft: give the draft's profile with its measured acceptance (--draft-profile F, "
                         "made by aiflow profile speculative)")
    check_cli_backend(backend, ray_address)
    if solver not in ("cbc", "highs", "cpsat"):
        raise InputError(f"--solver: expected cbc, highs or cpsat, got {solver!r}")
    if private_reads and token is None and _loopback(host):
        raise InputError("--private-reads: reads need a token; give one with --token (or $AIFLOW_API_TOKEN)")
    if not 0 < request_timeout <= MAX_IDLE_S:
        raise InputError(f"--request-timeout: must be in (0, {MAX_IDLE_S:g}] seconds, got {request_timeout:g}")
    if max_retries < 0:
        raise InputError(f"--max-retries: must be 0 or more, got {max_retries}")
    settings = DaemonSettings(probe_interval_s=probe_interval, solve_interval_s=solve_interval, threshold=threshold,
                              horizon_s=horizon, window_s=window, drain_s=drain, solver=solver,
                              request_timeout_s=request_timeout, max_retries=max_retries,
                              max_quality_loss=max_quality_loss,
                              worker_lease_s=worker_lease,
                              retain_raw_s=0.0 if retain.strip() == "0" else parse_seconds(retain, "--retain"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="aiflow daemon: %(message)s")
    logging.getLogger("aiflow.daemon").setLevel(logging.INFO if verbose else logging.WARNING)
    # a probe round longer than its interval is skipped by design, not worth a warning each time
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    net = load_network(network)

    def say(message: str) -> None:
        err.print(f"aiflow daemon: {message}", highlight=False)

    say(f"loading {model}")
    adapter = load_adapter(model)
    store = Store.open(url)
    try:
        prof = _profile(profile, adapter, net, store, say)
        pair = _draft(draft, draft_profile, prof, adapter, say)
        emulated = not any(n.address for n in net.nodes)
        from orchestrator.cli.run_cmd import _dilation
        k = _dilation(dilation, prof, net, local_class(prof)) if emulated else 1.0
        api_token = token
        if api_token is None and not _loopback(host):
            api_token = secrets.token_urlsafe(24)
            err.print(f"aiflow daemon: the API listens beyond loopback; its token (shown once): {api_token}",
                      highlight=False)
        stages = open_cli_backend(backend, ray_address, net, token=worker_token)     # closed with the command
        if stages is not None:
            say(f"stages run as Ray actors ({'cluster ' + ray_address if ray_address else 'a local Ray cluster'})")
        d = Daemon(model, net, prof, adapter, settings=settings, store=store, dilation=k, token=worker_token,
                   trace_base=Path(network).resolve().parent, progress=say, resume=True, reply_listen=reply_listen,
                   backend=stages, draft=pair, state_dir=state_dir or default_state_dir(store.url))
        if emulated:
            say(f"every node runs here; links and loads are emulated with time dilation K = {k:.3g}")

        def ready(address: str) -> None:
            print(f"aiflow daemon: serving {address}", flush=True)

        asyncio.run(serve(d, host, port, api_token=api_token, open_reads=not private_reads, on_ready=ready))
        say("stopped")
    finally:
        store.close()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _draft(name: str | None, path: Path | None, prof: Any, adapter: Any, say: Any) -> tuple[Any, Any] | None:
    """--draft and --draft-profile: the draft's profile (acceptance measured against this model) and model."""
    if name is None or path is None:
        return None
    from orchestrator.cli.plan_cmd import _load_draft
    from orchestrator.cooperative import CooperativeUnsupported
    from orchestrator.planner.cooperative import check_pair
    from profiler.models import load_adapter

    dprof = _load_draft(path)
    assert dprof is not None
    try:
        check_pair(prof, dprof)
    except CooperativeUnsupported as exc:
        raise InputError(f"--draft-profile: {exc}") from None
    say(f"loading the draft {name}")
    dadapter = load_adapter(name)
    if len(dprof.units) != len(dadapter.units()):
        raise InputError(f"{path}: units: {len(dprof.units)} units, but model {name} has {len(dadapter.units())}")
    if dadapter.eos_token_id != adapter.eos_token_id:
        raise InputError(f"--draft: {name} and {adapter.name} do not share a tokenizer")
    return dprof, dadapter


def _profile(path: Path | None, adapter: Any, net: Any, store: Any, say: Any) -> Any:
    """--profile, else the newest stored profile covering every hardware class of the network (and this
    machine's, which emulation needs), else measure one now (cached per machine and weights) and store it."""
    from orchestrator.demo import WORKER_THREADS, cached_profile
    from profiler.hardware import hardware_class
    from profiler.profile import load_profile

    n_units = len(adapter.units())
    if path is not None:
        prof = load_profile(path)
        if len(prof.units) != n_units:
            raise InputError(f"{path}: units: {len(prof.units)} units, but model {adapter.name} has {n_units}")
        return prof
    need = {n.hardware for n in net.nodes}
    if not any(n.address for n in net.nodes):
        need.add(hardware_class(threads=WORKER_THREADS))   # the daemon's local workers run one thread each
    for row in store.list_profiles(model=adapter.name):
        if len(row.hardware) and need <= set(row.hardware) and row.units == n_units:
            say(f"using stored profile #{row.id} ({', '.join(row.hardware)})")
            return store.get_profile(row.id)
    here = hardware_class(threads=WORKER_THREADS)
    say(f"profiling {adapter.name} on this machine ({here}) and estimating the network's devices")

    def progress(i: int, n: int, name: str) -> None:
        err.print(f"  unit {i + 1}/{n}: {name}", highlight=False)

    prof, cache, hit = cached_profile(adapter, net, progress=progress)
    missing = sorted({n.hardware for n in net.nodes} - set(prof.hardware_classes))
    if missing:
        raise InputError(f"network: nodes[].hardware: no profile or device description for {', '.join(missing)} "
                         "(give --profile, or a hardware class of profiler/devices/)")
    pid = store.save_profile(prof)
    say(f"profile stored as #{pid}" + (f" (from the cache {cache})" if hit else ""))
    return prof


def status(
    url: str = typer.Option(f"http://{DEFAULT_API}", "--url", help="The daemon's API."),
    token: str | None = typer.Option(None, "--token", envvar="AIFLOW_API_TOKEN", help="API token, if it needs one."),
    as_json: bool = typer.Option(False, "--json", help="Print the status document as JSON."),
) -> None:
    """What a running daemon is doing: the plan in force, nodes, links as measured, the last decisions."""
    from orchestrator.strategies import describe_assignment

    doc = fetch(url, "/v1/status", token)
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    plan = doc.get("plan") or {}
    where = f"emulated network (K = {doc['dilation']:.3g})" if doc.get("emulated") else "real hosts"
    console.print(f"[bold]aiflow daemon[/] at {url}: model {doc.get('model')}, {where}, "
                  f"{doc.get('open_requests', 0)} request(s) in flight", highlight=False)
    if plan:
        mode = (f"cooperative: {plan.get('draft_model')} proposes k={plan.get('k')}, the model verifies; "
                if plan.get("mode") == "cooperative" else "")
        console.print(f"plan v{plan['version']} (applied {plan['applied_at']}): {mode}"
                      f"{describe_assignment(plan['assignment'])}, "
                      f"predicted {plan['predicted_latency_s'] * 1e3:.1f} ms",
                      highlight=False)
    t = Table(title="nodes", box=None, header_style="bold")
    for col in ("node", "state", "address", "pid", "hardware", "slowdown"):
        t.add_column(col)
    hw = {n["name"]: n for n in doc.get("network", {}).get("nodes", [])}
    for n in doc.get("nodes", []):
        h = hw.get(n["name"], {})
        t.add_row(n["name"], n["state"], n.get("address") or "", str(n.get("pid") or ""), h.get("hardware", ""),
                  f"{h.get('slowdown', 1.0):.2f}" if h else "")
    console.print(t)
    lt = Table(title="links (as measured)", box=None, header_style="bold")
    for col in ("link", "Mbit/s", "latency ms", "samples", "how"):
        lt.add_column(col)
    for key, e in doc.get("links", {}).items():
        lt.add_row(key, f"{e['bandwidth_bps'] / 1e6:.3g}", f"{e['latency_s'] * 1e3:.2f}", str(e["samples"]),
                   e["method"])
    console.print(lt)
    dt = Table(title="last decisions", box=None, header_style="bold")
    for col in ("at", "trigger", "applied", "reason"):
        dt.add_column(col)
    for d in doc.get("decisions", [])[-5:]:
        dt.add_row(d["at"][11:19], d["trigger"], "yes" if d["apply"] else "no", d["reason"])
    console.print(dt)


def fetch(url: str, path: str, token: str | None) -> dict[str, Any]:
    """GET a daemon's JSON document; no daemon, or an error answer, is one line."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(url.rstrip("/") + path, headers=headers, timeout=10.0, trust_env=False)
    except httpx.HTTPError as exc:
        raise InputError(f"--url: no aiflow daemon answers at {url} ({type(exc).__name__})") from None
    if r.status_code != 200:
        raise InputError(f"{url}{path}: HTTP {r.status_code}: {error_detail(r)}")
    return r.json()


def error_detail(response: Any) -> str:
    """The reason a daemon gave with an error answer (its JSON `detail`, else the start of the body)."""
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:200]


def register(app: typer.Typer) -> None:
    app.command("daemon")(daemon)
    app.command("status")(status)
