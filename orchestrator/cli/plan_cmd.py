"""`aiflow plan`: place every unit of a model on the network so a request finishes soonest.

    aiflow plan --profile F --network F [--objective latency|throughput] [--solver cbc|highs|cpsat]
                [--time-limit S] [--warm-start PLAN] [--no-fast-path] [--out FILE] [--json] [--no-store]
                [--max-quality-loss POINTS] [--no-reduction]       (token reduction, with a `reductions` profile)
    aiflow plan --profile F --draft-profile Q --network F [--json]     (split or cooperative, and k)
    aiflow plan compare --profile F --network F [--draft-profile Q] [--solver S] [--json]
                        [--max-quality-loss POINTS] [--no-reduction]
    aiflow plan explain PLAN --profile F --network F [--no-price] [--json]     (PLAN: a file or a stored id)
    aiflow plan diff A B [--profile F --network F] [--json]
    aiflow plan show PLAN | --live [--url URL] [--json]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.cli.groups import default_group
from orchestrator.network import NetworkState, load_network
from orchestrator.plan import Plan, load_plan, save_plan
from profiler.errors import InputError
from profiler.profile import Profile, load_profile

app = typer.Typer(cls=default_group("solve"), no_args_is_help=True, add_completion=False,
                  help="Plan where every unit runs (aiflow plan --profile F --network F); compare, explain, diff.")
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True)

ProfileOpt = Annotated[Path, typer.Option("--profile", help="aiflow.profile/v1 file (JSON)")]
NetworkOpt = Annotated[Path, typer.Option("--network", help="aiflow.network/v1 file (YAML or JSON)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
DraftOpt = Annotated[Path | None, typer.Option("--draft-profile", help="the draft model's profile with its "
                                               "measured acceptance (aiflow profile speculative): also "
                                               "consider cooperative plans")]
MaxLossOpt = Annotated[float | None, typer.Option(
    "--max-quality-loss", help="token reduction: points of scene accuracy a plan may lose (default 1)")]
NoReductionOpt = Annotated[bool, typer.Option("--no-reduction", help="never reduce the encoder output")]


def _load_draft(path: Path | None) -> Profile | None:
    if path is None:
        return None
    draft = load_profile(path)
    if draft.speculative is None:
        raise InputError(f"{path}: no `speculative` section (measure it with `aiflow profile speculative`)")
    return draft


def _cooperative(split: Plan, prof: Profile, draft: Profile, net: NetworkState):  # noqa: ANN202
    """choose_plan with its errors as one-line InputErrors."""
    from orchestrator.cooperative import CooperativeUnsupported
    from orchestrator.planner.cooperative import choose_plan

    try:
        return choose_plan(split, prof, draft, net)
    except CooperativeUnsupported as exc:
        raise InputError(f"--draft-profile: {exc}") from None


def print_coop_terms(ev, title: str) -> None:  # noqa: ANN001 - a CoopEvaluation
    table = Table(title=title, title_justify="left")
    for col in ("term", "count", "where", "seconds"):
        table.add_column(col, justify="right" if col in ("count", "seconds") else "left")
    for t in ev.terms:
        if t.seconds or t.kind in ("verify", "draft-pass"):
            table.add_row(t.kind, f"{t.count:.2f}", t.label, _seconds(t.seconds))
    table.add_row("[bold]L_coop[/bold]", "", f"k={ev.k}, verifier {ev.verifier}", f"[bold]{_seconds(ev.latency_s)}[/]")
    console.print(table)


def _seconds(s: float) -> str:
    if not math.isfinite(s):
        return "inf"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def _options(objective: str, solver: str, time_limit: float | None, fast_path: bool,
             warm_start: Plan | None = None) -> object:
    from orchestrator.planner import PlanOptions

    if objective not in ("latency", "throughput"):
        raise InputError(f"--objective: expected latency or throughput, got {objective!r}")
    return PlanOptions(objective=objective, solver=solver, time_limit_s=time_limit,  # type: ignore[arg-type]
                       fast_path=fast_path, warm_start=warm_start.assignment if warm_start else None)


def store_plan(plan: Plan, profile: Profile, net: NetworkState) -> int | None:
    """Record the solve and its inputs in the history store; None when the store is not installed."""
    try:
        from orchestrator.store import Store
    except ImportError:
        return None
    with Store.open() as store:
        profile_id = store.save_profile(profile)
        network_id = store.save_network(net)
        return store.save_plan(plan, profile_id=profile_id, network_id=network_id)


def stages(plan: Plan, profile: Profile, net: NetworkState) -> list[tuple[str, str, str, float]]:
    """Runs of consecutive units on one node per phase: (phase, units, node, compute seconds)."""
    from orchestrator.costmodel import compute_time

    out = []
    for ph in profile.active_phases:
        u = ph.first
        while u <= ph.last:
            v = u
            while v + 1 <= ph.last and plan.assignment[v + 1] == plan.assignment[u]:
                v += 1
            node = plan.assignment[u]
            secs = ph.repeat * sum(compute_time(profile, net, k, node, ph.name) for k in range(u, v + 1))
            names = profile.units[u].name if u == v else f"{profile.units[u].name} .. {profile.units[v].name}"
            out.append((f"{ph.name} x{ph.repeat}", names, node, secs))
            u = v + 1
    return out


def print_plan(plan: Plan, profile: Profile, net: NetworkState, plan_id: int | None) -> None:
    table = Table(title=f"plan for {plan.model}: {plan.status} ({plan.solver}, {_seconds(plan.solve_time_s)})",
                  title_justify="left")
    for col in ("phase", "units", "node", "compute"):
        table.add_column(col, justify="right" if col == "compute" else "left")
    for phase, names, node, secs in stages(plan, profile, net):
        table.add_row(phase, names, node, _seconds(secs))
    console.print(table)
    transfers = Table(title="transfers (all passes, per hop)", title_justify="left")
    transfers.add_column("hop")
    transfers.add_column("seconds", justify="right")
    for hop, secs in sorted(plan.breakdown.transfer_s.items(), key=lambda kv: -kv[1]):
        transfers.add_row(hop, _seconds(secs))
    if plan.breakdown.transfer_s:
        console.print(transfers)
    line = f"predicted latency: [bold]{_seconds(plan.predicted_latency_s)}[/bold]"
    if plan.bottleneck_s is not None:
        line += f"   busiest resource per request: {_seconds(plan.bottleneck_s)}"
    if plan.gap is not None:
        line += f"   gap to the bound: {100 * plan.gap:.2f}%"
    if plan_id is not None:
        line += f"   stored as plan {plan_id}"
    console.print(line)


@app.command("solve", help="Solve for the best plan and print it (the default command of `aiflow plan`).")
def solve_cmd(
    profile: ProfileOpt,
    network: NetworkOpt,
    objective: Annotated[str, typer.Option(help="latency (L of one request) or throughput (busiest resource)")]
    = "latency",
    solver: Annotated[str, typer.Option(help="cbc, highs or cpsat")] = "cbc",
    time_limit: Annotated[float | None, typer.Option("--time-limit", help="seconds; the best plan so far + gap")]
    = None,
    warm_start: Annotated[Path | None, typer.Option("--warm-start", help="a plan file to start from")] = None,
    fast_path: Annotated[bool, typer.Option("--fast-path/--no-fast-path", help="exact DP where it applies")] = True,
    out: Annotated[Path | None, typer.Option("--out", help="write the aiflow.plan/v1 file here")] = None,
    as_json: JsonOpt = False,
    store: Annotated[bool, typer.Option("--store/--no-store", help="record the solve in the history database")]
    = True,
    draft_profile: DraftOpt = None,
    max_quality_loss: MaxLossOpt = None,
    no_reduction: NoReductionOpt = False,
) -> None:
    prof, net = load_profile(profile), load_network(network)
    draft = _load_draft(draft_profile)
    if draft is not None and objective != "latency":
        raise InputError("--draft-profile: cooperative plans are chosen for the latency objective only")
    start = load_plan(warm_start) if warm_start else None
    plan = _split_plan(prof, net, _options(objective, solver, time_limit, fast_path, start), max_quality_loss,
                       no_reduction)
    search = None
    if draft is not None:
        plan, search = _cooperative(plan, prof, draft, net)
    plan_id = store_plan(plan, prof, net) if store else None
    if out:
        save_plan(plan, out)
    if as_json:
        _print_json(plan.model_dump(mode="json", by_alias=True, exclude_none=True))
    elif plan.mode == "cooperative" and search is not None and search.best is not None:
        print_coop_terms(search.best.evaluation, f"cooperative plan: {plan.draft_model} on {net.source} proposes "
                                                 f"k={plan.k}, {plan.model} verifies")
        console.print(f"target placement: {_placement(plan.assignment)}", highlight=False)
        line = f"predicted latency: [bold]{_seconds(plan.predicted_latency_s)}[/bold] ({plan.status})"
        console.print(line + (f"   stored as plan {plan_id}" if plan_id is not None else ""))
        if out:
            console.print(f"wrote {out}")
    else:
        print_plan(plan, _plan_profile(prof, plan), net, plan_id)
        if draft is not None and search is not None and search.best is not None:
            console.print(f"best cooperative plan: {_seconds(search.best.evaluation.latency_s)} "
                          f"(k={search.best.k}, verifier {search.best.evaluation.verifier}): split is faster",
                          highlight=False)
        if out:
            console.print(f"wrote {out}")


def _plan_profile(prof: Profile, plan: Plan) -> Profile:
    """The profile whose terms add up to the plan's L (its token reduction applied, if any)."""
    if not plan.reductions:
        return prof
    from orchestrator.reductions import profile_for_plan

    return profile_for_plan(prof, plan)


