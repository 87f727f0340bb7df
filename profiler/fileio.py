"""Reading and writing the public JSON/YAML documents, with one-line errors naming file and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from profiler.errors import InputError

M = TypeVar("M", bound=BaseModel)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or YAML file into a mapping; any failure is an InputError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, expected a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read: {exc}") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML/JSON'}: {first}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def field_path(loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as `units[3].latency_s`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def validation_message(source: str, exc: ValidationError) -> str:
    """One line for the first problem pydantic found (the rest follow once it is fixed)."""
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: field {field_path(tuple(err['loc']))}: {msg}{tail}"


def parse_document(model: type[M], data: dict[str, Any], fmt: str, source: str) -> M:
    """Check the `format` tag, then validate `data` as `model`; errors become one-line InputErrors."""
    tag = data.get("format")
    if tag != fmt:
        raise InputError(f"{source}: field format: expected '{fmt}', got {tag!r}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(validation_message(source, exc)) from None


def load_document(model: type[M], path: str | Path, fmt: str) -> M:
    return parse_document(model, read_mapping(path), fmt, str(path))


def dump_json(doc: BaseModel, path: str | Path) -> None:
    """Write a document as indented JSON, atomically (a crash never leaves half a file)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(doc.model_dump_json(indent=2, by_alias=True, exclude_none=True) + "\n", encoding="utf-8")
    tmp.replace(p)
