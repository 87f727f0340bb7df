"""One call from (target, draft, network, cooperative plan, inputs) to outputs: starts the verifier
process where the plan verifies (unless the node has an address), runs each input cooperatively
from the source, stops the verifier. Shared by `aiflow caption --draft` and `aiflow run --draft`.
The network and plan are loaded objects (the runtime imports nothing from orchestrator/)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.adapters.base import ModelAdapter
from profiler.errors import InputError
from profiler.speculative import encoder_range
from runtime.cooperative import CoopClient, CoopResult, CoopRoute, Pacing, coop_route
from runtime.links import EmulatedNetwork, network_traces
from runtime.local import LocalWorkers
from runtime.session import prepare_input
from runtime.stages import links_from_network, nodes_from_network
from runtime.transport import GrpcTransport, Tls


@dataclass(frozen=True)
class CoopOutput:
    input: str
    text: str
    tokens: list[int]
    result: CoopResult


def _latency(profile: Any, units: Sequence[int], hw: str, phase: str) -> float:
    total = 0.0
    for u in units:
        lat = profile.units[u].latency_s.get(hw, {}).get(phase)
        if lat is None:
            raise InputError(f"{profile.model}: unit {profile.units[u].name} has no {phase} latency for {hw}")
        total += lat
    return total


def pacing_from_profiles(target_profile: Any, draft_profile: Any, network: Any, route: CoopRoute,
                         target: ModelAdapter, draft: ModelAdapter, dilation: float) -> Pacing:
    """Each compute step's emulated seconds: K x slowdown x the profile's latencies on the node's class
    (a verification over n proposals: r_n x one decode pass, r_n measured by the profiler; r_k of the
    plan's k where n was not measured)."""
    src, ver = network.node(route.source), network.node(route.verifier)
    enc_t, enc_d = encoder_range(target), encoder_range(draft)
    dec_t = range(enc_t.stop, len(target.units()))
    dec_d = range(enc_d.stop, len(draft.units()))
    spec = draft_profile.speculative
    if spec is None or str(route.k) not in spec.k:
        raise InputError(f"{draft_profile.model}: no acceptance measured for k={route.k} in the draft profile")
    ratios = {int(k): s.verify_ratio for k, s in spec.k.items()}
    one_pass = _latency(target_profile, dec_t, ver.hardware, "decode")
    verify = {n + 1: dilation * ver.slowdown * (ratios.get(n, ratios[route.k]) if n else 1.0) * one_pass
              for n in range(route.k + 1)}
    return Pacing(
        draft_encode_s=dilation * src.slowdown * _latency(draft_profile, enc_d, src.hardware, "encode"),
        draft_pass_s=dilation * src.slowdown * _latency(draft_profile, dec_d, src.hardware, "decode"),
        target_source_s=dilation * src.slowdown * _latency(target_profile, range(route.cut), src.hardware, "encode"),
        target_rest_s=dilation * ver.slowdown * _latency(target_profile, range(route.cut, enc_t.stop),
                                                         ver.hardware, "encode"),
        verify_s=verify)


def run_cooperative(target_model: str, draft_model: str, network: Any, plan: Any, inputs: Sequence[str], *,
                    max_new_tokens: int = 32, emulate: bool = True, target_profile: Any | None = None,
                    draft_profile: Any | None = None, dilation: float = 1.0, trace_base: Path | None = None,
                    token: str | None = None, threads: int | None = None,
                    adapters: tuple[ModelAdapter, ModelAdapter] | None = None) -> list[CoopOutput]:
    """Run every input through the cooperative plan; results in input order. Compute is paced to the
    profiles when both are given (and emulate is on); links are emulated when emulate is on."""
    from profiler.models import load_adapter

    target, draft = adapters or (load_adapter(target_model), load_adapter(draft_model))
    if plan.mode != "cooperative" or plan.draft_assignment is None or plan.k is None:
        raise InputError("--plan: not a cooperative plan (make one with aiflow plan --draft-profile)")
    if len(plan.assignment) != len(target.units()) or len(plan.draft_assignment) != len(draft.units()):
        raise InputError(f"--plan: its assignments do not fit {target.name} and {draft.name}")
    if plan.draft_model is not None and plan.draft_model != draft.name:
        raise InputError(f"--draft: the plan's draft is {plan.draft_model}, not {draft.name}")
    if draft.eos_token_id != target.eos_token_id:
        raise InputError(f"--draft: {draft.name} and {target.name} do not share a tokenizer")
    try:
        route = coop_route(target, network.source, plan.assignment, plan.draft_assignment, plan.k)
    except ValueError as exc:
        raise InputError(f"--plan: {exc}") from None
    sources = [prepare_input(target, item) for item in inputs]
    # a verifier already serving on the node: its verifier_address, else (a node that serves cooperative
    # plans only) its address
    given = {n.name: getattr(n, "verifier_address", None) or n.address for n in network.nodes
             if getattr(n, "verifier_address", None) or n.address}
    pacing = (pacing_from_profiles(target_profile, draft_profile, network, route, target, draft, dilation)
              if emulate and target_profile is not None and draft_profile is not None else None)
    k = dilation if pacing is not None else 1.0
    emulated = (EmulatedNetwork(nodes_from_network(network),
                                links_from_network(network, network_traces(network, trace_base)), k)
                if emulate else None)
    workers = None if route.verifier in given else LocalWorkers(target_model, [route.verifier], token=token,
                                                                 threads=threads, module="runtime.cooperative")

    async def go(address: str, tok: str | None) -> list[CoopResult]:
        transport = GrpcTransport(tok, tls=Tls.from_env())     # as the verifier serves ($AIFLOW_TLS_*)
        try:
            client = CoopClient(draft, target, route, address, transport, network=emulated, pacing=pacing)
            return [await client.generate(x, max_new_tokens=max_new_tokens, eos=target.eos_token_id)
                    for x in sources]
        finally:
            await transport.close()

    try:
        address = given.get(route.verifier) or workers.start()[route.verifier]  # type: ignore[union-attr]
        results = asyncio.run(go(address, workers.token if workers else token))
    finally:
        if workers is not None:
            workers.stop()
    return [CoopOutput(item, target.decode_tokens(r.tokens), r.tokens, r)
            for item, r in zip(inputs, results, strict=True)]