def _split_plan(prof: Profile, net: NetworkState, opts: object, max_quality_loss: float | None,
                no_reduction: bool) -> Plan:
    """The best split plan, over the profile's token-reduction options when it has a `reductions` section
    (or a cap is given): what `aiflow plan` and `aiflow plan compare` both start from."""
    from orchestrator.planner import solve

    if "reductions" in (prof.model_extra or {}) or max_quality_loss is not None:
        return _reduced_solve(prof, net, opts, max_quality_loss, no_reduction)
    return solve(prof, net, opts)  # type: ignore[arg-type]


def _reduced_solve(prof: Profile, net: NetworkState, opts: object, max_quality_loss: float | None,
                   no_reduction: bool) -> Plan:
    """solve_with_reductions (orchestrator.reductions) with its errors as one-line InputErrors."""
    from orchestrator.reductions import DEFAULT_MAX_QUALITY_LOSS, solve_with_reductions

    cap = DEFAULT_MAX_QUALITY_LOSS if max_quality_loss is None else max_quality_loss
    try:
        plan, _ = solve_with_reductions(prof, net, opts, max_quality_loss=cap,  # type: ignore[arg-type]
                                        reduce=not no_reduction)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    for r in plan.reductions or []:
        err_console.print(f"token reduction: {r['method']}-{r['keep']} on the encoder output "
                          f"({r['bytes']:.0f} of {r['bytes_in']:.0f} bytes, {r['quality_loss']:.2f} points lost)",
                          highlight=False)
    return plan


