"""`python -m orchestrator.cli ...` runs the aiflow CLI without the installed `aiflow` script."""

from orchestrator.cli import main

main()
