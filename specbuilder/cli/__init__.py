"""The ``specbuilder`` command line (also ``python -m specbuilder``).

Commands live in modules listed in ``COMMAND_MODULES``; each module has one function,
``register(commands)``, that adds its subparsers to ``commands`` (argparse's subparsers
object) and sets ``run=`` on each, a function ``(args) -> exit code``. Adding a group of
commands (train, eval, models, serve, plots) is one new module and one line here.

Exit codes: 0 success, 1 a user error (invalid spec, unreadable file; one message per line
on stderr, never a traceback), 2 bad usage (argparse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from specbuilder.cli.common import CommandError

COMMAND_MODULES: tuple[str, ...] = (
    "specbuilder.cli.spec_commands",
    "specbuilder.cli.train_commands",
    "specbuilder.cli.plot_commands",
    "specbuilder.cli.serve_commands",
    "specbuilder.cli.store_commands",
    "specbuilder.cli.demo_command",
)
"""Modules whose ``register(commands)`` adds subcommands, in help order."""


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every registered command module's subcommands."""
    parser = argparse.ArgumentParser(
        prog="specbuilder",
        description="Neural networks as data: validate, compile, run and measure model specs.",
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code rather than exiting, so it can be called in-process."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except CommandError as error:
        for line in error.lines:
            print(line, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`specbuilder schema | head`): stop quietly, and keep Python's
        # final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


__all__ = ["COMMAND_MODULES", "CommandError", "build_parser", "main"]