@app.command("compare", help="Every baseline beside the optimum, with the ratio of their latencies.")
def compare_cmd(profile: ProfileOpt, network: NetworkOpt,
                solver: Annotated[str, typer.Option(help="cbc, highs or cpsat")] = "cbc",
                as_json: JsonOpt = False, draft_profile: DraftOpt = None, max_quality_loss: MaxLossOpt = None,
                no_reduction: NoReductionOpt = False) -> None:
    from orchestrator.planner.baselines import BaselineInfeasible, all_baselines

    prof, net = load_profile(profile), load_network(network)
    # the optimum `aiflow plan` answers: token reductions considered (a `reductions` profile)
    best = _split_plan(prof, net, _options("latency", solver, None, True), max_quality_loss, no_reduction)
    draft = _load_draft(draft_profile)
    if draft is not None:
        _compare_family(prof, draft, net, best, network.name, as_json)
        return
    rows = [{"strategy": "optimal", "latency_s": best.predicted_latency_s, "ratio": 1.0,
             "assignment": best.assignment, "status": best.status, **_reduction_of(best)}]
    for label, fn in all_baselines(net):
        try:
            plan = fn(prof, net)
        except BaselineInfeasible as exc:
            rows.append({"strategy": label, "latency_s": None, "ratio": None, "infeasible": "; ".join(exc.reasons)})
            continue
        ratio = plan.predicted_latency_s / best.predicted_latency_s if best.predicted_latency_s > 0 else 1.0
        rows.append({"strategy": label, "latency_s": plan.predicted_latency_s, "ratio": ratio,
                     "assignment": plan.assignment, "status": plan.status})
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"{prof.model} on {network.name}: baselines against the optimum", title_justify="left")
    for col in ("strategy", "latency", "x optimum", "placement"):
        table.add_column(col, justify="right" if col in ("latency", "x optimum") else "left")
    for r in rows:
        if r["latency_s"] is None:
            table.add_row(r["strategy"], "infeasible", "-", r["infeasible"])
        else:
            reduced = f" (reduced: {', '.join(r['reductions'])})" if r.get("reductions") else ""
            table.add_row(r["strategy"], _seconds(r["latency_s"]), f"{r['ratio']:.2f}",
                          _placement(r["assignment"]) + reduced)
    console.print(table)


