"""The ``shardio`` command: thin argument parsing over the library.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which
registers a parser whose ``run`` default (``args -> exit code``) does the work and
whose ``flags`` default maps the library's parameter names to the command's flags.
Every ShardioError becomes one line on stderr naming flags, and exit code 2: no
tracebacks. Warnings print as one line each. Shared options: see ``_common``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from shardio.core.errors import ShardioError

from ._common import flag_message, one_line_warnings

__all__ = ["main", "build_parser"]

# Subcommand modules, in the order `shardio --help` lists them.
_COMMANDS = (
    "shardio.tools.cli._inspect",
    "shardio.tools.cli._convert",
    "shardio.tools.cli._verify",
    "shardio.tools.cli._bench",
    "shardio.tools.cli._diagnose",
    "shardio.tools.cli._cache",
    "shardio.tools.cli._demo",
)


class _ParseError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors ``main`` can retry before reporting them."""

    def error(self, message: str) -> NoReturn:
        raise _ParseError(self, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="shardio",
        description="Data loading for deep learning from datasets larger than memory.",
    )
    from shardio import __version__

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


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a bare ``--json`` right before the command's last argument
    (``shardio inspect --json data.h5``) means JSON to stdout, not a file named
    ``data.h5``, where taking it as the file leaves the command without its path."""
    try:
        return parser.parse_args(argv)
    except _ParseError as first:
        if len(argv) >= 2 and argv[-2] == "--json":
            with contextlib.suppress(_ParseError):
                return parser.parse_args([*argv[:-2], argv[-1], "--json"])
        first.parser.print_usage(sys.stderr)
        first.parser.exit(2, f"{first.parser.prog}: error: {first}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
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
