"""A command group with a default command, so `aiflow plan --profile ...` and `aiflow plan explain`
(or `aiflow profile MODEL` and `aiflow profile list`) can live side by side."""

from __future__ import annotations

import click
from typer.core import TyperGroup


class DefaultCommandGroup(TyperGroup):
    """Dispatches to the command named `default_command` when the first argument names no command."""

    default_command: str = ""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_usage(ctx, formatter)


def default_group(command: str) -> type[DefaultCommandGroup]:
    """A DefaultCommandGroup class whose default is `command` (Typer takes a class, not an instance)."""
    return type(f"DefaultGroup_{command}", (DefaultCommandGroup,), {"default_command": command})
