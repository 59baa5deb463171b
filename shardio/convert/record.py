"""The progress record of a conversion: which shards are complete, kept in the output.

``.shardio-progress.jsonl`` holds one JSON object a line. The first line, written
atomically (temporary file, fsync, rename), holds the settings of the conversion;
each further line is appended and fsynced when a shard is complete (after its
rename). A line cut short by a crash does not parse and is ignored: its shard is
simply written again. Appending keeps the cost per shard constant, where
rewriting one JSON document would grow with the number of shards.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from shardio.storage.manifest import ShardInfo

__all__ = ["PROGRESS_NAME", "ProgressRecord"]

PROGRESS_NAME = ".shardio-progress.jsonl"
_VERSION = 1


class ProgressRecord:
    """Append-only record of the completed shards of one conversion."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, PROGRESS_NAME)

    @property
    def exists(self) -> bool:
        return os.path.exists(self.path)

    def start(self, settings: dict[str, Any], shards: dict[int, ShardInfo], run_id: str) -> None:
        """Replace the record with ``settings``, the id of the run now writing, and
        the shards already complete."""
        header = {"shardio_progress": _VERSION, "run": run_id, "settings": settings}
        lines = [json.dumps(header)]
        lines.extend(json.dumps(_entry(n, info)) for n, info in sorted(shards.items()))
        temporary = f"{self.path}.tmp-{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        _fsync_directory(self.directory)

    def add(self, number: int, info: ShardInfo) -> None:
        """Record shard ``number`` as complete (one appended, fsynced line)."""
        line = (json.dumps(_entry(number, info)) + "\n").encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def run_id(self) -> str | None:
        """The id of the run that last started writing, from the record's first line."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                header = json.loads(handle.readline())
        except (OSError, ValueError):
            return None
        run = header.get("run") if isinstance(header, dict) else None
        return run if isinstance(run, str) else None

    def load(self) -> tuple[dict[str, Any], dict[int, ShardInfo]] | None:
        """(settings, shards recorded as complete), or None without a readable record."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        try:
            header = json.loads(lines[0])
            settings = header["settings"]
            if header.get("shardio_progress") != _VERSION or not isinstance(settings, dict):
                return None
        except (IndexError, KeyError, TypeError, ValueError):
            return None
        shards: dict[int, ShardInfo] = {}
        for line in lines[1:]:
            try:
                raw = json.loads(line)
                number = int(raw["shard"])
                shards[number] = ShardInfo.from_json(raw, number, self.path)
            except (KeyError, TypeError, ValueError):  # ManifestError is a ValueError
                continue  # a line cut short by a crash: that shard is written again
        return settings, shards

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


def _entry(number: int, info: ShardInfo) -> dict[str, Any]:
    return {"shard": number, **info.to_json()}


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
