"""Integrity on read: shard content checked against the digests recorded when written.

``verify="open"`` hashes a shard's files when a process first opens it and compares
the manifest's checksum. ``verify="first-read"`` checks, before any value is handed
out, each block (`BLOCK_BYTES`) of the files the value lies
in, the first time this process reads from that block; after one epoch nothing is
left to check. Where a backend cannot say which bytes a read touches, the whole shard
is checked on its first read.
"""

from __future__ import annotations

import base64
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xxhash

from shardio.core.checksum import BLOCK_BYTES, hash_files
from shardio.core.errors import InvalidOptionError, ShardCorruptError
from shardio.core.perprocess import ForkSafeLock, PerProcess

__all__ = ["VerifyMode", "VERIFY_MODES", "ShardCheck", "ValueRanges", "check_mode"]

VerifyMode = Literal["off", "open", "first-read"]
VERIFY_MODES: tuple[VerifyMode, ...] = ("off", "open", "first-read")
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
#: Where a batch's values lie: (file, offsets, lengths) per file, from an adapter.
ValueRanges = Sequence[tuple[str, np.ndarray, np.ndarray]]


def check_mode(value: object) -> VerifyMode:
    if value not in VERIFY_MODES:
        raise InvalidOptionError(
            f"verify should be one of {', '.join(map(repr, VERIFY_MODES))}, "
            f"but got verify={value!r}"
        )
    return value


@dataclass
class _Progress:
    """What one process has checked of a shard."""

    checked: dict[str, np.ndarray]  # per file, per block
    swept: bool = False  # files no value lies in checked whole
    complete: bool = False  # every block (or the whole shard) checked


class ShardCheck:
    """What one shard must hash to, and what this process has already checked."""

    def __init__(
        self, path: str, files: list[str], checksum: str, blocks: dict[str, str] | None
    ) -> None:
        self.path = path
        self.files = files
        self.checksum = checksum
        self._digests = {
            os.path.join(path, name) if os.path.isdir(path) else path: np.frombuffer(
                base64.b64decode(encoded), dtype=">u8"
            )
            for name, encoded in (blocks or {}).items()
        }
        self._lock = ForkSafeLock()
        self._progress: PerProcess[_Progress] = PerProcess()

    def _state(self) -> _Progress:
        """What this process has checked (a forked child checks again)."""
        return self._progress.get(
            lambda: _Progress({p: np.zeros(len(d), dtype=bool) for p, d in self._digests.items()})
        )

    @property
    def complete(self) -> bool:
        """Every block (or the whole shard) checked in this process: nothing left to do."""
        progress = self._progress.current()
        return progress is not None and progress.complete

    def check_whole(self) -> None:
        """Hash every file of the shard once per process and compare the checksum."""
        progress = self._state()
        if progress.complete:
            return
        actual = hash_files(self.files, self.path)
        if actual != self.checksum:
            raise ShardCorruptError(
                f"shard {self.path} does not match the checksum recorded when it was written "
                f"({actual} != {self.checksum}): it is damaged; run shardio verify on the "
                "dataset to see where"
            )
        progress.complete = True

    def check_ranges(self, ranges: ValueRanges | None) -> None:
        """Check the blocks holding ``ranges`` that this process has not checked yet."""
        if ranges is None or not self._digests:
            self.check_whole()
            return
        progress = self._state()
        checked = progress.checked
        if progress.complete:
            return
        if not progress.swept:
            # Files no value lies in (metadata, LMDB's offsets table) are checked whole
            # on the first read, so that the shard can be complete once values are.
            touched = {path for path, _, _ in ranges}
            for path, done in checked.items():
                if path not in touched:
                    self._check_blocks(path, np.arange(len(done)), done)
            progress.swept = True
        for path, offsets, lengths in ranges:
            found = checked.get(path)
            if found is None:  # a file without digests: check the shard as a whole
                self.check_whole()
                return
            done = found
            if done.all():
                continue
            keep = lengths > 0
            first = offsets[keep] // BLOCK_BYTES
            last = (offsets[keep] + lengths[keep] - 1) // BLOCK_BYTES
            if not len(first):
                continue
            blocks = first if bool((first == last).all()) else _spans(first, last)
            if blocks.max() >= len(done):
                raise ShardCorruptError(
                    f"{path}: a value lies past the {len(done) * BLOCK_BYTES} bytes written"
                )
            new = np.unique(blocks[~done[blocks]])
            if len(new):
                self._check_blocks(path, new, done)
        if all(done.all() for done in checked.values()):
            progress.complete = True

    def _check_blocks(self, path: str, blocks: np.ndarray, done: np.ndarray) -> None:
        expected = self._digests[path]
        with self._lock:
            digests = _block_digests(path, blocks.tolist())
        for block, digest in zip(blocks.tolist(), digests, strict=True):
            if digest != int(expected[block]):
                start = block * BLOCK_BYTES
                raise ShardCorruptError(
                    f"{path}: bytes {start}-{start + BLOCK_BYTES - 1} (block {block}) "
                    "differ from what was written: the shard is damaged"
                )
            done[block] = True

    def damaged_blocks(self, limit: int = 5) -> list[str]:
        """Where the shard's files differ from their block digests (at most ``limit``
        places, as "file bytes a-b"); empty where no digests were recorded."""
        found = []
        for path, expected in self._digests.items():
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed below
            except OSError as exc:
                found.append(f"{path}: {exc.strerror}")
                continue
            with handle:
                for block, digest in enumerate(expected.tolist()):
                    data = handle.read(BLOCK_BYTES)
                    if xxhash.xxh3_64_intdigest(data) != digest:
                        start = block * BLOCK_BYTES
                        found.append(f"{path} bytes {start}-{start + len(data) - 1}")
                        if len(found) >= limit:
                            return found
        return found


def _block_digests(path: str, blocks: list[int]) -> list[int]:
    """XXH3-64 of ``blocks`` of ``path``, hashed through a mapping (no copy into this
    process) whose pages leave this process's RSS again after each block."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if not size:
            return [xxhash.xxh3_64_intdigest(b"") for _ in blocks]
        # NOTE: mapping only what the file holds now: a page past its end would SIGBUS.
        mapping = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
    digests = []
    with mapping, memoryview(mapping) as view:
        for block in blocks:
            start = block * BLOCK_BYTES
            digests.append(xxhash.xxh3_64_intdigest(view[start : start + BLOCK_BYTES]))
            if _DONTNEED is not None and start < size:
                mapping.madvise(_DONTNEED, start, min(BLOCK_BYTES, size - start))
    return digests


def _spans(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Every block from ``first[i]`` to ``last[i]``, for all i."""
    counts = last - first + 1
    starts = np.repeat(first - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return starts + np.arange(int(counts.sum()))
