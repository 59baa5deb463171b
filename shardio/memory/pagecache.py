"""Readahead hints: ask the kernel to start reading file ranges into the page cache.

``posix_fadvise(POSIX_FADV_WILLNEED)`` queues the reads and returns at once; the page
cache is shared by every process, so a hint given by the process that iterates a
sampler also serves the DataLoader workers that read. Page-cache pages are not part
of any process's RSS, so a hint never counts against a memory budget.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

__all__ = ["READAHEAD_PIECE", "FileRange", "Readahead", "readahead_supported"]

#: Linux reads at most max(readahead window, device I/O size) per WILLNEED call and
#: silently drops the rest, so longer ranges are hinted in pieces of this many bytes
#: (the smallest readahead window in common use).
READAHEAD_PIECE = 128 * 1024

FileRange = tuple[str, int, int]
"""``(path, offset, length)``: bytes of a local file."""


def readahead_supported() -> bool:
    """True where the platform has ``posix_fadvise`` (Linux, not macOS)."""
    return hasattr(os, "posix_fadvise")


class Readahead:
    """Hints file ranges, keeping one read-only descriptor per file of this process."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def hint(self, ranges: Iterable[FileRange]) -> int:
        """Hint every range; returns the bytes hinted (0 where unsupported).

        A hint that fails (a file removed meanwhile) is skipped: the read that
        follows reports the problem with its own, clearer error.
        """
        if not readahead_supported():
            return 0
        if self._pid != os.getpid():  # inherited through fork: the parent owns them
            self._fds, self._pid = {}, os.getpid()
        hinted = 0
        for path, offset, length in ranges:
            try:
                fd = self._fd(path)
                for start in range(offset, offset + length, READAHEAD_PIECE):
                    piece = min(READAHEAD_PIECE, offset + length - start)
                    os.posix_fadvise(fd, start, piece, os.POSIX_FADV_WILLNEED)
            except OSError:
                continue
            hinted += length
        return hinted

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def close(self) -> None:
        """Close this process's descriptors; safe to call twice."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict[str, object]:
        return {"_fds": {}, "_pid": None}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
