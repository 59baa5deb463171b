"""The ``shardio`` command: thin argument parsing over the library.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which
registers a parser whose ``run`` default (``args -> exit code``) does the work.
Every ShardioError becomes one line on stderr and exit code 2: no tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import ShardioError

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
    try:
        return int(args.run(args))
    except ShardioError as exc:
        print(f"shardio {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shardio {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
