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
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xxhash

from shardio.core.checksum import BLOCK_BYTES, hash_files
from shardio.core.errors import InvalidOptionError, ShardCorruptError
from shardio.core.perprocess import ForkSafeLock, PerProcess

from .generation import Generation, check_generation
from .layout import shard_files_as_written
from .remote import is_remote

if TYPE_CHECKING:
    from .adapters.base import ShardReader
    from .manifest import ShardInfo

__all__ = [
    "VERIFY_MODES",
    "ShardCheck",
    "ShardChecks",
    "ValueRanges",
    "VerifyMode",
    "check_mode",
]

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


class ShardChecks:
    """The integrity checks around a dataset's reads in this process: a shard is the
    generation first opened (`before_open`), and with ``verify=`` its bytes match the
    digests its writer recorded before a value is handed out (`check`)."""

    def __init__(
        self,
        mode: VerifyMode,
        infos: Sequence[ShardInfo],
        transient: Collection[str],
        cached: bool,
    ) -> None:
        self.mode = mode
        self._infos = infos
        self._transient = transient
        # NOTE: the node cache checked each file against the manifest's digests when it
        # fetched it (a rewritten dataset gets another cache key), so a shard evicted
        # and fetched again is a new file of the same generation: only the blocks
        # checked in the old file are checked again.
        self._cached = cached
        self._checks: dict[int, ShardCheck] = {}
        self._generations: dict[str, Generation] = {}  # shard path -> as first opened

    def check_verifiable(self, dataset: str, has_digests: bool) -> None:
        """Refuse ``verify=`` on ``dataset`` where no digests were recorded."""
        if self.mode == "off":
            return
        if not has_digests:
            raise InvalidOptionError(
                f"verify={self.mode!r} checks shards against the digests their writer "
                f"recorded, which {dataset} has none of: it needs a local dataset "
                "directory written by shardio (shardio convert makes one)"
            )
        recorded = "checksum" if self.mode == "open" else "blocks"
        missing = [s.path for s in self._infos if getattr(s, recorded) is None]
        if missing:
            raise InvalidOptionError(
                f"verify={self.mode!r} needs the {recorded} of every shard, but "
                f"{dataset}'s manifest has none for {missing[:3]} (written with "
                "checksum=False, or by an older shardio); write it again, or use "
                + ("verify='off'" if self.mode == "open" else "verify='open'")
            )

    def check(self, number: int, reader: ShardReader[Any], local: np.ndarray) -> None:
        """Raise before handing out values ``local`` of shard ``number`` where it is
        not as written (a no-op with ``verify="off"``)."""
        if self.mode == "off":
            return
        check = self._checks.get(number)
        if check is None:
            info = self._infos[number]
            assert info.checksum is not None
            files = shard_files_as_written(reader.path, info.nbytes, self._transient)
            check = ShardCheck(reader.path, files.paths, info.checksum, info.blocks)
            self._checks[number] = check
        if check.complete:
            return
        if self.mode == "open":
            check.check_whole()
        else:
            check.check_ranges(reader.value_ranges(local))

    def before_open(self, path: str) -> None:
        """Before (re)opening shard ``path``: refuse a shard that is not the generation
        this dataset first opened; with ``verify=``, its blocks are checked again (those
        checked before were another handle's)."""
        if is_remote(path):
            return
        if self._cached:
            self._forget(path)
            return
        first = self._generations.get(path)
        if first is None:
            self._generations[path] = Generation.of(path, self._transient)
            return
        check_generation(path, first, self._transient)
        self._forget(path)

    def _forget(self, path: str) -> None:
        for number, check in list(self._checks.items()):
            if check.path == path:
                del self._checks[number]
