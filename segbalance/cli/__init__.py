"""The ``segbalance`` command line: one module per subcommand.

Each module in this package defines ``register(subparsers)`` which adds its parser and
sets ``func=run`` where ``run(args) -> int`` returns the exit code. Heavy imports
(TensorFlow) happen inside ``run`` so ``--help`` stays fast.

Exit codes: 0 success, 2 bad input (:class:`segbalance.errors.UserError`), 1 internal failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from segbalance import __version__
from segbalance.errors import UserError

# Order is the order shown in ``segbalance --help``: the story of a run.
COMMANDS = ("synth", "prepare", "stats", "plan", "train", "evaluate", "predict", "export", "demo")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the hand-written examples in epilogs and shows defaults."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="segbalance",
        description="Train segmentation models on data whose groups differ in size, "
        "and make every group count.",
        epilog="Start with: segbalance demo --quick   (or `make demo`)",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"segbalance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"segbalance.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segbalance`` script and ``python -m segbalance``."""
    # TensorFlow's C++ start-up chatter (CPU features, absl) buries our own messages.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"segbalance {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # internal failure: keep the traceback for a bug report
        traceback.print_exc()
        print(
            f"segbalance {args.command}: internal error (exit 1); please report it", file=sys.stderr
        )
        return 1
