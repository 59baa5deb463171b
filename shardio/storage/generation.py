"""One generation per open dataset: a reopened shard must be the one first opened.

A dataset object reads the files its manifest named when it was opened. A shard closed
and opened again (`max_open_shards`, a memory budget's reopen, a DataLoader worker's
first read) is compared with what this dataset first saw of it: the same files (device
and inode), sizes and modification times. A directory rewritten in between (a new
`ShardWriter(..., overwrite=True)`, a finished conversion) fails the read, naming the
change, instead of mixing bytes of two writes in one dataset.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

from shardio.core.errors import ShardCorruptError

from .layout import scan_shard

__all__ = ["Generation", "check_generation"]


@dataclass(frozen=True)
class Generation:
    """What identifies the files of one shard: per file, (name, device, inode, size,
    modification time in ns)."""

    files: tuple[tuple[str, int, int, int, int], ...]

    @classmethod
    def of(cls, path: str, transient: Collection[str] = ()) -> Generation:
        """The generation of shard ``path`` now (files the backend's library adds, such
        as LMDB's `lock.mdb`, left out)."""
        found = []
        for name in scan_shard(path).paths:
            if os.path.basename(name) in transient:
                continue
            stat = os.stat(name)
            relative = os.path.relpath(name, path) if name != path else os.path.basename(path)
            found.append((relative, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))
        return cls(tuple(found))

    def change(self, other: Generation) -> str | None:
        """How ``other`` differs from this generation (None when it does not)."""
        if other == self:
            return None
        mine = {f[0]: f for f in self.files}
        theirs = {f[0]: f for f in other.files}
        for name in sorted(mine.keys() | theirs.keys()):
            old, new = mine.get(name), theirs.get(name)
            if old is None:
                return f"{name} appeared"
            if new is None:
                return f"{name} is gone"
            if old[1:3] != new[1:3]:
                return f"{name} was replaced by another file"
            if old[3] != new[3]:
                return f"{name} went from {old[3]} to {new[3]} bytes"
            if old[4] != new[4]:
                return f"{name} was modified"
        return "its files changed"


def check_generation(path: str, first: Generation, transient: Collection[str] = ()) -> None:
    """Raise `ShardCorruptError` when shard ``path`` is no longer generation ``first``."""
    try:
        now = Generation.of(path, transient)
    except OSError as exc:
        raise ShardCorruptError(
            f"shard {path} cannot be opened again ({exc}); it changed since this dataset "
            "opened it: open the dataset again to read what is there now"
        ) from exc
    change = first.change(now)
    if change is not None:
        raise ShardCorruptError(
            f"shard {path} changed since this dataset first opened it ({change}): it was "
            "rewritten or damaged while the dataset was open. A dataset object reads one "
            "generation of its files; open the dataset again to read the new one"
        )
