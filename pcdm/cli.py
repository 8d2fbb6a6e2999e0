"""``pcdm`` command line (SPEC §8). Each subcommand lives in its own module, which provides
``add_parser(subparsers)``; this file only wires them together and turns the errors users
can cause into one clear line on stderr with a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand → module that implements it
COMMANDS = {
    "train": "pcdm.train_cli",
    "eval": "pcdm.commands",
    "sample": "pcdm.commands",
    "demo": "pcdm.commands",
    "ood": "pcdm.ood",
    "compress": "pcdm.codec_cli",
    "decompress": "pcdm.codec_cli",
}


class UserError(Exception):
    """An error whose message is all the user needs (bad input, missing file, …)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcdm",
        description="Probabilistic cascaded diffusion models: exact multi-scale likelihoods, "
        "lossless compression and OOD detection.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue  # that capability is not installed in this build
        getattr(mod, f"add_{name}_parser")(sub)
    for sub_parser in sub.choices.values():  # every --help shows the defaults
        sub_parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import RunError
    from .data import DataError

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


if __name__ == "__main__":
    sys.exit(main())
