"""Where every command group is attached to the `aiflow` app. One line per group."""

from __future__ import annotations

import importlib

import typer

# (module under orchestrator.cli, name of the group or None for top-level commands)
GROUPS: list[tuple[str, str | None]] = [
    ("profile_cmd", "profile"),
    ("plan_cmd", "plan"),
    ("db_cmd", "db"),
    ("history_cmd", "history"),
    ("run_cmd", None),
    ("caption_cmd", None),
    ("demo_cmd", None),
    ("daemon_cmd", None),
]


def register(app: typer.Typer) -> None:
    for module_name, group in GROUPS:
        module = importlib.import_module(f"orchestrator.cli.{module_name}")
        if group is None:
            module.register(app)
        else:
            app.add_typer(module.app, name=group)
