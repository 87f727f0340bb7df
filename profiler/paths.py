"""Per-user folders aiflow writes to (caches of converted models and measured profiles)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$AIFLOW_CACHE_DIR, else $XDG_CACHE_HOME/aiflow, else ~/.cache/aiflow."""
    if os.environ.get("AIFLOW_CACHE_DIR"):
        return Path(os.environ["AIFLOW_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "aiflow"
