"""`aiflow profile`: a tiny model to a file and the store; bad input is one line and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from transformers import GPT2Config

from orchestrator.cli import main
from profiler.profile import load_profile


def aiflow(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real entry point in-process: (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["aiflow", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-lm")
    GPT2Config(vocab_size=61, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=None,
               eos_token_id=None).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def private_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFLOW_DATABASE_URL", f"sqlite:///{tmp_path / 'history.db'}")


def test_profile_to_file_store_and_show(model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lm.profile.json"
    code, stdout, err = aiflow(["profile", str(model_folder), "--input", "prompt=6,new=3", "--repeats", "2",
                                "--warmup", "0", "--threads", "1", "--hardware", "ci-cpu", "--estimate", "h200",
                                "--out", str(out)], capsys)
    assert code == 0, err
    profile = load_profile(out)
    assert profile.hardware_classes == ["ci-cpu", "h200"]
    assert profile.input == {"new_tokens": 3, "batch": 1, "prompt_tokens": 6}
    assert [p.repeat for p in profile.phases] == [1, 2]
    for name in ("text.embed", "text.block.0", "text.block.1", "text.head"):
        assert name in stdout                      # the per-unit table
    assert "stored as profile" in stdout
    code, stdout, _ = aiflow(["profile", "list"], capsys)
    assert code == 0 and model_folder.name in stdout and "ci-cpu" in stdout
    code, stdout, _ = aiflow(["profile", "show", "1"], capsys)
    assert code == 0 and "text.block.1" in stdout and "~" in stdout     # estimates are marked
    code, stdout, _ = aiflow(["profile", "show", str(out)], capsys)
    assert code == 0 and "text.head" in stdout


def test_merge_command(model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a.json"
    common = ["--input", "prompt=4,new=2", "--repeats", "1", "--warmup", "0", "--no-store"]
    assert aiflow(["profile", str(model_folder), *common, "--hardware", "one", "--out", str(a)], capsys)[0] == 0
    b = tmp_path / "b.json"
    data = json.loads(a.read_text())
    for u in data["units"]:
        for field in ("latency_s", "source", "spread"):
            u[field] = {"two": u[field]["one"]}
    data["hardware"] = {"two": data["hardware"]["one"]}
    b.write_text(json.dumps(data))
    merged = tmp_path / "m.json"
    code, _, err = aiflow(["profile", "merge", str(a), str(b), "--out", str(merged)], capsys)
    assert code == 0, err
    assert load_profile(merged).hardware_classes == ["one", "two"]
    data["phases"][1]["repeat"] = 7
    b.write_text(json.dumps(data))
    code, _, err = aiflow(["profile", "merge", str(a), str(b), "--out", str(merged)], capsys)
    assert code == 2 and "phases" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "needle"), [
    (["profile", "tiny-gpt2", "--input", "prompt=many"], "--input: prompt"),
    (["profile", "tiny-gpt2", "--input", "size=3"], "--input"),
    (["profile", "no/such/folder"], "no/such/folder"),
    (["profile", "tiny-gpt2", "--estimate", "no-such-device.yaml"], "no-such-device.yaml"),
    (["profile", "show", "no-such-file.json"], "no-such-file.json"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = aiflow(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err
