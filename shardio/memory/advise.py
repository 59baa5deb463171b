"""madvise on mappings that Python did not create (LMDB's map of its data file).

Where a backend's library maps a file itself, the mapping is found by path in
``/proc/self/maps`` and advised through libc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
from dataclasses import dataclass

__all__ = ["ADVICE", "Mapping", "advise_range", "find_mappings", "madvise_supported"]

#: Advice names -> values, for the advice this platform knows.
ADVICE = {
    name.removeprefix("MADV_").lower(): getattr(mmap, name)
    for name in ("MADV_DONTNEED", "MADV_RANDOM", "MADV_SEQUENTIAL", "MADV_WILLNEED", "MADV_NORMAL")
    if hasattr(mmap, name)
}
_PAGE = mmap.PAGESIZE


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int = 0  # offset in the file of the mapping's first byte

    @property
    def length(self) -> int:
        return self.end - self.start


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise.restype = ctypes.c_int
    return libc


_LIBC = _libc()


def madvise_supported() -> bool:
    """True where mappings can be advised and /proc/self/maps lists them (Linux)."""
    return _LIBC is not None and "dontneed" in ADVICE and os.path.exists("/proc/self/maps")


def find_mappings(path: str) -> list[Mapping]:
    """This process's mappings of the file at ``path``."""
    target = os.path.realpath(path)
    found = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].rstrip("\n") == target:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                found.append(Mapping(start, end, int(parts[2], 16)))
    return found


def advise_range(start: int, length: int, advice: str) -> None:
    """``madvise(start, length, advice)``; the range is widened to whole pages."""
    if _LIBC is None:
        raise OSError("madvise is not available on this platform")
    aligned = start - start % _PAGE
    length += start - aligned
    if _LIBC.madvise(aligned, length, ADVICE[advice]) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"madvise({advice}) failed: {os.strerror(errno)}")
