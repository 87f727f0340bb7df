"""A command group with a default command, so `aiflow plan --profile ...` and `aiflow plan explain`
(or `aiflow profile MODEL` and `aiflow profile list`) can live side by side."""

from __future__ import annotations

import click
from typer.core import TyperGroup

try:  # recent Typer parses with its own copy of click: its errors are the ones raised
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - Typer versions that use click itself
    from click.exceptions import NoArgsIsHelpError, UsageError

__all__ = ["DefaultCommandGroup", "NoArgsIsHelpError", "UsageError", "default_group"]


class DefaultCommandGroup(TyperGroup):
    """Dispatches to the command named `default_command` when the first argument names no command."""

    default_command: str = ""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            default = self.commands.get(self.default_command)
            takes_arguments = default is not None and any(p.param_type_name == "argument" for p in default.params)
            if not args[0].startswith("-") and not takes_arguments:
                # `aiflow plan bogus`: a mistyped command, not an argument of the default command
                raise UsageError(f"no such command {args[0]!r} (commands: {', '.join(sorted(self.commands))})",
                                       ctx)
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_usage(ctx, formatter)


def default_group(command: str) -> type[DefaultCommandGroup]:
    """A DefaultCommandGroup class whose default is `command` (Typer takes a class, not an instance)."""
    return type(f"DefaultGroup_{command}", (DefaultCommandGroup,), {"default_command": command})
