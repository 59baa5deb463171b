"""The ``shardio`` command: thin argument parsing over the library.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which
registers a parser whose ``run`` default (``args -> exit code``) does the work and
whose ``flags`` default maps the library's parameter names to the command's flags.
Every ShardioError becomes one line on stderr naming flags, and exit code 2: no
tracebacks. Warnings print as one line each. Shared options: see ``_common``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import ShardioError
from ._common import flag_message, one_line_warnings

__all__ = ["main", "build_parser"]

# Subcommand modules, in the order `shardio --help` lists them.
_COMMANDS = (
    "shardio.cli._inspect",
    "shardio.cli._convert",
    "shardio.cli._verify",
    "shardio.cli._bench",
    "shardio.cli._diagnose",
    "shardio.cli._demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardio",
        description="Data loading for deep learning from datasets larger than memory.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"shardio {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a subcommand not built into this version
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = getattr(args, "flags", {})
    try:
        with one_line_warnings(args.command, flags):
            return int(args.run(args))
    except ShardioError as exc:
        message = flag_message(str(exc), flags)
        print(f"shardio {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shardio {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
