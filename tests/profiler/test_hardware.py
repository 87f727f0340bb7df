"""Hardware classes are keyed by what decides speed: the CPU model and torch threads, or the GPU's name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiler.hardware import (
    cpu_slug,
    current_class_name,
    fingerprint,
    hardware_class,
    is_legacy_class,
    local_key,
    local_threads,
    native_class,
)
from profiler.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("model", "expected"), [
    ("AMD EPYC 7B13 64-Core Processor", "epyc-7b13"),
    ("Intel(R) Xeon(R) Processor", "xeon"),
    ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "xeon-platinum-8375c"),
    ("Intel(R) Core(TM) i7-8700K CPU @ 3.70GHz", "core-i7-8700k"),
    ("AMD Ryzen 7 PRO 4750U with Radeon Graphics", "ryzen-7-pro-4750u"),
    ("Apple M2", "apple-m2"),
    ("aarch64", "aarch64"),
    ("", "unknown"),
    ("(R)", "unknown"),
])
def test_cpu_slug_keeps_the_model_and_drops_the_noise(model: str, expected: str) -> None:
    assert cpu_slug(model) == expected


def test_cpu_slug_is_short() -> None:
    assert len(cpu_slug("Some Very Long Processor Name " * 5)) <= 32


def fp(model: str, cores: int, threads: int, cuda: str | None = None) -> dict[str, object]:
    out: dict[str, object] = {"cpu_model": model, "cores": cores, "torch_threads": threads}
    if cuda:
        out["cuda_device"] = cuda
    return out


def test_class_is_cpu_model_and_threads_not_core_count() -> None:
    epyc = hardware_class(fp("AMD EPYC 7B13 64-Core Processor", 2, 2))
    assert epyc == "cpu-epyc-7b13-2t"
    # the same core count on another CPU is another class; more cores on the same CPU and threads is not
    assert hardware_class(fp("Intel(R) Xeon(R) Processor", 2, 2)) == "cpu-xeon-2t" != epyc
    assert hardware_class(fp("AMD EPYC 7B13 64-Core Processor", 16, 2)) == epyc
    # threads decide speed too; a caller may name the threads its workers will run with
    assert hardware_class(fp("AMD EPYC 7B13 64-Core Processor", 2, 1)) == "cpu-epyc-7b13-1t"
    assert hardware_class(fp("AMD EPYC 7B13 64-Core Processor", 2, 2), threads=1) == "cpu-epyc-7b13-1t"


def test_gpu_class_is_the_gpu_name() -> None:
    f = fp("Intel(R) Xeon(R) Processor", 16, 2, cuda="NVIDIA H200")
    assert hardware_class(f, "cuda") == "nvidia-h200"
    assert hardware_class(f, "cpu") == "cpu-xeon-2t"


def test_this_machine_class_is_computed_from_its_fingerprint() -> None:
    here = fingerprint()
    assert hardware_class() == f"cpu-{cpu_slug(str(here['cpu_model']))}-{here['torch_threads']}t"


def test_legacy_keys_map_by_their_recorded_fingerprint() -> None:
    assert is_legacy_class("cpu-2c") and is_legacy_class("cpu-16c")
    assert not is_legacy_class("cpu-xeon-2t") and not is_legacy_class("h200") and not is_legacy_class("cpu-2cx")
    info = {"cpu_model": "Intel(R) Xeon(R) Processor", "cores": 2, "torch_threads": 1}
    assert current_class_name("cpu-2c", info) == "cpu-xeon-1t"
    assert current_class_name("cpu-2c", {"cores": 2}) == "cpu-2c"        # nothing recorded: stays itself
    assert current_class_name("cpu-2c", None) == "cpu-2c"
    assert current_class_name("cpu-host2", info) == "cpu-host2"          # a name given by --hardware


def test_local_key_finds_this_class_under_a_legacy_key() -> None:
    hardware = {"cpu-2c": {"cpu_model": "AMD EPYC 7B13 64-Core Processor", "torch_threads": 1},
                "h200": {"estimated": True}}
    classes = ["cpu-2c", "h200"]
    assert local_key(hardware, classes, "cpu-epyc-7b13-1t") == "cpu-2c"
    assert local_key(hardware, classes, "cpu-epyc-7b13-2t") == "cpu-epyc-7b13-2t"   # other threads: absent
    assert local_key(hardware, classes, "cpu-xeon-1t") == "cpu-xeon-1t"             # other CPU: absent
    # a current key wins over a legacy one
    assert local_key(hardware, [*classes, "cpu-epyc-7b13-1t"], "cpu-epyc-7b13-1t") == "cpu-epyc-7b13-1t"


def test_a_legacy_profile_still_loads_with_its_keys(tmp_path: Path) -> None:
    doc = json.loads((ROOT / "examples" / "tiny-captioner.profile.json").read_text())
    text = json.dumps(doc).replace('"cpu-xeon-1t"', '"cpu-2c"')
    path = tmp_path / "legacy.profile.json"
    path.write_text(text)
    legacy = load_profile(path)
    assert legacy.hardware_classes[0] == "cpu-2c"
    assert current_class_name("cpu-2c", legacy.hardware["cpu-2c"]) == "cpu-xeon-1t"
    assert local_key(legacy.hardware, legacy.hardware_classes, "cpu-xeon-1t") == "cpu-2c"


def test_the_example_profile_uses_current_class_names() -> None:
    profile = load_profile(ROOT / "examples" / "tiny-captioner.profile.json")
    measured = [hw for hw in profile.hardware_classes if profile.units[0].source[hw] == "measured"]
    assert measured == ["cpu-xeon-1t"]
    assert hardware_class(dict(profile.hardware["cpu-xeon-1t"])) == "cpu-xeon-1t"
    assert not any(is_legacy_class(hw) for hw in profile.hardware_classes)


def test_the_demo_finds_this_machine_under_a_legacy_key(tmp_path: Path) -> None:
    """A profile written before the new names, on a CPU like this one with one thread, is this machine's."""
    from orchestrator.demo import local_class

    doc = json.loads((ROOT / "examples" / "tiny-captioner.profile.json").read_text())
    text = json.dumps(doc).replace('"cpu-xeon-1t"', '"cpu-2c"')
    legacy = json.loads(text)
    legacy["hardware"]["cpu-2c"] = {**fingerprint(), "torch_threads": 1}
    path = tmp_path / "legacy.profile.json"
    path.write_text(json.dumps(legacy))
    assert local_class(load_profile(path)) == "cpu-2c"
    legacy["hardware"]["cpu-2c"]["cpu_model"] = "Some Other CPU 9000"
    path.write_text(json.dumps(legacy))
    assert local_class(load_profile(path)) == hardware_class(threads=1)     # another CPU is not this one