def _reduction_of(plan: Plan) -> dict[str, list[str]]:
    """A compare row's `reductions`: the plan's token reductions as method-keep labels (none: no field)."""
    labels = [f"{r['method']}-{r['keep']}" for r in plan.reductions or [] if r.get("method") not in (None, "none")]
    return {"reductions": labels} if labels else {}


def family_rows(prof: Profile, draft: Profile, net: NetworkState, split: Plan) -> list[dict]:
    """Draft-only on the source, target-only on each node, the best split of the target, the best
    cooperative plan and the best for every measured k."""
    from orchestrator.planner.baselines import BaselineInfeasible, single_node

    rows: list[dict] = []

    def single(model: Profile, node: str, label: str) -> None:
        try:
            p = single_node(model, net, node)
            rows.append({"strategy": label, "model": model.model, "mode": "split", "latency_s": p.predicted_latency_s,
                         "assignment": p.assignment})
        except BaselineInfeasible as exc:
            rows.append({"strategy": label, "model": model.model, "latency_s": None,
                         "infeasible": "; ".join(exc.reasons)})

    single(draft, net.source, f"draft-only ({net.source})")
    for n in net.node_names:
        single(prof, n, f"target-only ({n})")
    rows.append({"strategy": "best split", "model": prof.model, "mode": "split", "latency_s": split.predicted_latency_s,
                 "assignment": split.assignment, **_reduction_of(split)})
    _, search = _cooperative(split, prof, draft, net)
    if search.best is not None:
        b = search.best
        rows.append({"strategy": f"best cooperative (k={b.k})", "model": prof.model, "mode": "cooperative",
                     "latency_s": b.evaluation.latency_s, "assignment": b.assignment,
                     "draft_assignment": b.draft_assignment, "k": b.k})
    for k, c in sorted(search.per_k.items()):
        rows.append({"strategy": f"cooperative k={k}", "model": prof.model, "mode": "cooperative",
                     "latency_s": c.evaluation.latency_s, "assignment": c.assignment,
                     "draft_assignment": c.draft_assignment, "k": k})
    best = min(r["latency_s"] for r in rows if r["latency_s"] is not None)
    for r in rows:
        r["ratio"] = r["latency_s"] / best if r["latency_s"] is not None and best > 0 else None
    return rows


def _compare_family(prof: Profile, draft: Profile, net: NetworkState, split: Plan, net_name: str,
                    as_json: bool) -> None:
    rows = family_rows(prof, draft, net, split)
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"{prof.model} with {draft.model} on {net_name}: modes against the fastest",
                  title_justify="left")
    for col in ("strategy", "latency", "x fastest", "placement"):
        table.add_column(col, justify="right" if col in ("latency", "x fastest") else "left")
    for r in rows:
        if r["latency_s"] is None:
            table.add_row(r["strategy"], "infeasible", "-", r["infeasible"])
        else:
            where = _placement(r["assignment"])
            if r.get("draft_assignment"):
                where = f"target {where}; draft {_placement(r['draft_assignment'])}"
            table.add_row(r["strategy"], _seconds(r["latency_s"]), f"{r['ratio']:.2f}", where)
    console.print(table)
    console.print("draft-only gives the draft's captions; every other row gives the target's.", highlight=False)


def _placement(assignment: list[str]) -> str:
    """'phone x5, edge x3, phone x2' in unit order."""
    runs: list[list] = []
    for n in assignment:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return ", ".join(f"{n} x{k}" for n, k in runs)


def _load_plan_arg(arg: str) -> tuple[Plan, int | None]:
    """A plan file, or the id of a stored plan."""
    if arg.isdigit() and not Path(arg).exists():
        try:
            from orchestrator.store import Store
        except ImportError:
            raise InputError(f"{arg}: no such file (and no history store to look plan ids up in)") from None
        with Store.open() as store:
            try:
                return store.get_plan(int(arg)), int(arg)
            except (KeyError, LookupError, ValueError) as exc:
                raise InputError(f"{arg}: no stored plan with that id ({exc})") from None
    return load_plan(arg), None


