"""How many shards a process keeps open at once, and which to close first.

Every open shard holds file descriptors (and mappings); a dataset of thousands of
shards read in random order would otherwise open all of them in every DataLoader
worker and fail with "Too many open files". Readers closed here reopen lazily.
"""

from __future__ import annotations

from collections import OrderedDict

from shardio.core.config import positive_int
from shardio.core.perprocess import PerProcess

__all__ = ["RecentlyUsed", "default_open_limit", "resolve_open_limit"]


def default_open_limit(per_shard: int = 3) -> int:
    """Shards a process keeps open by default: a quarter of its file-descriptor limit
    shared by shards holding ``per_shard`` descriptors each (the rest is left to
    DataLoader pipes, batches handed over as shared memory, and the program), at least
    4; 128 where the limit cannot be read."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 128
    if soft == resource.RLIM_INFINITY:
        return 8192
    return max(4, soft // (4 * max(1, per_shard)))


def resolve_open_limit(value: int | None, per_shard: int = 3) -> int:
    if value is None:
        return default_open_limit(per_shard)
    return positive_int(value, "max_open_shards")


class RecentlyUsed:
    """Keys in order of last use, at most ``limit`` of them, counted per process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys: PerProcess[OrderedDict[int, None]] = PerProcess()

    def use(self, key: int) -> int | None:
        """Mark ``key`` used now; returns the least recently used key beyond the limit."""
        keys = self._keys.get(OrderedDict)  # after fork nothing is open here yet
        if key in keys:
            keys.move_to_end(key)
            return None
        keys[key] = None
        if len(keys) > self.limit:
            return keys.popitem(last=False)[0]
        return None
