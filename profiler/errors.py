"""The error every package raises for bad user input: the CLI prints it as one line and exits 2."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from a user: a file, a field or an argument. The message names which one."""
