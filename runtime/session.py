"""Running a model's inputs on a network under a plan, from one call: the glue the CLI, the captioner and
the benchmark share.

`run_on_network` loads the model (the client needs its tokenizer / image preprocessing), starts a
local worker process for every node that hosts a unit and has no `address` in the network file,
applies the plan, runs each input (an image path for a model with an encoder, prompt text for a
causal LM), decodes the outputs and stops the workers.

Networks and plans are loaded objects, read by their fields (NetworkState- and Plan-like); reading
their files is the orchestrator's job (orchestrator.apply), so the runtime imports nothing from it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from profiler.adapters.base import InputSpec, ModelAdapter
from profiler.errors import InputError
from runtime.client import RequestResult, run_requests
from runtime.edge_reduction import stage_extra
from runtime.hosts import worker_listen_host
from runtime.links import network_traces
from runtime.local import LocalWorkers
from runtime.netns import KernelNetwork, refuse_traces
from runtime.stages import StagePlan, build_stage_plan, links_from_network, nodes_from_network
from runtime.transport import Tls


@dataclass
class InputResult:
    input: str
    text: str | None                 # generated text (None for a model that makes no text)
    tokens: list[int] | None         # generated ids of the first (only) batch row
    result: RequestResult


def is_generative(adapter: ModelAdapter) -> bool:
    return any(p.name == "prefill" for p in adapter.phases(InputSpec()))


def takes_images(adapter: ModelAdapter) -> bool:
    return any(p.name == "encode" for p in adapter.phases(InputSpec()))


def prepare_input(adapter: ModelAdapter, item: str) -> torch.Tensor:
    """An image path -> pixels [1, C, H, W] for a model with an encoder (the file's bytes [1, N] for one
    that decodes them in a first unit); prompt text -> ids [1, S]."""
    if takes_images(adapter):
        if not Path(item).is_file():
            raise InputError(f"{item}: no such image file (model {adapter.name} takes images)")
        px = adapter.prepare_image(item)
        if px.dtype == torch.uint8:
            return px.reshape(1, -1)
        return px if px.dim() == 4 else px.unsqueeze(0)
    ids = adapter.encode_text(item)
    if not ids:
        raise InputError(f"{item!r}: the prompt encodes to no tokens")
    if adapter.source_input == "bytes":
        return torch.frombuffer(bytearray(item.encode("utf-8")), dtype=torch.uint8).reshape(1, -1)
    return torch.tensor([ids], dtype=torch.long)


def make_stage_plan(adapter: ModelAdapter, network: Any, plan: Any, *, addresses: dict[str, str],
                    profile: Any | None = None, emulate: bool = True, dilation: float = 1.0,
                    compression: str | None = None, trace_base: Path | None = None, version: int = 1,
                    native_hardware: str | None = None) -> StagePlan:
    """The StagePlan of `plan` on `network`, with each node's address (given or from the network file)."""
    units = adapter.units()
    if len(plan.assignment) != len(units):
        raise InputError(f"plan: assignment: {len(plan.assignment)} units, but model {adapter.name} has {len(units)}")
    if profile is not None and len(profile.units) != len(units):
        raise InputError(f"profile: units: {len(profile.units)} units, but model {adapter.name} has {len(units)}")
    try:
        sp = build_stage_plan(version=version, model=adapter.name, units=units, phases=adapter.phases(InputSpec()),
                              edges=adapter.edges(), assignment=plan.assignment, network=network, profile=profile,
                              emulate=emulate, dilation=dilation,
                              compression=compression or getattr(plan, "compression", None),
                              traces=network_traces(network, trace_base) if emulate else None,
                              native_hardware=native_hardware)
    except ValueError as exc:
        raise InputError(f"plan: {exc}") from None
    nodes = tuple(type(n)(n.name, n.hardware, n.slowdown, addresses.get(n.name, n.address)) for n in sp.nodes)
    try:
        extra = stage_extra(plan, [e.src for e in adapter.edges()])   # token reduction (runtime.edge_reduction)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return replace(sp, nodes=nodes, extra={**sp.extra, **extra}) if extra else replace(sp, nodes=nodes)


