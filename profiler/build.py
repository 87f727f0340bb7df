"""Building a Profile: run a model unit by unit on this machine and record what each unit costs.

The walk follows one request: every phase in order, every unit of the phase in order, each unit fed
the real output of the unit before it, sharing one request state (the encoder output, the KV cache),
so the cache a decode step sees is the one the prefill really left. For each (unit, phase):

- flops: fvcore on exactly that unit (profiler.flops), attention included, multiply-add = 2;
- latency: median of timed runs of that unit alone, each on a fresh copy of the state
  (profiler.measure); a decode step is one token at position = the tokens the prefill cached;
- out_bytes: the size of the tensor the unit returned;
- the state bytes the unit added (its KV cache growth), and the largest tensor any of its submodules
  produced (forward hooks);
- bytes_moved (an extra field the roofline estimator reads): weights read in full (embedding tables
  excepted: a lookup reads only its rows) + input + output + the KV cache the unit holds after the pass;
- ops (an extra field the estimator reads): the ATen operations one pass dispatches;
- host_code (an extra field, true or absent): the unit is plain CPU code (decoding an image file,
  tokenizing), which the estimator scales by a device's host speed instead of its roofline.

Per unit then: param_bytes (its modules' parameters and buffers), and
mem_bytes = param_bytes + KV cache at the request's maximum length (prompt + new tokens) + the
largest activation it holds at once (its input plus its largest intermediate or output tensor).
"""

from __future__ import annotations

import copy
import datetime as dt
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from profiler.adapters.base import InputSpec, ModelAdapter, PhaseInfo
from profiler.adapters.common import model_device
from profiler.errors import InputError
from profiler.flops import count_unit
from profiler.hardware import fingerprint, hardware_class, measure_mem_bandwidth, measure_peak_flops
from profiler.measure import LargestOutput, OpCounter, held_bytes, param_bytes, streamed_param_bytes, time_unit_step
from profiler.profile import Edge, Phase, Profile, Unit

TOKEN_ID_BYTES = 8          # a sampled token travels as one int64 id
ProgressFn = Callable[[int, int, str], None]   # (steps done, steps in all, what is being measured)


@dataclass
class _UnitRecord:
    flops: dict[str, float] = field(default_factory=dict)
    out_bytes: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    bytes_moved: dict[str, float] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)
    kv_bytes: float = 0.0           # KV cache held at the request's maximum length
    cache_now: int = 0              # state bytes this unit holds at this point of the walk
    activation: int = 0             # largest input + intermediate it holds at once


INPUT_KEYS = {"image": "image_size", "prompt": "prompt_tokens", "new": "new_tokens", "batch": "batch"}


def parse_input_spec(text: str | None, where: str = "--input") -> InputSpec:
    """`image=64,prompt=16,new=16` (any subset, any order) -> InputSpec; anything else is an InputError."""
    if text is None or not text.strip():
        return InputSpec()
    values: dict[str, int] = {}
    for part in text.split(","):
        key, sep, raw = part.strip().partition("=")
        key = key.strip()
        if not sep or key not in INPUT_KEYS:
            raise InputError(f"{where}: {part.strip()!r}: expected KEY=N with KEY one of {', '.join(INPUT_KEYS)}")
        if INPUT_KEYS[key] in values:
            raise InputError(f"{where}: {key}: given twice")
        try:
            value = int(raw.strip())
        except ValueError:
            raise InputError(f"{where}: {key}: {raw.strip()!r} is not a whole number") from None
        if value < 1:
            raise InputError(f"{where}: {key}: must be at least 1, got {value}")
        values[INPUT_KEYS[key]] = value
    return InputSpec(**values)


def _spec_dict(spec: InputSpec, image_size: int | None, uses_prompt: bool,
               image_format: str | None = None, captured: dict[str, object] | None = None) -> dict[str, object]:
    out: dict[str, object] = {"new_tokens": spec.new_tokens, "batch": spec.batch}
    if uses_prompt:
        out["prompt_tokens"] = spec.prompt_tokens
    if image_size is not None or spec.image_size is not None:
        out["image_size"] = spec.image_size or image_size
    if image_format is not None:
        out["image_format"] = image_format     # the request input is an image file of this format
    if captured is not None:
        out["captured"] = captured             # that file: width, height, format, bytes
    return out


