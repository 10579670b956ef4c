"""`python -m circuitry` runs the command-line interface."""

from circuitry.cli import entry

entry()