def run_on_network(model: str, network: Any, plan: Any, inputs: Sequence[str], *, max_new_tokens: int = 16,
                   emulate: bool = True, profile: Any | None = None, dilation: float = 1.0,
                   compression: str | None = None, trace_base: Path | None = None, token: str | None = None,
                   concurrency: int = 1, threads: int | None = None, adapter: ModelAdapter | None = None,
                   timeout_s: float = 300.0, kernel_links: bool = False,
                   native_hardware: str | None = None, reply_listen: str | None = None,
                   backend: Any | None = None, pool: LocalWorkers | None = None) -> list[InputResult]:
    """Start local workers as needed, run every input, stop the workers; results in input order.
    Nodes with an `address` are workers already serving (on this host or another): the client takes their
    results on the local address that routes to each (or on `reply_listen`, HOST or HOST:PORT), and local
    workers listen where those remote workers reach them (runtime.hosts).
    With `kernel_links` every node runs in its own network namespace and the kernel shapes the links'
    rates (runtime.netns); the transport then adds each link's latency only. `backend`: how stages are
    started and reached (runtime.backends; default: gRPC worker processes). `pool`: local workers the
    caller started for the network's nodes and keeps across runs (a run forgets its plan on every worker
    when it ends, so the next run's plan version 1 is theirs); they are left running."""
    from profiler.models import load_adapter

    adapter = adapter or load_adapter(model)
    sources = [prepare_input(adapter, item) for item in inputs]
    hosting = list(dict.fromkeys(plan.assignment))
    given = {n.name: n.address for n in network.nodes if n.address}
    local = [n for n in hosting if n not in given]
    kernel = _kernel_network(network, given, dilation) if kernel_links else None
    # remote workers started with $AIFLOW_CONTROLLER_TOKEN take plans only from a controller holding it
    controller_token = os.environ.get("AIFLOW_CONTROLLER_TOKEN") or None
    listen_host = worker_listen_host(given.values(), reply_listen) if local and given else "127.0.0.1"
    workers = None
    if pool is not None and (kernel is not None or backend is not None):
        raise ValueError("a worker pool serves plain local workers: not with kernel links or another back-end")
    try:
        if pool is not None:
            missing = [n for n in local if n not in pool.addresses]
            if missing:
                raise ValueError(f"the worker pool serves no node {', '.join(missing)}")
        elif kernel is not None:
            kernel.start()
            workers = LocalWorkers(model, local, token=token, threads=threads, hosts=kernel.addresses,
                                   launchers={n: kernel.launcher(n) for n in local})
        elif local and backend is not None:
            workers = backend.workers(model, local, token=token, threads=threads)
        elif local:
            workers = LocalWorkers(model, local, token=token, threads=threads, host=listen_host,
                                   controller_token=controller_token)
        addresses = dict(given)
        if workers is not None:
            addresses.update(workers.start())
        elif pool is not None:
            addresses.update({n: pool.addresses[n] for n in local})
        serving = workers if workers is not None else pool
        sp = make_stage_plan(adapter, network, plan, addresses=addresses, profile=profile, emulate=emulate,
                             dilation=dilation, compression=compression, trace_base=trace_base,
                             native_hardware=native_hardware)
        if kernel is not None:
            sp = replace(sp, links=tuple(replace(lk, kernel_rate=True) for lk in sp.links))
        mode = "generate" if is_generative(adapter) else "forward"
        results = asyncio.run(run_requests(sp, sources, mode=mode, max_new_tokens=max_new_tokens,
                                           eos=adapter.eos_token_id, token=serving.token if serving else token,
                                           controller_token=serving.controller_token if serving
                                           else controller_token,
                                           tls=Tls.from_env(),
                                           concurrency=concurrency, timeout_s=timeout_s,
                                           reply_listen=f"{kernel.client_address}:0" if kernel else reply_listen,
                                           make_client=backend.client if backend is not None else None))
    finally:
        if workers is not None:
            workers.stop()
        if kernel is not None:
            kernel.stop()
    out = []
    for item, r in zip(inputs, results, strict=True):
        if r.tokens is not None:
            ids = [int(t) for t in r.tokens[0]]
            out.append(InputResult(item, adapter.decode_tokens(ids), ids, r))
        else:
            out.append(InputResult(item, None, None, r))
    return out


def _kernel_network(network: Any, given: dict[str, str], dilation: float) -> KernelNetwork:
    if given:
        raise InputError(f"kernel links: nodes {', '.join(sorted(given))} have addresses; kernel-shaped links "
                         "need every worker on this machine")
    refuse_traces(network.links)      # links_from_network below carries no trace samples to check
    return KernelNetwork(nodes_from_network(network), links_from_network(network), network.source, dilation)
