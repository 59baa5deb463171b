"""A failed write as the error a user can act on: a full disk, a quota or a read-only
file system is an `OutputWriteError` naming the output and what to do, wherever the
write happened (`ShardWriter`, `shardio convert`)."""

from __future__ import annotations

import errno
import os

from shardio.core.config import format_size
from shardio.core.errors import OutputWriteError, ShardioError

__all__ = ["disk_error", "free_bytes", "write_failure"]

_LOW_SPACE_BYTES = 64 * 1024 * 1024
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_DISK_MESSAGES = (
    "No space left on device",
    "Disk quota exceeded",
    "File too large",
    "Read-only file system",
)


def disk_error(exc: BaseException) -> str | None:
    """The reason, when ``exc`` (or what caused it) is a full disk, quota or read-only fs."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_ERRNOS:
            return os.strerror(current.errno)
        text = str(current)
        for message in _DISK_MESSAGES:
            if message in text:
                return message
        current = current.__cause__ or current.__context__
    return None


def write_failure(
    exc: BaseException,
    output: str,
    name: str,
    libraries: tuple[str, ...],
    then: str = "rerun with resume=True (--resume)",
) -> OutputWriteError | None:
    """The clear error for a failure writing shard ``name``, or None to re-raise ``exc``
    (``libraries``: the writer's, whose errors may stand for a full disk; ``then``: what
    to do once there is space)."""
    if isinstance(exc, ShardioError) or not isinstance(exc, Exception):
        return None
    reason = disk_error(exc)
    backend = type(exc).__module__.split(".")[0] in libraries
    if reason is None and not (isinstance(exc, OSError) or backend):
        return None  # a bug, not an I/O failure: keep its traceback
    if reason is None:
        # NOTE: LMDB reports a short write (how a full disk shows up there) as EIO, so
        # an unexplained failure with next to no free space is taken for a full disk.
        free = free_bytes(output)
        if free is not None and free < _LOW_SPACE_BYTES:
            reason = f"No space left on device ({format_size(free)} free; the write failed: {exc})"
    if reason is not None:
        return OutputWriteError(
            f"writing shard {name} into {output} failed: {reason}; free space (or choose "
            f"another output) and {then}"
        )
    return OutputWriteError(f"writing shard {name} into {output} failed: {exc}")


def free_bytes(path: str) -> int | None:
    """Bytes available to this user on the file system holding ``path``."""
    try:
        stat = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return int(stat.f_bavail * stat.f_frsize)
