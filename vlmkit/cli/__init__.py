"""`vlmkit` command line: thin wrappers over the library, one module per command group.

Each module in COMMANDS defines `register(subparsers)`, which adds its
subcommand(s) and sets `func(args) -> int` on them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import VlmkitError

COMMANDS = [
    "vlmkit.cli.ask",
    "vlmkit.cli.demo",
    "vlmkit.cli.tokens",
    "vlmkit.cli.serve",
    "vlmkit.cli.budget",
    "vlmkit.cli.train",
    "vlmkit.cli.plot",
    "vlmkit.cli.eval",
    "vlmkit.cli.index",
    "vlmkit.cli.search",
    "vlmkit.cli.classify",
    "vlmkit.cli.data",
    "vlmkit.cli.extract",
    "vlmkit.cli.route",
    "vlmkit.cli.export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmkit", description="Build, train, evaluate and serve vision-language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and library warnings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network here: never let a hub lookup hang
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        import warnings

        # transformers' deprecation notices (peft trips one) are for library authors, not CLI users
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    try:
        return int(args.func(args) or 0)
    except VlmkitError as e:
        print(f"vlmkit: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a vanished file: the message says it all; --verbose keeps the traceback
        if args.verbose:
            raise
        print(f"vlmkit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vlmkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
