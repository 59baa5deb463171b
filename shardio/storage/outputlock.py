"""The lock on a dataset directory being written, and who holds it.

A conversion or a `ShardWriter` holds an exclusive ``flock`` on
its output directory until it ends (the kernel drops it when the process dies, so a
crashed run leaves no stale lock).
Anything about to delete or rewrite that directory takes the same lock first.
"""

from __future__ import annotations

import os

from shardio.core.errors import OutputExistsError

__all__ = ["lock_output", "lock_holder"]


def lock_output(directory: str, action: str = "write into") -> int:
    """An open descriptor of ``directory`` holding an exclusive flock on it.

    Raises `OutputExistsError` naming the holder when another process has it;
    goes on unlocked on a platform or file system without flock."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        import fcntl

        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        holder = lock_holder(directory)
        who = f"process {holder}" if holder is not None else "another process"
        raise OutputExistsError(
            f"refusing to {action} {directory}: another conversion or ShardWriter is writing "
            f"into it ({who} holds its lock, an flock on the directory); wait for it to "
            "finish or stop it first"
        ) from None
    except (ImportError, OSError):
        pass
    return descriptor


def lock_holder(directory: str) -> int | None:
    """The PID holding an flock on ``directory``, from /proc/locks (Linux); else None."""
    try:
        status = os.stat(directory)
        with open("/proc/locks", encoding="ascii") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF" ("->" marks a waiter)
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            same = (
                int(inode) == status.st_ino
                and int(major, 16) == os.major(status.st_dev)
                and int(minor, 16) == os.minor(status.st_dev)
            )
            if same:
                return int(parts[4])
        except ValueError:
            continue
    return None