def test_measured_cpu_classes_leave_out_gpus_and_estimates() -> None:
    from profiler.hardware import measured_cpu_classes

    cpuhost = load_profile(ROOT / "data" / "profiles" / "h200" / "tiny-captioner.cpuhost.json")
    gpu = load_profile(ROOT / "data" / "profiles" / "h200" / "tiny-captioner.h200.json")
    assert measured_cpu_classes(cpuhost.hardware) == ["cpu-host2"]
    assert measured_cpu_classes(gpu.hardware) == []


def test_dilation_auto_stands_in_a_measured_cpu_class_for_another_cpu() -> None:
    """A profile measured on another CPU (the shipped example, here or anywhere) still gives a K, from its
    measured CPU class, with a note; a profile with no measured CPU class is a one-line error."""
    from orchestrator.cli.run_cmd import _stand_in
    from profiler.errors import InputError

    profile = load_profile(ROOT / "examples" / "tiny-captioner.profile.json")
    assert _stand_in(profile, "cpu-xeon-1t") == "cpu-xeon-1t"
    assert _stand_in(profile, "cpu-some-other-9t") == "cpu-xeon-1t"
    gpu_only = load_profile(ROOT / "data" / "profiles" / "h200" / "tiny-captioner.h200.json")
    with pytest.raises(InputError, match="no latencies for this machine's class"):
        _stand_in(gpu_only, "cpu-some-other-9t")


XEON = {"cpu_model": "Intel(R) Xeon(R) Processor", "torch_threads": 2}


def test_this_cpu_at_another_thread_count_is_a_native_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert local_threads("cpu-xeon-1t", XEON) == 1
    assert local_threads("cpu-xeon-2t", XEON) == 2
    assert local_threads("cpu-xeon-3t", XEON) is None          # more threads than this machine has cores
    assert local_threads("cpu-epyc-7b13-1t", XEON) is None     # another CPU
    assert local_threads("jetson-orin-nano", XEON) is None


def test_a_network_is_native_only_when_every_node_is_one_local_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert native_class(["cpu-xeon-2t"] * 3, "cpu-xeon-2t", XEON) == ("cpu-xeon-2t", None)
    assert native_class(["cpu-xeon-1t"] * 3, "cpu-xeon-2t", XEON) == ("cpu-xeon-1t", 1)
    assert native_class(["cpu-xeon-1t", "cpu-xeon-2t"], "cpu-xeon-2t", XEON) == (None, None)
    assert native_class(["cpu-xeon-2t", "h200"], "cpu-xeon-2t", XEON) == (None, None)
