"""Readahead hints: ask the kernel to start reading file ranges into the page cache.

``posix_fadvise(POSIX_FADV_WILLNEED)`` queues the reads and returns at once; the page
cache is shared by every process, so a hint given by the process that iterates a
sampler also serves the DataLoader workers that read. Page-cache pages are not part
of any process's RSS, so the data a hint brings in never counts against a budget.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["READAHEAD_PIECE", "FileRange", "hint_ranges", "readahead_supported"]

#: Linux reads at most max(readahead window, device I/O size) per WILLNEED call and
#: silently drops the rest, so longer ranges are hinted in pieces of this many bytes
#: (the smallest readahead window in common use).
READAHEAD_PIECE = 128 * 1024

FileRange = tuple[str, int, int]
"""``(path, offset, length)``: bytes of a local file."""


def readahead_supported() -> bool:
    """True where the platform has ``posix_fadvise`` (Linux, not macOS)."""
    return hasattr(os, "posix_fadvise")


def hint_ranges(ranges: Iterable[FileRange]) -> int:
    """Hint every range; returns the bytes hinted (0 where unsupported).

    Each file is opened for its hints and closed again, so hinting holds no file
    descriptors. A range that cannot be hinted (a file removed meanwhile) is
    skipped: the read that follows reports the problem with a clearer error.
    """
    if not readahead_supported():
        return 0
    hinted = 0
    for path, offset, length in ranges:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            for start in range(offset, offset + length, READAHEAD_PIECE):
                piece = min(READAHEAD_PIECE, offset + length - start)
                os.posix_fadvise(fd, start, piece, os.POSIX_FADV_WILLNEED)
            hinted += length
        except OSError:
            continue
        finally:
            os.close(fd)
    return hinted
