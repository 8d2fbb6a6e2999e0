"""The ``pcdm`` command line (docs/math.md §9). One module per subcommand, each with
``add_parser(subparsers)``; this file wires them together and turns the errors users can
cause into one clear line on stderr with a non-zero exit, never a traceback. The library
(everything outside ``pcdm/cli/``) never imports this package."""

from __future__ import annotations

import argparse
import sys

from ..checkpoint import RunError
from ..data import DataError
from . import codec, demo, eval, fid, ood, sample, train

# In the order ``pcdm --help`` lists them (codec adds compress and decompress).
SUBCOMMANDS = (train, eval, sample, fid, demo, ood, codec)


class UserError(Exception):
    """An error whose message is all the user needs (bad input, missing file, …)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcdm",
        description="Probabilistic cascaded diffusion models: exact multi-scale likelihoods, "
        "lossless compression and OOD detection.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for sub_parser in sub.choices.values():  # every --help shows the defaults
        sub_parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (UserError, DataError, RunError, ValueError, OSError) as err:  # OSError: paths, permissions
        print(f"pcdm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"pcdm {args.command}: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pcdm {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
