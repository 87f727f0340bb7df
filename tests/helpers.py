"""Helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch


def aiflow_in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                      *args: str | Path) -> tuple[int, str, str]:
    """Run `aiflow ARGS` in this process as the console script does: (exit code, stdout, stderr)."""
    from orchestrator.cli import main

    monkeypatch.setattr(sys, "argv", ["aiflow", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main()
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def spread_weights(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter so that logits differ clearly between tokens (HF's init is near-uniform)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            # matrices redrawn; norm scales stay near 1 and biases near 0 (a large random final-norm
            # bias would favour one token whatever the input)
            p.copy_(noise * 0.3 if p.dim() >= 2 else p + noise * 0.1)
