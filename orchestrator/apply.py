"""Network and plan files into the runtime: the glue `aiflow run` and `aiflow caption --network --plan` share.

The runtime takes loaded NetworkState and Plan objects only (it imports nothing from `orchestrator/`);
reading their files, and refusing a plan that does not fit the model or the network with the file's
name in the message, happens here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.network import NetworkState, load_network
from orchestrator.plan import Plan, load_plan
from profiler.adapters.base import ModelAdapter
from profiler.errors import InputError


def load_network_and_plan(network: NetworkState | str | Path, plan: Plan | str | Path,
                          adapter: ModelAdapter | None = None) -> tuple[NetworkState, Plan, Path | None]:
    """(NetworkState, Plan, folder of the network file) from objects or paths. With `adapter`, a plan
    that does not fit the model or the network is refused in one line naming the plan file."""
    base = None
    network_name, plan_name = "network", "plan"
    if isinstance(network, (str, Path)):
        base = Path(network).resolve().parent
        network_name = str(network)
        network = load_network(network)
    if isinstance(plan, (str, Path)):
        plan_name = str(plan)
        plan = load_plan(plan)
    if adapter is not None:
        units = len(adapter.units())
        if len(plan.assignment) != units:
            raise InputError(f"{plan_name}: assignment: {len(plan.assignment)} units, but model {adapter.name} has "
                             f"{units}")
        nodes = {n.name for n in network.nodes}
        stray = sorted(set(plan.assignment) - nodes)
        if stray:
            raise InputError(f"{plan_name}: assignment: node {stray[0]!r} is not in {network_name} "
                             f"(nodes: {', '.join(sorted(nodes))})")
    return network, plan, base


def caption_distributed(images: Sequence[str | Path], model: str, network: NetworkState | str | Path,
                        plan: Plan | str | Path, *, max_new_tokens: int = 24, emulate: bool = True,
                        profile: Any | None = None, dilation: float = 1.0, token: str | None = None,
                        reply_listen: str | None = None, backend: Any | None = None) -> list[str]:
    """Caption image files through local workers placed by `plan` on `network` (objects or file paths).

    The hook `aiflow caption --network --plan` calls. Starts one worker process per node that hosts
    a unit (nodes with an `address` are used as they are), runs the images one at a time, stops the
    workers, and returns one caption per image (the unsplit model's caption, exactly). `backend`: how the
    stages run (runtime.backends; default: gRPC worker processes).
    """
    from profiler.models import load_adapter
    from runtime.session import run_on_network

    adapter = load_adapter(model)
    net, pl, base = load_network_and_plan(network, plan, adapter)
    results = run_on_network(model, net, pl, [str(p) for p in images], max_new_tokens=max_new_tokens,
                             emulate=emulate, profile=profile, dilation=dilation, trace_base=base, adapter=adapter,
                             token=token, reply_listen=reply_listen, backend=backend)
    return [r.text for r in results]


def caption_cooperative(images: Sequence[str | Path], model: str, draft: str, network: NetworkState | str | Path,
                        plan: Plan | str | Path, *, max_new_tokens: int = 32, emulate: bool = True,
                        target_profile: Any | None = None, draft_profile: Any | None = None,
                        dilation: float = 1.0) -> list[Any]:
    """Caption image files cooperatively: `draft` proposes on the source, `model` verifies where the
    cooperative `plan` says (runtime.cooperative_session); the target's own greedy captions."""
    from runtime.cooperative_session import run_cooperative

    net, pl, base = load_network_and_plan(network, plan)
    stray = sorted((set(pl.assignment) | set(pl.draft_assignment or [])) - {n.name for n in net.nodes})
    if stray:
        raise InputError(f"{plan}: node {stray[0]!r} is not in the network")
    return run_cooperative(model, draft, net, pl, [str(p) for p in images], max_new_tokens=max_new_tokens,
                           emulate=emulate, target_profile=target_profile, draft_profile=draft_profile,
                           dilation=dilation, trace_base=base)
