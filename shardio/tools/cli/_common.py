"""What every ``shardio`` subcommand shares: ``--json``, ``-q``/``-v``, and errors that
name flags.

Output rules, the same on every command:

- ``--json`` writes the command's result as JSON to stdout (then stdout carries only
  the JSON); ``--json FILE`` writes it to FILE and prints the human report as usual.
  ``shardio inspect --json data.h5`` means stdout: a value that would leave the
  command without its path is the path (see ``shardio.tools.cli._parse``).
- ``-q``/``--quiet`` prints nothing but warnings, errors and the JSON asked for;
  ``-v``/``--verbose`` prints more detail (what depends on the command).
- Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from shardio.core.errors import InvalidOptionError

__all__ = ["add_output_options", "Output", "flag_message", "one_line_warnings", "parse_int"]

#: ``--json`` with no FILE: write to stdout.
STDOUT = "-"


def add_output_options(parser: argparse.ArgumentParser, verbose_help: str) -> None:
    """Add ``--json [FILE]``, ``-q/--quiet`` and ``-v/--verbose`` to a subcommand."""
    parser.add_argument(
        "--json",
        nargs="?",
        const=STDOUT,
        metavar="FILE",
        help="write the result as JSON: to stdout (alone there), or to FILE",
    )
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing but warnings and errors"
    )
    loudness.add_argument("-v", "--verbose", action="count", default=0, help=verbose_help)


class Output:
    """Where a command's lines and JSON go, following ``--json``, ``-q`` and ``-v``."""

    def __init__(self, args: argparse.Namespace, stdout: TextIO | None = None) -> None:
        self.json_target: str | None = getattr(args, "json", None)
        self.quiet: bool = bool(getattr(args, "quiet", False))
        self.verbose: int = int(getattr(args, "verbose", 0) or 0)
        self._stdout = stdout

    @property
    def stdout(self) -> TextIO:
        return self._stdout or sys.stdout

    @property
    def human(self) -> bool:
        """Whether the human report is printed (not quiet, stdout not taken by JSON)."""
        return not self.quiet and self.json_target != STDOUT

    @property
    def progress(self) -> bool:
        """Whether progress bars or log lines go to stderr."""
        return not self.quiet

    def line(self, text: str = "") -> None:
        """One line of the human report on stdout."""
        if self.human:
            print(text, file=self.stdout, flush=True)

    def detail(self, text: str) -> None:
        """A line printed only with ``-v``."""
        if self.verbose:
            self.line(text)

    def json(self, data: Any) -> None:
        """Write ``data`` where ``--json`` says, if it was given."""
        if self.json_target is None:
            return
        text = json.dumps(data, indent=1, default=str)
        if self.json_target == STDOUT:
            print(text, file=self.stdout, flush=True)
            return
        try:
            with open(self.json_target, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        except OSError as exc:
            from shardio.core.errors import OutputWriteError

            raise OutputWriteError(
                f"--json could not write {self.json_target}: {exc.strerror or exc}"
            ) from None
        self.line(f"wrote {self.json_target}")


# A Python parameter named in a message: "format=" or "format should" (not "--format").
_PARAMETER = r"(?<![\w-]){name}(?=\s*=|\s+should\b|\s+must\b)"


def flag_message(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with the Python parameters in ``flags`` replaced by their flags:
    ``pass format= to say which`` becomes ``pass --format to say which``."""
    for name, flag in flags.items():
        # "fields=['a', 'b'] (--fields a,b)" and "fields= (--fields)": the flag as typed.
        value = r"(?:\[[^\]]*\]|'[^']*'|[^\s(]*)"
        hinted = rf"(?<![\w-]){re.escape(name)}={value} \(({re.escape(flag)}\b[^)]*)\)"
        message = re.sub(hinted, r"\1", message)
        message = re.sub(_PARAMETER.format(name=re.escape(name)), flag, message)
        # "pass --format= to ..." reads better without the bare "=".
        message = re.sub(rf"{re.escape(flag)}=(?=[\s,;)]|$)", flag, message)
    return message


@contextmanager
def one_line_warnings(command: str, flags: Mapping[str, str]) -> Iterator[None]:
    """Print each warning raised inside as one line, ``shardio COMMAND: warning: ...``,
    naming flags instead of Python parameters; a warning from another library (torch)
    says whose it is. Each text is printed once: the same warning raised again from
    another line (or by a worker forked after it was printed) is not repeated."""
    shown: set[str] = set()

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = flag_message(str(message), flags)
        if text in shown:
            return
        shown.add(text)
        source = _library_of(filename)
        origin = f" (from {source})" if source else ""
        print(f"shardio {command}: warning{origin}: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _library_of(filename: str) -> str | None:
    """The third-party package a warning was raised in (``torch``), or None for shardio
    and the user's own code."""
    parts = filename.replace("\\", "/").split("/")
    if "site-packages" in parts:
        package = parts[parts.index("site-packages") + 1 : parts.index("site-packages") + 2]
        if package and package[0] != "shardio":
            return package[0].removesuffix(".py")
    return None


def parse_int(value: str, option: str, minimum: int) -> int:
    """``value`` as an integer of at least ``minimum``, else an error naming ``option``."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(
            f"{option} should be an integer, but got {option}={value!r}"
        ) from None
    if number < minimum:
        raise InvalidOptionError(f"{option} should be >= {minimum}, but got {option}={number}")
    return number
