"""The ``segbalance`` command line: one module per subcommand.

Each module in this package defines ``register(subparsers)`` which adds its parser and
sets ``func=run`` where ``run(args) -> int`` returns the exit code. Heavy imports
(TensorFlow) happen inside ``run`` so ``--help`` stays fast.

Exit codes: 0 success, 2 bad input (:class:`segbalance.errors.UserError`), 1 internal failure.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from segbalance.errors import UserError
from segbalance.version import __version__

# Order is the order shown in ``segbalance --help``: the story of a run.
COMMANDS = (
    "synth",
    "prepare",
    "stats",
    "plan",
    "train",
    "evaluate",
    "compare",
    "cv",
    "predict",
    "export",
    "demo",
)


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


# OS errors that are the user's to fix (space, permissions, paths), reported without a trace.
USER_OS_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
}


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
    except OSError as err:
        if err.errno not in USER_OS_ERRORS:
            return _internal_error(args.command)
        # The machine, not segbalance: a full disk, a read-only folder, a path under a file.
        # Writers are atomic, so nothing half-written was left behind.
        where = f" {err.filename}" if err.filename else ""
        print(
            f"segbalance {args.command}: error: cannot write{where}: {err.strerror}; "
            "free space, fix the permissions or choose another path, then run it again",
            file=sys.stderr,
        )
        return 2
    except Exception:
        return _internal_error(args.command)


def _internal_error(command: str) -> int:
    """A bug: keep the traceback for the report (call inside an ``except``)."""
    traceback.print_exc()
    print(f"segbalance {command}: internal error (exit 1); please report it", file=sys.stderr)
    return 1
