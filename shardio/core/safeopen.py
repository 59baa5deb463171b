"""Regular files only, read within a bound: what shardio opens of a user's directory.

A FIFO in place of `manifest.json` or a chunk blocks `open()` forever, and a character
device (`/dev/zero`) never ends; both are refused before anything is read from them.
Metadata is read at most `limit` bytes, checked against the file's size first, so a
huge file is refused before memory is allocated for it.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from .errors import TooManyOpenFilesError, UnreadableFileError

__all__ = [
    "MAX_CHUNK_BYTES",
    "check_descriptor_headroom",
    "check_regular",
    "out_of_descriptors",
    "open_regular",
    "read_bounded",
    "refuse_special",
    "too_many_open",
]

#: The largest chunk (decoded) an array may declare (Zarr, HDF5): a library allocates a
#: whole chunk to read one row of it. Real chunks are kilobytes to tens of megabytes.
MAX_CHUNK_BYTES = 256 * 1024 * 1024

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def refuse_special(path: str, mode: int) -> None:
    """Raise `UnreadableFileError` unless ``mode`` (of ``path``) is a regular file or a
    directory."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise UnreadableFileError(
        f"{path} is {kind}: shardio reads only regular files and directories (reading "
        "it could block forever or never end); replace it with the file that belongs there"
    )


def check_regular(path: str) -> os.stat_result:
    """``os.stat(path)`` after refusing a special file (links are followed)."""
    result = os.stat(path)
    refuse_special(path, result.st_mode)
    return result


def out_of_descriptors(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is EMFILE/ENFILE, also as a library's
    message (h5py, py-lmdb)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.EMFILE, errno.ENFILE):
            return True
        if "Too many open files" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


#: Descriptors left free after opening a shard: a DataLoader worker needs some to hand
#: batches over (torch passes shared memory as descriptors, and hangs when it cannot).
DESCRIPTOR_RESERVE = 16


def check_descriptor_headroom(path: str, reserve: int = DESCRIPTOR_RESERVE) -> None:
    """Raise `TooManyOpenFilesError` when fewer than ``reserve`` descriptors are left
    under this process's limit (after opening ``path``)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft > 1 << 16:
            return
        used = len(os.listdir("/proc/self/fd"))
    except (ImportError, OSError, ValueError):
        return
    if soft - used < reserve:
        raise too_many_open(path, OSError(errno.EMFILE, f"{used} of {soft} descriptors in use"))


def too_many_open(path: str, exc: BaseException) -> TooManyOpenFilesError:
    """The error for EMFILE/ENFILE while opening ``path``."""
    return TooManyOpenFilesError(
        f"cannot open {path}: this process has run out of file descriptors ({exc}); "
        "raise the limit (`ulimit -n`, or resource.setrlimit(RLIMIT_NOFILE) in the job) or "
        "keep fewer shards open per process with max_open_shards="
    )


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for reading, refused when it is no regular file (checked on the
    open descriptor: O_NONBLOCK keeps a FIFO from blocking the open itself)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError as exc:
        raise UnreadableFileError(
            f"cannot read {path}: permission denied; give this user read access "
            f"(chmod u+r, or run as its owner)"
        ) from exc
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise too_many_open(path, exc) from exc
        raise
    try:
        refuse_special(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of regular file ``path``; `UnreadableFileError` naming
    ``what`` when it holds more (checked from its size before reading)."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise UnreadableFileError(
                f"{path} holds {size} bytes, more than the {limit} any {what} needs: it is not one"
            )
        pieces, total = [], 0
        while total <= limit and (piece := handle.read(min(1 << 20, limit + 1 - total))):
            pieces.append(piece)
            total += len(piece)
    if total > limit:  # grew while read
        raise UnreadableFileError(f"{path} grew past the {limit} bytes any {what} needs")
    return b"".join(pieces)
