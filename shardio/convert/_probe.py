"""The child of ``verify()``'s probe: decodes one shard whose checksum failed.

Run as ``python -m shardio.convert._probe REQUEST`` (REQUEST a JSON object), a fresh
interpreter that imports neither the caller's ``__main__`` (a script without an
``if __name__ == "__main__":`` guard runs once) nor anything the caller imported, and
writes the problems found as one JSON list on its standard output. A backend that
crashes on the corrupt bytes kills this process only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

from .check import Problem, _probe_main

__all__ = ["main"]


class _JsonSender:
    """What ``_probe_main`` sends its problems through: JSON onto ``stream``."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def send(self, problems: list[Problem]) -> None:
        json.dump([dataclasses.asdict(p) for p in problems], self.stream)

    def close(self) -> None:
        self.stream.close()


def main(argv: Sequence[str] | None = None) -> int:
    request: dict[str, Any] = json.loads((sys.argv[1:] if argv is None else argv)[0])
    # Only the result goes to the real standard output: anything else printed there
    # (a library's noise, from Python or C) is moved to standard error.
    result = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    against = request["against"]  # a tuple sent as a JSON list
    _probe_main(
        _JsonSender(result),
        request["location"],
        request["number"],
        request["start"],
        None if against is None else tuple(against),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
