"""Where every benchmark leaves its results: STEM.json (the numbers) and STEM.md (the report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(folder: Path, stem: str, data: Any, markdown: str, *, indent: int = 1) -> Path:
    """Write `data` as folder/STEM.json and `markdown` as folder/STEM.md (the folder made if missing);
    the JSON file's path. Values JSON does not know (datetimes) are written as their text."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    (folder / f"{stem}.md").write_text(markdown)
    return path