def machine_info(repeats: int, warmup: int, device: torch.device | None = None) -> dict[str, object]:
    """The fingerprint plus the roofline (matmul peak, copy bandwidth) of the device the units run on."""
    device = device or torch.device("cpu")
    info = dict(fingerprint())
    info["device"] = device.type
    info["peak_flops_measured"] = measure_peak_flops(device=device)
    info["mem_bandwidth_measured"] = measure_mem_bandwidth(device=device)
    info["roofline_samples"] = 1
    info["repeats"] = repeats
    info["warmup"] = warmup
    info["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return info


class RooflineSamples:
    """This machine's matmul peak and copy bandwidth, measured after each phase of the profiling run
    (machine_info measured them before the first) and summarised by their medians: a shared,
    virtualised host's speed drifts (211-332 GFLOP/s in four runs seconds apart here), and the
    estimates for described devices scale with the measured peak over the measured unit times, so
    both are taken across the same stretch of time."""

    def __init__(self, device: torch.device, seconds: float = 0.15) -> None:
        self.device, self.seconds = device, seconds
        self.peaks: list[float] = []
        self.bandwidths: list[float] = []

    def sample(self) -> None:
        self.peaks.append(measure_peak_flops(device=self.device, seconds=self.seconds))
        self.bandwidths.append(measure_mem_bandwidth(device=self.device, seconds=self.seconds))

    def record(self, info: dict[str, object]) -> None:
        """Fold the samples, and the one `machine_info` took, into `info` as their medians."""
        peaks = [float(info["peak_flops_measured"]), *self.peaks]            # type: ignore[arg-type]
        bws = [float(info["mem_bandwidth_measured"]), *self.bandwidths]      # type: ignore[arg-type]
        info["peak_flops_measured"] = statistics.median(peaks)
        info["mem_bandwidth_measured"] = statistics.median(bws)
        info["roofline_samples"] = len(peaks)


def build_profile(adapter: ModelAdapter, spec: InputSpec, *, hardware: str | None = None, repeats: int = 10,
                  warmup: int = 2, progress: ProgressFn | None = None) -> Profile:
    """Profile `adapter` for requests shaped like `spec` on the device its weights are on (move the
    model first to profile a GPU); latencies are keyed by `hardware` (default: this machine's class,
    e.g. "cpu-epyc-7b13-2t", or the GPU's, e.g. "nvidia-h200")."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    device = model_device(adapter.model)
    info = machine_info(repeats, warmup, device)
    hw = hardware or hardware_class(info, device.type)
    unit_infos = adapter.units()
    phase_infos = adapter.phases(spec)
    edge_infos = adapter.edges()
    n = len(unit_infos)
    params = [param_bytes(adapter.unit_modules(i)) for i in range(n)]
    streamed = [streamed_param_bytes(adapter.unit_modules(i)) for i in range(n)]
    recs = [_UnitRecord() for _ in range(n)]
    edge_src = {e.src for e in edge_infos}
    edge_bytes: dict[int, float] = {}
    phase_in: dict[str, float] = {}
    tokens_seen: dict[int, int] = {}       # first unit of a loop phase -> tokens earlier phases ran through it
    loop_firsts = {p.first for p in phase_infos if p.input == "loop"}
    image_size: int | None = None
    uses_prompt = False                    # a phase reads prompt token ids from the source
    total = sum(p.last - p.first + 1 for p in phase_infos)
    done = 0
    state = adapter.new_state()
    roof = RooflineSamples(device)

    chain: dict[str, float] = {}
    for ph in phase_infos:
        position = tokens_seen.get(ph.first, 0) if ph.input == "loop" else 0
        x = adapter.example_input(spec, ph.name)
        phase_x, phase_state = x, copy.deepcopy(state)
        if x is not None and x.dim() == 4 and image_size is None:
            image_size = int(x.shape[-1])
        if x is not None and ph.input == "source" and (x.dtype in (torch.int64, torch.int32)
                                                       or (x.dtype == torch.uint8 and ph.name == "prefill")):
            uses_prompt = True                 # token ids or a prompt's UTF-8 (uint8 in encode: an image file)
        phase_in[ph.name] = float(held_bytes(x)) if (x is not None and ph.input != "none") else 0.0
        for i in range(ph.first, ph.last + 1):
            if progress is not None:
                progress(done, total, f"{ph.name} {unit_infos[i].name}")
            rec = recs[i]
            in_bytes = held_bytes(x) if x is not None else 0
            rec.flops[ph.name] = count_unit(adapter, i, x, phase=ph.name, position=position, state=state)

            def step(s: object, i: int = i, x: torch.Tensor | None = x, phase: str = ph.name,
                     pos: int = position) -> torch.Tensor:
                return adapter.run(i, i, x, phase=phase, position=pos, state=s)  # type: ignore[arg-type]

            timing = time_unit_step(step, state, warmup=warmup, repeats=repeats, device=device)
            rec.latency[ph.name] = round(timing.median_s, 9)
            rec.spread[ph.name] = round(timing.spread, 4)

            # The real run that advances the request, with hooks for the largest intermediate tensor.
            before = held_bytes(state.cache)
            with torch.inference_mode(), LargestOutput(adapter.unit_modules(i)) as largest, OpCounter() as counter:
                out = adapter.run(i, i, x, phase=ph.name, position=position, state=state)
            rec.ops[ph.name] = counter.ops
            grown = held_bytes(state.cache) - before
            rec.cache_now += grown
            # A loop phase adds one step's growth per generated token; other phases add theirs once.
            rec.kv_bytes += grown * (spec.new_tokens if ph.input == "loop" else 1)
            out_b = held_bytes(out)
            rec.out_bytes[ph.name] = float(out_b)
            rec.activation = max(rec.activation, in_bytes + max(largest.max_bytes, out_b))
            rec.bytes_moved[ph.name] = float(streamed[i] + in_bytes + out_b + rec.cache_now)
            if i in edge_src and i not in edge_bytes:
                state.encoder_out = out
                edge_bytes[i] = float(out_b)
            if image_size is None and ph.name == "encode" and out.dim() == 4:
                image_size = int(out.shape[-1])    # pixels a decode unit made from the image file
            if i in loop_firsts and out.dim() == 3:
                # tokens this pass cached: where the loop phase starting at unit i continues from
                tokens_seen[i] = tokens_seen.get(i, 0) + int(out.shape[1])
            x = out
            done += 1
        chain[ph.name] = _chain_correct(adapter, ph, phase_x, phase_state, position, recs, warmup, repeats, device)
        roof.sample()                          # machine_info measured before the first phase
    roof.record(info)
    info["chain_factors"] = {k: round(v, 4) for k, v in chain.items()}
    if progress is not None:
        progress(done, total, "done")

    host_code = adapter.host_code_units()
    units = [
        Unit(name=u.name, param_bytes=params[i], mem_bytes=params[i] + int(recs[i].kv_bytes) + recs[i].activation,
             flops=recs[i].flops, out_bytes=recs[i].out_bytes, latency_s={hw: recs[i].latency},
             source={hw: "measured"}, spread={hw: recs[i].spread}, bytes_moved=recs[i].bytes_moved,
             ops=recs[i].ops, **({"host_code": True} if i in host_code else {}))
        for i, u in enumerate(unit_infos)
    ]
    phases = [Phase(name=p.name, first=p.first, last=p.last, repeat=p.repeat, input=p.input,
                    in_bytes=phase_in.get(p.name, 0.0)) for p in phase_infos]
    edges = [Edge.model_validate({"from": e.src, "to": list(e.dst), "bytes": edge_bytes.get(e.src, 0.0)})
             for e in edge_infos]
    return Profile(model=adapter.name, units=units, phases=phases, edges=edges,
                   result_bytes=result_bytes(phase_infos, recs, spec),
                   hardware={hw: info}, weights=adapter.weights,
                   input=_spec_dict(spec, image_size, uses_prompt, getattr(adapter, "image_format", None),
                                    adapter.captured(spec)),
                   family=adapter.family)


CHAIN_FACTOR_RANGE = (0.5, 2.0)


def _chain_correct(adapter: ModelAdapter, ph: PhaseInfo, x: torch.Tensor | None, state: Any, position: int,
                   recs: list[_UnitRecord], warmup: int, repeats: int, device: torch.device) -> float:
    """Time the phase's units run as one chain, as a worker runs a segment, and scale the units' medians
    so they add up to it; the factor applied. Each unit timed alone on a fresh copy of the request's
    state runs with colder caches than in the chain (the sum came out 13% above the chained generation
    of tiny-gpt2 here): the units keep their shares, the phase its measured total. A factor outside
    CHAIN_FACTOR_RANGE is taken as a measuring accident and not applied (1.0 returned)."""
    def step(s: Any) -> torch.Tensor:
        return adapter.run(ph.first, ph.last, x, phase=ph.name, position=position, state=s)

    total = sum(recs[i].latency[ph.name] for i in range(ph.first, ph.last + 1))
    if total <= 0:
        return 1.0
    chained = time_unit_step(step, state, warmup=warmup, repeats=repeats, device=device).median_s
    factor = chained / total
    if not CHAIN_FACTOR_RANGE[0] <= factor <= CHAIN_FACTOR_RANGE[1]:
        return 1.0
    for i in range(ph.first, ph.last + 1):
        recs[i].latency[ph.name] = round(recs[i].latency[ph.name] * factor, 9)
    return factor


def result_bytes(phases: list, recs: list[_UnitRecord], spec: InputSpec) -> float:
    """What the sink receives: the generated token ids for a generating model, else the last output."""
    active = [p for p in phases if p.repeat > 0]
    if not active:
        return 0.0
    last = active[-1]
    if any(p.input == "loop" for p in phases):
        return float(spec.new_tokens * spec.batch * TOKEN_ID_BYTES)
    return recs[last.last].out_bytes.get(last.name, 0.0)
