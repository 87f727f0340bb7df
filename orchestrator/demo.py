"""The one-command demo: profile the project's captioner, plan it on a three-tier network, run it
through local workers under every strategy, and compare measured with predicted latency.

The steps are plain functions so the experiment (bench/aiflow_experiment.py) reuses them; the CLI
(`aiflow demo`) only prints.
"""

from __future__ import annotations

import hashlib
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.network import NetworkState, load_network
from orchestrator.strategies import Strategy
from profiler.adapters.base import InputSpec, ModelAdapter
from profiler.paths import cache_root
from profiler.profile import Profile, load_profile, save_profile

if TYPE_CHECKING:
    from runtime.local import LocalWorkers

DEMO_MODEL = "tiny-captioner"
# The shipped example network (a checkout is what the README runs from): a low-end device, where the
# optimum moves work off it. examples/three-tier.network.yaml (a flagship phone) is the case where
# running on the device is right.
DEMO_NETWORK = Path(__file__).resolve().parents[1] / "examples" / "low-end.network.yaml"
# The flagship-phone network (phone, edge, cloud) the benchmarks vary link by link.
PHONE_NETWORK = Path(__file__).resolve().parents[1] / "examples" / "three-tier.network.yaml"
# Profiles measured on real hardware that is not at hand here (bench/device_profiles.sh): they replace
# the roofline estimate of their class.
MEASURED_PROFILES = Path(__file__).resolve().parents[1] / "data" / "profiles"
PROFILE_REPEATS = 10
WORKER_THREADS = 1          # torch threads of each demo worker; the profile is measured with as many
# Generation stops at EOS; the bound only has to exceed the longest caption (25 words + EOS). The profile
# keeps InputSpec's 16 tokens, the median caption length (15 tokens + EOS), so plans are ranked for a
# typical request and each request's prediction is recomputed for its own length.
CAPTION_TOKENS = 32

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- the profile, measured once per machine and model version ----------------------------------
def weights_digest(adapter: ModelAdapter) -> str:
    """A short digest of the model's parameters: a retrained model gets a fresh profile."""
    h = hashlib.sha256()
    for name, p in sorted(adapter.model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


# Bumped when what a profile holds changes meaning (r2: a decode unit hands on uint8 pixels and is
# marked host_code), so a cache made by older code is measured again rather than mispredicting.
PROFILE_REVISION = 2


def profile_cache_path(model: str, hardware: str, digest: str, devices: Sequence[str]) -> Path:
    """The cache file of a model's profile on this machine class, with its weights' digest, the
    profile revision and the described devices (their descriptions hashed in: an edited description
    gives fresh estimates)."""
    key = "-".join([model, hardware, digest, f"r{PROFILE_REVISION}", *devices, _descriptions_digest(devices)])
    return cache_root() / "profiles" / f"{key}.profile.json"


def _descriptions_digest(devices: Sequence[str]) -> str:
    from profiler.hardware import load_device, shipped_device_names

    shipped = set(shipped_device_names())
    h = hashlib.sha256()
    for d in devices:
        name = d.removesuffix("-measured")
        h.update(load_device(name).model_dump_json().encode() if name in shipped else name.encode())
    return h.hexdigest()[:8]


def demo_devices(net: NetworkState) -> list[str]:
    """The described hardware classes the network uses (those this machine cannot measure)."""
    from profiler.hardware import shipped_device_names

    shipped = set(shipped_device_names())
    return sorted({n.hardware for n in net.nodes if n.hardware in shipped})


def measured_profiles(model: str, devices: Sequence[str]) -> dict[str, Path]:
    """Shipped profiles of `model` measured on the described classes `devices` (class -> file)."""
    out = {}
    for dev in devices:
        f = MEASURED_PROFILES / dev / f"{model}.{dev}.json"
        if f.is_file():
            out[dev] = f
    return out


def cached_profile(adapter: ModelAdapter, net: NetworkState, *, refresh: bool = False, threads: int = WORKER_THREADS,
                   progress: Callable[[int, int, str], None] | None = None) -> tuple[Profile, Path, bool]:
    """This machine's measured profile of the model plus roofline estimates for the network's
    described devices; measured once and cached per (model, machine class, weights, devices).
    Returns (profile, cache file, whether it came from the cache)."""
    import torch

    from profiler.build import build_profile
    from profiler.estimate import estimate_profile
    from profiler.hardware import hardware_class, load_device

    devices = demo_devices(net)
    measured = measured_profiles(adapter.name, devices)
    path = profile_cache_path(adapter.name, hardware_class(threads=threads), weights_digest(adapter),
                              [d + ("-measured" if d in measured else "") for d in devices])
    if path.is_file() and not refresh:
        return load_profile(path), path, True
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the workers run one thread each, so profile with one too
    try:
        profile = build_profile(adapter, InputSpec(), repeats=PROFILE_REPEATS, progress=progress)
    finally:
        torch.set_num_threads(old_threads)
    for dev in devices:
        if dev not in measured:
            profile = estimate_profile(profile, load_device(dev))
    if measured:
        from profiler.merge import merge_profiles
        profile, _ = merge_profiles([profile, *(load_profile(f) for f in measured.values())])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_profile(profile, path)
    return profile, path, False


# -- test images -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoImage:
    path: Path
    truth: str          # the scene, in canonical form
    reference: str      # one reference caption


def write_test_images(folder: Path, count: int, seed: int = 7) -> list[DemoImage]:
    """PNG files of held-out test scenes (never seen in training), with their true scenes."""
    from profiler.captioner.data import sample_split_scene
    from profiler.captioner.scenes import caption, render

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(count):
        scene = sample_split_scene(rng, "test")
        path = folder / f"test-{i:02d}.png"
        render(scene, rng).save(path)
        out.append(DemoImage(path, scene.key(), caption(scene, rng, template=0)))
    return out


# -- running the strategies --------------------------------------------------------------------
def input_key(item: str) -> str:
    """How a request's input is named in results: an image by its file name, a prompt by itself."""
    try:
        return Path(item).name if Path(item).is_file() else item
    except OSError:  # a prompt too long to be a file name
        return item


@dataclass(frozen=True)
class RequestRecord:
    image: str                         # input_key of the request's input
    caption: str
    measured_s: float                  # wall time divided by K: the emulated network's latency
    predicted_s: float | None          # the plan's L for this request's number of decoder passes
    passes: int                        # decoder passes made (generation stops at EOS)
    breakdown: dict                    # compute per node, transfer per link (divided by K), bytes


@dataclass
class StrategyRun:
    strategy: Strategy
    requests: list[RequestRecord] = field(default_factory=list)
    plan_id: int | None = None

    @property
    def measured_s(self) -> list[float]:
        return [r.measured_s for r in self.requests]

    def captions_by_image(self) -> dict[str, str]:
        return {r.image: r.caption for r in self.requests}

    def differs_from(self, reference: dict[str, str]) -> int:
        """How many requests' captions differ from the reference caption of their image."""
        return sum(r.caption != reference[r.image] for r in self.requests)

    @property
    def median_s(self) -> float:
        return statistics.median(self.measured_s) if self.requests else float("nan")

    @property
    def predicted_median_s(self) -> float:
        """Median of the per-request predictions (each for that request's own caption length)."""
        preds = [r.predicted_s for r in self.requests if r.predicted_s is not None]
        if preds:
            return statistics.median(preds)
        return self.strategy.plan.predicted_latency_s if self.strategy.plan else float("nan")

    def p90_s(self) -> float:
        if len(self.requests) < 2:
            return self.median_s
        return statistics.quantiles(self.measured_s, n=10, method="inclusive")[-1]

    def total_bytes(self) -> int:
        return sum(sum(r.breakdown["transfer_bytes"].values()) for r in self.requests)


def run_strategy(strategy: Strategy, model: str, net: NetworkState, profile: Profile, images: Sequence[Path | str], *,
                 dilation: float, repeats: int = 1, warmup: int = 1, compression: str | None = None,
                 adapter: ModelAdapter | None = None, max_new_tokens: int = CAPTION_TOKENS,
                 kernel_links: bool = False, pool: LocalWorkers | None = None) -> StrategyRun:
    """Run every input (image files, or prompts for an LLM) `repeats` times through local workers under
    the strategy's plan (emulated links and compute, time dilation K; link rates shaped by the kernel
    with `kernel_links`); the first `warmup` requests are not counted. `pool`: workers already serving
    the network's nodes, reused (else the run starts and stops its own)."""
    from orchestrator.compression import compressed_profile
    from orchestrator.costmodel import latency_for_steps
    from runtime.session import run_on_network

    run = StrategyRun(strategy)
    if strategy.plan is None:
        return run
    inputs = [str(images[0])] * warmup + [str(p) for _ in range(repeats) for p in images]
    results = run_on_network(model, net, strategy.plan, inputs, profile=profile, dilation=dilation,
                             compression=compression, adapter=adapter, threads=WORKER_THREADS,
                             max_new_tokens=max_new_tokens,
                             kernel_links=kernel_links, pool=pool)
    how = compression or strategy.plan.compression
    planned = compressed_profile(profile, how) if how else profile   # the bytes as they will be sent
    for r in results[warmup:]:
        passes = r.result.steps
        predicted = latency_for_steps(planned, net, strategy.plan.assignment, passes)
        run.requests.append(RequestRecord(input_key(r.input), r.text or "", r.result.scaled_s, predicted, passes,
                                          r.result.breakdown(scale=True)))
    return run


def local_dilation(profile: Profile, net: NetworkState) -> float:
    """K for this machine: the fastest node's profiled time stretched to this machine's own speed."""
    from runtime.stages import dilation_factor

    return dilation_factor(profile, net, local_class(profile))


def local_class(profile: Profile, threads: int = WORKER_THREADS) -> str:
    """This machine's class as `profile` keys it, for workers of `threads` torch threads (the demo's run
    one each, and profile with one); a legacy "cpu-<N>c" key counts when its fingerprint matches."""
    from profiler.hardware import hardware_class, local_key

    return local_key(profile.hardware, profile.hardware_classes, hardware_class(threads=threads))


def unsplit_captions(adapter: ModelAdapter, images: Sequence[Path], max_new_tokens: int = CAPTION_TOKENS) -> list[str]:
    """The oracle: the whole model in this process, no workers."""
    from profiler.generate import greedy_generate

    out = []
    for p in images:
        gen = greedy_generate(adapter, adapter.prepare_image(str(p)), new_tokens=max_new_tokens)
        out.append(adapter.decode_tokens([int(t) for t in gen.tokens[0]]))
    return out


def default_network() -> NetworkState:
    return load_network(DEMO_NETWORK)
