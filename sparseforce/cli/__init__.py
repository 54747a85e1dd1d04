"""The ``sparseforce`` command.

Building the parser imports nothing heavy, so ``sparseforce --help`` answers without loading torch;
each subcommand (one module each: prune, train, demo, bench, ddp) checks all of its arguments
before it does any work.
"""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import bench, ddp, demo, prune, train
from .demo import DEMO_DATASETS, DEMO_OUT
from .openmp import passive_openmp_waits
from .options import (ABLATION_NAMES, BACKEND_NAMES, DATASET_NAMES, DISTRIBUTION_NAMES, METHOD_NAMES, MODEL_NAMES,
                      HelpFormatter, Parser)
from .train import Interrupted

__all__ = ["main", "build_parser", "METHOD_NAMES", "BACKEND_NAMES", "DATASET_NAMES", "DISTRIBUTION_NAMES",
           "ABLATION_NAMES", "MODEL_NAMES", "DEMO_DATASETS", "DEMO_OUT"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sparseforce", formatter_class=HelpFormatter,
        description="Pruning at initialization: FORCE, Iter SNIP, SNIP, GraSP, SynFlow, magnitude, random. "
                    "Start with `sparseforce demo`.")
    parser.add_argument("--version", action="version", version=f"sparseforce {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each subcommand's module: HELP, DESCRIPTION, add_arguments(parser) and run(args) -> exit code.
    for command in (prune, train, demo, bench, ddp):  # ddp after bench: the one-process commands first
        p = sub.add_parser(command.__name__.rpartition(".")[2], help=command.HELP, description=command.DESCRIPTION,
                           formatter_class=HelpFormatter)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def _usage_error(exc: BaseException) -> bool:
    """A mistake in the arguments or the files they name, as opposed to a bug."""
    if isinstance(exc, (ValueError, TypeError, OSError)):
        return True
    ops = sys.modules.get("sparseforce.ops")  # loaded if a backend was asked for; torch-free otherwise
    return ops is not None and isinstance(exc, ops.BackendUnavailableError)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    passive_openmp_waits()
    prog = f"sparseforce {args.command}"
    import warnings

    def one_line(message, category, filename, lineno, line=None):
        # The command's user gets what the library warns about (layer collapse, ...), not where.
        return f"{prog}: warning: {' '.join(str(message).split())}\n"

    previous = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        return args.func(args)
    except Interrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _usage_error(e):
            raise
        print(f"{prog}: error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = previous