@app.command("show", help="A plan's placement: a plan file, a stored plan id, or (--live) the plan in force in "
                         "a running daemon.")
def show_cmd(plan: Annotated[str | None, typer.Argument(help="a plan file or a stored plan id")] = None,
             live: Annotated[bool, typer.Option("--live", help="ask a running daemon for its plan in force")] = False,
             url: Annotated[str, typer.Option("--url", help="the daemon's API (with --live)")] = "http://127.0.0.1:8765",
             token: Annotated[str | None, typer.Option("--token", envvar="AIFLOW_API_TOKEN",
                                                       help="API token, if it needs one")] = None,
             as_json: JsonOpt = False) -> None:
    if live == (plan is not None):
        raise InputError("aiflow plan show: give a plan file or id, or --live (not both)")
    if live:
        from orchestrator.cli.daemon_cmd import fetch
        doc = fetch(url, "/v1/plan", token)
        shown, where = Plan.model_validate({k: v for k, v in doc.items() if k not in ("version", "applied_at")}), (
            f"v{doc['version']} in force at {url} since {doc['applied_at']}")
    else:
        shown, pid = _load_plan_arg(plan)
        doc = shown.model_dump(mode="json", exclude_none=True)
        where = f"stored plan {pid}" if pid is not None else str(plan)
    if as_json:
        _print_json(doc)
        return
    console.print(f"[bold]{shown.model}[/]: {where}", highlight=False)
    console.print(f"placement: {_placement(list(shown.assignment))}", highlight=False)
    console.print(f"predicted latency: {_seconds(shown.predicted_latency_s)} ({shown.status}, {shown.solver})",
                  highlight=False)


