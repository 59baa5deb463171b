"""The node-local shard cache: remote shards fetched whole, then read as local ones.

`ShardCache` serves one remote dataset's shards from a cache directory shared by every
process on the node that names it (`CacheStore`); see docs/cache.md.
"""

from __future__ import annotations

from .fetch import ATTEMPTS, BACKOFF_S, download_shard
from .shards import (
    CACHE_WAIT_S,
    DEFAULT_LIMIT_SHARE,
    PREFETCH_THREADS,
    NoRoom,
    ShardCache,
    cache_key,
)
from .store import CacheEntry, CacheStore

__all__ = [
    "ATTEMPTS",
    "BACKOFF_S",
    "CACHE_WAIT_S",
    "DEFAULT_LIMIT_SHARE",
    "PREFETCH_THREADS",
    "CacheEntry",
    "CacheStore",
    "NoRoom",
    "ShardCache",
    "cache_key",
    "download_shard",
]
