"""Profiles built from tiny random-init models: valid, complete, real sizes; estimates and merges."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, VisionEncoderDecoderConfig, ViTConfig

from profiler.adapters.base import InputSpec
from profiler.build import build_profile, parse_input_spec
from profiler.errors import InputError
from profiler.estimate import calibrate, estimate_profile, fit_two
from profiler.hardware import DeviceClass, load_device, shipped_devices
from profiler.merge import merge_profiles
from profiler.models import load_adapter
from profiler.profile import Profile, load_profile, save_profile

torch.set_num_threads(1)
D, VOCAB, PROMPT, NEW = 32, 97, 12, 5
ENC_D, IMG, PATCH = 48, 32, 8


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    gpt2 = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=D, n_layer=2, n_head=4, bos_token_id=None,
                      eos_token_id=None)
    dec = GPT2Config(vocab_size=53, n_positions=64, n_embd=D, n_layer=2, n_head=4, bos_token_id=1,
                     eos_token_id=None)
    vit = ViTConfig(image_size=IMG, patch_size=PATCH, hidden_size=ENC_D, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=96)
    ved = VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, dec)
    ved.decoder_start_token_id, ved.pad_token_id = 1, 0
    out = {}
    for name, cfg in {"gpt2": gpt2, "ved": ved}.items():
        folder = tmp_path_factory.mktemp(name)
        cfg.save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def gpt2_profile(folders: dict[str, Path]) -> Profile:
    torch.set_num_threads(1)  # the profile records the thread count; other modules may have changed it
    steps: list[tuple[int, int, str]] = []
    profile = build_profile(load_adapter(str(folders["gpt2"])), InputSpec(prompt_tokens=PROMPT, new_tokens=NEW),
                            hardware="test-cpu", repeats=3, warmup=1, progress=lambda *a: steps.append(a))
    # One progress call per (phase, unit), then a final one.
    assert len(steps) == 2 * len(profile.units) + 1 and steps[-1][0] == steps[-1][1]
    return profile


@pytest.fixture(scope="module")
def ved_profile(folders: dict[str, Path]) -> Profile:
    return build_profile(load_adapter(str(folders["ved"])), InputSpec(new_tokens=NEW), hardware="test-cpu",
                         repeats=3, warmup=1)


def test_gpt2_profile_round_trips_and_is_complete(gpt2_profile: Profile, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    save_profile(gpt2_profile, path)
    again = load_profile(path)
    assert again == gpt2_profile
    assert [u.name for u in again.units] == ["text.embed", "text.block.0", "text.block.1", "text.head"]
    assert [(p.name, p.repeat, p.input) for p in again.phases] == [("prefill", 1, "source"),
                                                                   ("decode", NEW - 1, "loop")]
    for u in again.units:
        for ph in ("prefill", "decode"):
            assert ph in u.flops and ph in u.out_bytes and ph in u.latency_s["test-cpu"]
            assert u.latency_s["test-cpu"][ph] > 0
        assert u.source == {"test-cpu": "measured"}
    info = again.hardware["test-cpu"]
    assert info["cores"] >= 1 and info["torch_threads"] == 1 and "cpu_model" in info
    assert again.weights == "random-init" and again.input["prompt_tokens"] == PROMPT


def test_gpt2_sizes_are_the_real_tensors(gpt2_profile: Profile) -> None:
    f32 = 4
    embed, block, head = gpt2_profile.units[0], gpt2_profile.units[1], gpt2_profile.units[3]
    assert embed.out_bytes == {"prefill": PROMPT * D * f32, "decode": D * f32}     # decode: one token
    assert block.out_bytes == {"prefill": PROMPT * D * f32, "decode": D * f32}
    assert head.out_bytes == {"prefill": VOCAB * f32, "decode": VOCAB * f32}       # last-position logits
    assert gpt2_profile.phases[0].in_bytes == PROMPT * 8 and gpt2_profile.phases[1].in_bytes == 8
    assert gpt2_profile.result_bytes == NEW * 8
    # Parameters: a block holds 12 d^2 weights plus biases and norms.
    assert 12 * D * D * f32 < block.param_bytes < 13 * D * D * f32 + 20 * D * f32
    # Memory: weights + K and V for prompt + new tokens + at least its own input.
    kv = 2 * (PROMPT + NEW) * D * f32
    assert block.mem_bytes >= block.param_bytes + kv + PROMPT * D * f32
    assert embed.mem_bytes >= embed.param_bytes


def test_decode_is_a_single_token_step(gpt2_profile: Profile) -> None:
    block = gpt2_profile.units[1]
    # A decode step's FLOPs are one token's projections plus attention over the PROMPT cached keys.
    assert block.flops["decode"] == pytest.approx(2 * 12 * D * D + 4 * (PROMPT + 1) * D, rel=0.05)
    assert block.flops["prefill"] > (PROMPT - 1) * block.flops["decode"]
    assert block.ops["decode"] > 0 and block.ops["prefill"] > 0


def test_encoder_decoder_profile(ved_profile: Profile, tmp_path: Path) -> None:
    p = ved_profile
    save_profile(p, tmp_path / "ved.json")
    assert load_profile(tmp_path / "ved.json") == p
    names = [u.name for u in p.units]
    assert names[:4] == ["vision.embed", "vision.layer.0", "vision.layer.1", "vision.norm"]
    assert [(ph.name, ph.first, ph.last, ph.input) for ph in p.phases] == [
        ("encode", 0, 3, "source"), ("prefill", 4, 7, "none"), ("decode", 4, 7, "loop")]
    assert p.phases[0].in_bytes == 3 * IMG * IMG * 4 and p.phases[1].in_bytes == 0
    tokens = (IMG // PATCH) ** 2 + 1
    # The encoder output (projected to the decoder width) is the edge to both cross-attention blocks.
    assert len(p.edges) == 1 and p.edges[0].from_ == 3 and p.edges[0].to == [5, 6]
    assert p.edges[0].bytes == tokens * D * 4 == p.units[3].out_bytes["encode"]
    for i, u in enumerate(p.units):
        for ph in p.phases:
            if ph.first <= i <= ph.last:
                assert ph.name in u.latency_s["test-cpu"] and ph.name in u.flops
    assert p.units[5].out_bytes == {"prefill": D * 4, "decode": D * 4}   # one start token, one step
    # Cross-attention K/V over the encoder tokens sit in the block's memory.
    assert p.units[5].mem_bytes >= p.units[5].param_bytes + 2 * tokens * D * 4


def test_estimate_scales_with_peak_and_is_marked(gpt2_profile: Profile) -> None:
    def device(peak: float) -> DeviceClass:
        # Enormous bandwidth and no per-operation cost: compute-bound, so time follows peak_flops.
        return DeviceClass(name="fake", peak_flops=peak, mem_bandwidth_bps=1e30, mem_bytes=1e9, op_overhead_s=0.0)

    slow = estimate_profile(gpt2_profile, device(1e9))
    fast = estimate_profile(gpt2_profile, device(4e9))
    block_slow = slow.units[1].latency_s["fake"]["prefill"]
    assert block_slow > 0
    assert fast.units[1].latency_s["fake"]["prefill"] == pytest.approx(block_slow / 4)
    assert all(u.source["fake"] == "estimated" and u.source["test-cpu"] == "measured" for u in slow.units)
    assert slow.units[1].latency_s["test-cpu"] == gpt2_profile.units[1].latency_s["test-cpu"]
    with pytest.raises(InputError, match="already has"):
        estimate_profile(slow, device(1e9))


def test_shipped_devices_estimate(gpt2_profile: Profile) -> None:
    devices = {d.name: d for d in shipped_devices()}
    assert {"h200", "jetson-orin-nano", "phone-a78"} <= set(devices)
    assert devices["h200"].mem_bandwidth_bytes_per_s == pytest.approx(4.8e12)
    p = gpt2_profile
    for d in devices.values():
        p = estimate_profile(p, d)
    cal = calibrate(gpt2_profile, "test-cpu")
    assert cal.slowdown >= 1 and cal.op_overhead_s >= 0 and cal.entries == 8
    # Every shipped description fixes its per-operation cost, so an estimate is a * roofline + that cost
    # times the unit's operations, whatever this host's own fitted per-operation cost.
    from profiler.estimate import bytes_moved, op_count, roofline, unit_inputs
    inputs = unit_inputs(gpt2_profile)
    for d in devices.values():
        assert d.op_overhead_s is not None, d.name
        for i, u in enumerate(p.units):
            for ph, t in u.latency_s[d.name].items():
                roof = roofline(u.flops.get(ph, 0.0), bytes_moved(u, ph, inputs[(i, ph)]),
                                d.peak_flops * d.efficiency, d.mem_bandwidth_bytes_per_s)
                assert t == pytest.approx(cal.slowdown * roof + d.op_overhead_s * op_count(u, ph), rel=1e-9)
    # With the same operations and a higher roofline, the H200 is faster than the phone wherever the
    # per-operation part is alike: compare the roofline parts alone.
    for u in p.units:
        for ph in u.latency_s["h200"]:
            h = u.latency_s["h200"][ph] - devices["h200"].op_overhead_s * op_count(u, ph)
            ph_ = u.latency_s["phone-a78"][ph] - devices["phone-a78"].op_overhead_s * op_count(u, ph)
            assert 0 <= h <= ph_
    assert load_device("h200") == devices["h200"]


def test_host_code_units_scale_by_host_speed_and_stay_out_of_the_fit(gpt2_profile: Profile) -> None:
    """A unit marked host_code (decoding a file, tokenizing) is plain CPU code: its estimate is its
    measured time times the device's host_factor, whatever the roofline says, and it does not move
    the calibration of the other units."""
    units = list(gpt2_profile.units)
    hw = "test-cpu"
    slow = {ph: 1000 * t for ph, t in units[0].latency_s[hw].items()}   # far off any roofline fit
    units[0] = units[0].model_copy(update={"latency_s": {**units[0].latency_s, hw: slow}, "host_code": True})
    marked = gpt2_profile.model_copy(update={"units": units})
    as_measured = gpt2_profile.model_copy(update={"units": [units[0].model_copy(update={
        "latency_s": gpt2_profile.units[0].latency_s}), *units[1:]]})
    cal, cal_slow = calibrate(as_measured, hw), calibrate(marked, hw)
    assert cal_slow.entries == calibrate(gpt2_profile, hw).entries - len(slow)
    assert (cal_slow.slowdown, cal_slow.op_overhead_s) == (cal.slowdown, cal.op_overhead_s)
    device = DeviceClass(name="board", peak_flops=1e9, mem_bandwidth_bps=1e9, mem_bytes=1e9, host_factor=3.0)
    est = estimate_profile(marked, device)
    for ph, t in slow.items():
        assert est.units[0].latency_s["board"][ph] == pytest.approx(3.0 * t, rel=1e-12)
    plain = estimate_profile(as_measured, device)
    assert est.units[1].latency_s["board"] == plain.units[1].latency_s["board"]
    assert est.hardware["board"]["host_factor"] == 3.0
    assert {d.name: d.host_factor for d in shipped_devices()} == {
        "h200": 1.0, "jetson-orin-nano": 4.0, "phone-a78": 2.0, "phone-sd695": 2.5, "pi-zero-2w": 8.0}


def test_fit_recovers_slope_and_per_op_cost() -> None:
    xs = [1e-5, 3e-4, 2e-3, 5e-5, 1e-2]
    ns = [10, 40, 40, 8, 6]
    ts = [2.5 * x + 4e-6 * n for x, n in zip(xs, ns, strict=True)]
    a, c = fit_two(xs, ns, ts)
    assert a == pytest.approx(2.5, rel=1e-6) and c == pytest.approx(4e-6, rel=1e-6)


def test_merge_combines_and_refuses_mismatches(gpt2_profile: Profile, ved_profile: Profile,
                                               folders: dict[str, Path]) -> None:
    other = gpt2_profile.model_copy(update={
        "units": [u.model_copy(update={"latency_s": {"edge-cpu": u.latency_s["test-cpu"]},
                                       "source": {"edge-cpu": "measured"}, "spread": {}})
                  for u in gpt2_profile.units],
        "hardware": {"edge-cpu": {"cores": 8}}})
    merged, replaced = merge_profiles([gpt2_profile, other])
    assert merged.hardware_classes == ["test-cpu", "edge-cpu"] and replaced == []
    assert set(merged.hardware) == {"test-cpu", "edge-cpu"}
    _, replaced = merge_profiles([merged, other])
    assert replaced == ["edge-cpu"]
    with pytest.raises(InputError, match="model"):
        merge_profiles([gpt2_profile, ved_profile])
    longer = build_profile(load_adapter(str(folders["gpt2"])), InputSpec(prompt_tokens=PROMPT, new_tokens=NEW + 1),
                           hardware="x", repeats=1, warmup=0)
    with pytest.raises(InputError, match="phases"):
        merge_profiles([gpt2_profile, longer])


@pytest.mark.parametrize("text", ["image=0", "prompt=x", "new", "colour=3", "new=2,new=3", "prompt=-1"])
def test_bad_input_spec(text: str) -> None:
    with pytest.raises(InputError, match="--input"):
        parse_input_spec(text)


def test_input_spec() -> None:
    assert parse_input_spec("image=64, prompt=16,new=8") == InputSpec(image_size=64, prompt_tokens=16, new_tokens=8)
    assert parse_input_spec(None) == InputSpec()


class _ChainStub:
    """An adapter whose chained run of a phase sleeps `chained_s` (a worker's segment)."""

    def __init__(self, chained_s: float) -> None:
        self.chained_s = chained_s

    def run(self, first: int, last: int, x: object, *, phase: str, position: int, state: object) -> torch.Tensor:
        import time
        time.sleep(self.chained_s)
        return torch.zeros(1)


def _records(latencies: list[float]) -> list:
    from profiler.build import _UnitRecord
    recs = [_UnitRecord() for _ in latencies]
    for r, t in zip(recs, latencies, strict=True):
        r.latency["decode"] = t
    return recs


def test_unit_medians_are_scaled_to_the_chained_phase_keeping_their_shares() -> None:
    from profiler.adapters.base import PhaseInfo
    from profiler.build import _chain_correct
    recs = _records([0.010, 0.030])                           # 40 ms timed unit by unit
    ph = PhaseInfo(name="decode", first=0, last=1, repeat=4, input="loop")
    factor = _chain_correct(_ChainStub(0.030), ph, None, {}, 0, recs, 0, 3, torch.device("cpu"))
    assert 0.70 <= factor <= 1.5                               # the chain took about 30 ms (sleep overshoots)
    assert recs[0].latency["decode"] == pytest.approx(0.010 * factor, rel=1e-6)
    assert recs[1].latency["decode"] / recs[0].latency["decode"] == pytest.approx(3.0, rel=1e-5)


def test_an_implausible_chain_factor_is_not_applied() -> None:
    from profiler.adapters.base import PhaseInfo
    from profiler.build import _chain_correct
    recs = _records([0.001, 0.001])
    ph = PhaseInfo(name="decode", first=0, last=1, repeat=4, input="loop")
    assert _chain_correct(_ChainStub(0.020), ph, None, {}, 0, recs, 0, 2, torch.device("cpu")) == 1.0
    assert [r.latency["decode"] for r in recs] == [0.001, 0.001]