@app.command("explain", help="Every term of L for a plan, per phase, node and link, and which constraints bind.")
def explain_cmd(plan: Annotated[str, typer.Argument(help="a plan file or a stored plan id")],
                profile: ProfileOpt, network: NetworkOpt,
                price: Annotated[bool, typer.Option("--price/--no-price",
                                                    help="re-solve without each constraint to see if it binds")]
                = True,
                as_json: JsonOpt = False, draft_profile: DraftOpt = None) -> None:
    from orchestrator.planner.explain import explain_plan

    p, _ = _load_plan_arg(plan)
    prof, net = load_profile(profile), load_network(network)
    if p.mode == "cooperative":
        _explain_cooperative(p, plan, prof, _load_draft(draft_profile), net, as_json)
        return
    if len(p.assignment) != len(prof.units):
        raise InputError(f"{plan}: field assignment: {len(p.assignment)} units, the profile has {len(prof.units)}")
    if p.reductions:
        from orchestrator.reductions import profile_for_plan

        try:
            prof = profile_for_plan(prof, p)          # L with the plan's token reduction
        except ValueError as exc:
            raise InputError(f"{plan}: {exc}") from None
    ex = explain_plan(prof, net, p.assignment, price=price)
    if as_json:
        _print_json(ex.to_dict())
        return
    table = Table(title=f"L of plan {plan} = {_seconds(ex.latency_s)}", title_justify="left")
    for col in ("phase", "term", "where", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for pt in ex.phases:
        name = f"{pt.phase} x{pt.repeat}"
        if pt.input_s:
            table.add_row(name, "raw input", f"{net.source} -> first unit", _seconds(pt.input_s))
        for node, s in pt.compute_s.items():
            table.add_row(name, "compute", node, _seconds(s))
        for hop, s in pt.transfer_s.items():
            table.add_row(name, "transfer", hop, _seconds(s))
        if pt.loop_s:
            table.add_row(name, "loop (last -> first)", "", _seconds(pt.loop_s))
        if pt.passes_s:
            table.add_row(name, "runtime, per pass", "", _seconds(pt.passes_s))
        table.add_row(name, "[bold]phase total[/bold]", "", f"[bold]{_seconds(pt.total_s)}[/bold]")
    for e in ex.edges:
        table.add_row("-", "shared edge", f"{e['from']}->{e['to']}", _seconds(e["seconds"]))
    if ex.result_s:
        table.add_row("-", "result", f"-> {net.sink_node}", _seconds(ex.result_s))
    if ex.request_s:
        table.add_row("-", "runtime, per request", net.source, _seconds(ex.request_s))
    console.print(table)
    if ex.overhead_s:
        console.print(f"of which the runtime's own costs (per request, per hop, codec): {_seconds(ex.overhead_s)}",
                      highlight=False)
    if ex.constraints:
        ct = Table(title="constraints", title_justify="left")
        for col in ("constraint", "state", "full", "binds", "gain if dropped"):
            ct.add_column(col)
        for c in ex.constraints:
            ct.add_row(c.constraint, c.detail, "yes" if c.full else "no", "yes" if c.binding else "no",
                       "-" if c.gain_s is None else _seconds(c.gain_s))
        console.print(ct)
    if ex.optimum_s is not None:
        console.print(f"best plan under every constraint: {_seconds(ex.optimum_s)} "
                      f"(this plan is {ex.latency_s / ex.optimum_s:.3f}x that)" if ex.optimum_s > 0 else "")


def _explain_cooperative(p: Plan, name: str, prof: Profile, draft: Profile | None, net: NetworkState,
                         as_json: bool) -> None:
    from orchestrator.cooperative import CooperativeUnsupported, evaluate_cooperative

    if draft is None:
        raise InputError(f"{name}: a cooperative plan: give the draft's profile with --draft-profile")
    if p.draft_assignment is None or p.k is None:
        raise InputError(f"{name}: a cooperative plan needs draft_assignment and k")
    if draft.model != p.draft_model:
        raise InputError(f"--draft-profile: a profile of {draft.model}, the plan's draft is {p.draft_model}")
    if len(p.assignment) != len(prof.units) or len(p.draft_assignment) != len(draft.units):
        raise InputError(f"{name}: the plan's assignments do not match the profiles' unit counts")
    try:
        ev = evaluate_cooperative(prof, draft, net, p.assignment, p.draft_assignment, p.k)
    except CooperativeUnsupported as exc:
        raise InputError(f"--draft-profile: {exc}") from None
    if ev.violations:
        raise InputError(f"{name}: breaks {'; '.join(ev.violations)}")
    st = draft.speculative.k[str(p.k)] if draft.speculative else None
    if as_json:
        _print_json({"mode": "cooperative", "latency_s": ev.latency_s, "k": ev.k, "verifier": ev.verifier,
                     "acceptance": st.acceptance if st else None, "rounds": st.rounds if st else None,
                     "draft_passes": st.draft_passes if st else None, "verify_ratio": st.verify_ratio if st else None,
                     "terms": [t.__dict__ for t in ev.terms]})
        return
    print_coop_terms(ev, f"L_coop of plan {name} = {_seconds(ev.latency_s)}")
    if st is not None:
        console.print(f"measured for k={p.k}: acceptance {st.acceptance:.3f}, {st.rounds:.2f} rounds and "
                      f"{st.draft_passes:.2f} draft passes per request, {st.tokens:.2f} tokens, "
                      f"r_k {st.verify_ratio:.2f}", highlight=False)


@app.command("diff", help="Units that move between two plans, and the latency change.")
def diff_cmd(a: Annotated[str, typer.Argument(help="plan file or stored id")],
             b: Annotated[str, typer.Argument(help="plan file or stored id")],
             profile: Annotated[Path | None, typer.Option("--profile", help="re-evaluate both plans with it")] = None,
             network: Annotated[Path | None, typer.Option("--network", help="re-evaluate both plans on it")] = None,
             as_json: JsonOpt = False) -> None:
    from orchestrator.planner.diff import diff_plans

    pa, _ = _load_plan_arg(a)
    pb, _ = _load_plan_arg(b)
    if (profile is None) != (network is None):
        raise InputError("--profile/--network: give both or neither")
    prof = load_profile(profile) if profile else None
    net = load_network(network) if network else None
    d = diff_plans(pa, pb, prof, net)
    if as_json:
        _print_json(d.to_dict())
        return
    table = Table(title=f"{len(d.moves)} unit(s) move", title_justify="left")
    for col in ("unit", "from", "to"):
        table.add_column(col)
    for m in d.moves:
        table.add_row(m.name, m.src, m.dst)
    console.print(table)
    for node in sorted(set(d.load) | set(d.unload)):
        console.print(f"{node}: load {d.load.get(node, [])}, unload {d.unload.get(node, [])}")
    sign = "+" if d.delta_s >= 0 else "-"
    console.print(f"latency {_seconds(d.latency_a_s)} -> {_seconds(d.latency_b_s)} ({sign}{_seconds(abs(d.delta_s))})")
