"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import argparse
from typing import Any

from segbalance.cli import HelpFormatter


def add_command(
    sub: Any, name: str, help: str, examples: str, func: Any
) -> argparse.ArgumentParser:
    """Add a subcommand with a description and an ``Examples:`` epilog.

    Args:
        sub: the subparsers object from the top-level parser.
        name: command name.
        help: one line shown in ``segbalance --help``; also the description.
        examples: example invocations, one per line.
        func: ``run(args) -> int``.
    """
    parser = sub.add_parser(
        name,
        help=help,
        description=help,
        formatter_class=HelpFormatter,
        epilog="Examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()),
    )
    parser.set_defaults(func=func)
    return parser
