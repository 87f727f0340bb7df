"""The `aiflow` command line. Each sub-module owns one command group and registers it here.

Bad input anywhere (an InputError) is printed as one line and exits with code 2, never a traceback;
set AIFLOW_DEBUG=1 to see tracebacks of unexpected errors.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from profiler.errors import InputError

app = typer.Typer(
    name="aiflow",
    help="Split neural-network inference across device, edge and cloud.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

err_console = Console(stderr=True)


def _register() -> None:
    # Imported here so that `aiflow --help` stays quick and each module stays independent.
    from orchestrator.cli import commands

    commands.register(app)


def main() -> None:
    from orchestrator.cli.groups import NoArgsIsHelpError, UsageError

    _register()
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:      # `aiflow plan` alone: its help, as click shows it
        exc.show()
        sys.exit(2)
    except UsageError as exc:
        # A bad option or argument: one line, as for any other bad input (click's box is several).
        where = exc.ctx.command_path if exc.ctx is not None else "aiflow"
        err_console.print(f"[bold red]aiflow: error:[/] {where}: {exc.format_message()} (see {where} --help)",
                          highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:                            # --help, or a command that exits with a code
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aiflow: interrupted")
        sys.exit(130)
    except InputError as exc:
        err_console.print(f"[bold red]aiflow: error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("aiflow: interrupted")
        sys.exit(130)
    except RuntimeError as exc:
        # A worker that would not start or a request that failed is not a bug in aiflow: say what
        # happened in one line (exit 1); anything else is an internal error below.
        from runtime.client import RequestFailed
        from runtime.local import WorkerStartError
        from runtime.netns import NetnsError

        if not isinstance(exc, (RequestFailed, WorkerStartError, NetnsError)) or os.environ.get("AIFLOW_DEBUG"):
            _internal(exc)
        err_console.print(f"[bold red]aiflow: error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        _internal(exc)
    else:
        sys.exit(code if isinstance(code, int) else 0)    # as click's standalone mode does


def _internal(exc: BaseException) -> None:
    if os.environ.get("AIFLOW_DEBUG"):
        raise exc
    err_console.print(f"[bold red]aiflow: internal error:[/] {type(exc).__name__}: {exc} "
                      "(set AIFLOW_DEBUG=1 for a traceback)", highlight=False, soft_wrap=True)
    sys.exit(1)
