"""Usage errors (a mistyped command, an unknown option, a missing or malformed value) are one line."""

from __future__ import annotations

import pytest

from tests.helpers import aiflow_in_process

CASES = [
    (("plan", "bogus"), "no such command 'bogus'"),
    (("run", "--bogus"), "No such option: --bogus"),
    (("profile", "show"), "Missing argument"),
    (("plan", "--profile", "x.json"), "Missing option '--network'"),
    (("demo", "--images", "many"), "Invalid value for '--images'"),
]


@pytest.mark.parametrize(("args", "says"), CASES)
def test_usage_errors_are_one_line_with_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                               args: tuple[str, ...], says: str) -> None:
    code, out, err = aiflow_in_process(capsys, monkeypatch, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiflow: error:"), err
    assert says in lines[0] and "--help" in lines[0] and "╭" not in err


def test_a_default_command_still_takes_its_argument(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`aiflow profile MODEL` is the default command with an argument, not an unknown command."""
    code, _, err = aiflow_in_process(capsys, monkeypatch, "profile", "no-such-model")
    assert code == 2 and "no such model folder" in err and "no such command" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = aiflow_in_process(capsys, monkeypatch, "plan", "--help")
    assert code == 0 and "compare" in out
