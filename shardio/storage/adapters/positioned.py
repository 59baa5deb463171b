"""Rows at recorded byte offsets of a local file: the positioned-read layer that the
backends reading files share (raw mmap, LMDB, HDF5).

A `PositionedFile` is one file opened read-only in one of two modes: ``"map"`` (a
read-only shared mapping, copied from; its pages count in RSS until released with
``madvise(MADV_DONTNEED)``) or ``"pread"`` (``preadv`` into the caller's rows; no page
is mapped: the mode under a memory budget). An adapter knows where its rows lie; this
layer reads them there, straight into the caller's arrays, guards mapped reads
against a file truncated since it was mapped, releases mapped pages, and passes
access hints on.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np

from shardio.core.errors import ShardCorruptError
from shardio.memory import AccessPattern, ReleaseResult

__all__ = [
    "PositionedFile",
    "ReadMode",
    "is_run",
    "pread_into",
    "pread_rows",
    "raise_if_truncated",
]

#: How a `PositionedFile` reads: through a map of the file, or with pread.
ReadMode = Literal["map", "pread"]

_GATHER_BELOW = 8 << 10
"""Rows of this many bytes and more are copied one by one, smaller ones gathered: at
4 KiB a gather read LMDB and HDF5 batches 1.4-1.9x faster, at 64 KiB its extra copy
made them 0.84-0.91x (bench_read.py, quiet, alternated with the per-row copy)."""
_GATHER_BYTES = 256 << 10
"""Bytes gathered from a map per step: the step's temporary stays below the size at
which glibc hands freed memory back to the kernel, so it is reused, not faulted in
again (one 1 MiB temporary per batch faulted 480 pages a batch, 4x slower)."""

_ADVICE = {
    "random": getattr(mmap, "MADV_RANDOM", None),
    "sequential": getattr(mmap, "MADV_SEQUENTIAL", None),
    "normal": getattr(mmap, "MADV_NORMAL", None),
}


def is_run(indices: np.ndarray) -> bool:
    """True when ``indices`` are ascending and consecutive (``k, k + 1, ...``).

    The test on the ends comes first: random batches fail it without a pass over them."""
    count = len(indices)
    return (
        count > 0
        and int(indices[-1]) - int(indices[0]) == count - 1
        and bool(np.all(np.diff(indices) == 1))
    )


def raise_if_truncated(path: str, size: int, expected: int) -> None:
    """Raise before a mapped read of ``path`` when it holds fewer than the ``expected``
    bytes that were mapped.

    NOTE: touching a mapped page past the end of a truncated file raises SIGBUS, which
    kills the process; adapters that read through a mapping check the size (one fstat)
    before each read call. A truncation between the check and the copy still faults:
    docs/reliability.md states that window."""
    if size < expected:
        raise ShardCorruptError(
            f"{path} was truncated while open: {size} bytes, expected {expected}"
        )


def pread_into(fd: int, buffer: np.ndarray, offset: int, path: str) -> None:
    """``buffer.nbytes`` bytes of file ``fd`` (``path``) from ``offset`` (one pread)."""
    if os.preadv(fd, [buffer.data], offset) != buffer.nbytes:
        raise ShardCorruptError(f"shard file {path} ended early (truncated while open?)")


def pread_rows(fd: int, path: str, data: memoryview, size: int, offsets: Sequence[int]) -> None:
    """Row ``r`` (``size`` bytes of the flat buffer ``data``) from ``offsets[r]`` of file
    ``fd``: one ``preadv`` per row.

    NOTE: the per-row loop is the hot path under a budget: memoryview slices and
    precomputed offsets keep it at one preadv call per row and little else."""
    if not size:
        return
    preadv = os.preadv
    for start, offset in zip(range(0, len(offsets) * size, size), offsets, strict=True):
        if preadv(fd, [data[start : start + size]], offset) != size:
            raise ShardCorruptError(
                f"shard file {path} ends inside the row at byte {offset} (truncated while open?)"
            )


class PositionedFile:
    """One local file read at byte offsets, mapped (``mode="map"``) or with pread.

    The descriptor stays open in both modes: pread reads through it, and a mapped
    read checks through it that the file still holds what was mapped (`check_size`)."""

    __slots__ = ("_row_shape", "_rows", "fd", "map", "path", "size", "view")

    def __init__(self, path: str, mode: ReadMode = "map") -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.map: mmap.mmap | None = None
        #: The mapping as bytes (``None`` in pread mode).
        self.view: np.ndarray | None = None
        #: The map as rows of one size (`take_rows`), kept for the next batch.
        self._rows: np.ndarray | None = None
        self._row_shape: tuple[int, ...] = ()
        try:
            self.size = os.fstat(self.fd).st_size
            if mode == "map" and self.size:
                self.map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
                self.view = np.frombuffer(self.map, np.uint8)
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def mapped(self) -> bool:
        """True when reads touch pages of a mapping (they count in this process's RSS)."""
        return self.map is not None

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        """The first ``count`` values of the mapped file as a 1-D array of ``dtype``."""
        assert self.map is not None
        return np.frombuffer(self.map, dtype=dtype, count=count)

    def check_size(self) -> None:
        """Raise before a mapped read where the file was truncated since it was mapped."""
        if self.map is not None:
            raise_if_truncated(self.path, os.fstat(self.fd).st_size, self.size)

    def take_rows(self, indices: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Rows ``indices`` of a file of ``out``'s rows (its dtype and shape past the first
        axis), side by side from byte 0, into ``out`` (C-contiguous, ``len(indices)``
        rows); returns ``out``. The caller has checked the indices.

        Mapped: one ``np.take`` over the map seen as such rows, in C with the GIL
        released, straight into ``out``. pread: one read for a run of rows, else one
        per row (`pread_rows`)."""
        count = len(indices)
        if not count or not out.nbytes:
            return out
        if self.view is not None:
            self.check_size()
            rows, shape = self._rows, out.shape[1:]
            if rows is None or shape != self._row_shape or rows.dtype != out.dtype:
                row = out.nbytes // count
                whole = self.size // row
                rows = self.view[: whole * row].view(out.dtype).reshape(whole, *shape)
                self._rows, self._row_shape = rows, shape
            # mode="clip" (indices are checked by the caller): "raise" buffers the output.
            return np.take(rows, indices, axis=0, out=out, mode="clip")
        row = out.nbytes // count
        flat = out.reshape(-1).view(np.uint8)
        if is_run(indices):
            pread_into(self.fd, flat, int(indices[0]) * row, self.path)  # one read
            return out
        offsets = (indices.astype(np.int64, copy=False) * row).tolist()
        pread_rows(self.fd, self.path, flat.data, row, offsets)
        return out

    def read_at(self, offset: int, out: np.ndarray) -> np.ndarray:
        """``out.nbytes`` bytes from byte ``offset`` into ``out`` (C-contiguous): copied
        out of the map, or one pread; returns ``out``."""
        nbytes = out.nbytes
        if not nbytes:
            return out
        flat = out.reshape(-1).view(np.uint8)
        if self.view is not None:
            self.check_size()
            if offset < 0 or offset + nbytes > self.size:
                raise ShardCorruptError(
                    f"{self.path}: bytes {offset} to {offset + nbytes} lie outside the "
                    f"file's {self.size} bytes: its table of positions is damaged"
                )
            flat[...] = self.view[offset : offset + nbytes]
            return out
        pread_into(self.fd, flat, offset, self.path)
        return out

    def read_rows(self, offsets: np.ndarray, rows: Sequence[np.ndarray]) -> None:
        """Row ``r`` of each of ``rows`` (C-contiguous arrays of ``len(offsets)`` rows,
        whose bytes lie side by side in the file) from byte ``offsets[r]`` (int64):
        copied out of the map, or one scattering ``preadv`` per row."""
        assert all(part.flags.c_contiguous for part in rows)  # written through views
        count = len(offsets)
        sizes = [part.nbytes // max(1, len(part)) for part in rows]
        wanted = sum(sizes)
        if not count or not wanted:
            return
        flats = [part.reshape(-1).view(np.uint8) for part in rows]
        if self.view is not None:
            self.check_size()
            # Offsets outside the file (a damaged table of positions) are refused with
            # the file named, before any copy.
            if int(offsets.min()) < 0 or int(offsets.max()) + wanted > self.size:
                raise ShardCorruptError(
                    f"{self.path}: a row lies outside the file's {self.size} bytes "
                    f"(offsets {int(offsets.min())} to {int(offsets.max())}, {wanted} bytes "
                    "each): its table of positions is damaged"
                )
            # Small rows: gathers of many rows per field. Fancy indexing a window of the
            # map whose rows start at every byte copies them in C with the GIL released
            # (threads reading batches overlap), where a copy per row in Python holds
            # it. NOTE: numpy's take would copy such a strided window first, so rows
            # come through a temporary, `_GATHER_BYTES` at a time, and one more copy,
            # which costs more than the Python per row from `_GATHER_BELOW` bytes on:
            # larger rows are copied one by one between memoryviews.
            assert self.map is not None  # mapped: a view of it exists
            at = 0
            with memoryview(self.map) as source:
                for flat, size in zip(flats, sizes, strict=True):
                    if size >= _GATHER_BELOW:
                        data = flat.data
                        for start, offset in zip(
                            range(0, count * size, size), (offsets + at).tolist(), strict=True
                        ):
                            data[start : start + size] = source[offset : offset + size]
                    elif size:
                        starts = self.size - at - size + 1  # every start whose row fits
                        window = np.ndarray(
                            (starts, size), np.uint8, self.map, offset=at, strides=(1, 1)
                        )
                        step = _GATHER_BYTES // size
                        out = flat.reshape(count, size)
                        for first in range(0, count, step):
                            out[first : first + step] = window[offsets[first : first + step]]
                    at += size
            return
        fd, preadv = self.fd, os.preadv
        if len(flats) == 1:  # pread_rows, without one more call on the batch path
            data, size = flats[0].data, sizes[0]
            for start, offset in zip(range(0, count * size, size), offsets.tolist(), strict=True):
                if preadv(fd, [data[start : start + size]], offset) != size:
                    raise ShardCorruptError(
                        f"shard file {self.path} ends inside the row at byte {offset} "
                        "(truncated while open?)"
                    )
            return
        datas = [flat.data for flat in flats]
        for row, offset in enumerate(offsets.tolist()):
            parts = [
                data[row * size : (row + 1) * size] for data, size in zip(datas, sizes, strict=True)
            ]
            if preadv(fd, parts, offset) != wanted:
                raise ShardCorruptError(
                    f"shard file {self.path} ends inside the row at byte {offset} "
                    "(truncated while open?)"
                )

    def drop_pages(self) -> ReleaseResult | None:
        """``madvise(MADV_DONTNEED)`` on the map: RSS drops, the page cache stays. None
        where nothing is mapped (or the platform cannot), for the caller to reopen.

        NOTE: safe on a read-only shared file mapping: dropped pages are faulted back
        in from the page cache (or the file) on the next touch, and nothing is lost."""
        if self.map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return None
        self.map.madvise(mmap.MADV_DONTNEED)
        return ReleaseResult(advise_calls=1, advised_bytes=len(self.map))

    def advise(self, pattern: AccessPattern) -> None:
        """Tell the kernel how the map is read (nothing to tell in pread mode)."""
        advice = _ADVICE.get(pattern)
        if self.map is not None and advice is not None:
            self.map.madvise(advice)

    def close(self) -> None:
        """Close the map and the descriptor. Raises BufferError, with the descriptor
        closed, where an array over the map is still alive (the map then closes once
        the last one is gone)."""
        # Release the buffer exports, so the map can close.
        self.view = self._rows = None
        try:
            if self.map is not None:
                mapping, self.map = self.map, None
                mapping.close()
        finally:
            os.close(self.fd)
