"""A remote dataset's shards served from a node-local cache directory.

`ShardCache.acquire(number)` returns the local path of shard ``number``: downloaded
whole on a miss (one download per shard on the node, under its lock), checked
against the manifest's digest, renamed into place, and leased (a shared flock) so no
process evicts it while this one reads it. `prefetch` starts downloads in the
background for shards read next (`DatasetReader.readahead`, which `ShardSampler`
calls ahead of its order).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import xxhash

from shardio.core.config import format_size, parse_size
from shardio.core.errors import CacheError, InvalidOptionError, ShardCorruptError
from shardio.core.perprocess import PerProcess
from shardio.core.warn import warn_user

from ..manifest import Manifest, ShardInfo
from ..remote import filesystem
from .fetch import download_shard
from .store import CacheStore, Lease, ReaderMark, remove_tree

__all__ = [
    "NoRoom",
    "CACHE_WAIT_S",
    "DEFAULT_LIMIT_SHARE",
    "PREFETCH_THREADS",
    "ShardCache",
    "cache_key",
]

#: How long a reader waits for room (shards other readers hold) before CacheError.
CACHE_WAIT_S = 60.0
#: Downloads in flight per process for download-ahead.
PREFETCH_THREADS = 4
#: How long a process reuses its count of the cache's readers.
_READERS_TTL_S = 1.0
#: Without ``cache_limit``: this share of the free space of ``cache_dir`` when opened.
DEFAULT_LIMIT_SHARE = 0.75
_POLL_S = 0.1


class NoRoom(CacheError):
    """No room in the cache now (`ShardCache.acquire` with ``wait=False``)."""


def cache_key(url: str, manifest: Manifest) -> str:
    """One version of one dataset: its URL and its manifest's content."""
    import json

    text = json.dumps(manifest.to_json(), sort_keys=True)
    return xxhash.xxh3_64_hexdigest(f"{url.rstrip('/')}\0{text}".encode())


@dataclass
class _Local:
    """This process's leases, downloads ahead and counters."""

    leases: dict[int, Lease] = field(default_factory=dict)
    mark: ReaderMark | None = None  # set at this process's first read
    pending: dict[int, Future[None]] = field(default_factory=dict)
    pool: ThreadPoolExecutor | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: int = 0
    misses: int = 0
    downloads: int = 0
    bytes_downloaded: int = 0
    wait_s: float = 0.0
    evictions: int = 0
    prefetched: int = 0
    readers: int = 1  # readers of the cache, counted at readers_at (open_shards)
    whole_fits: bool = False  # the dataset fits beside the other datasets' readers
    acquires: int = 0  # shards opened through the cache by this process
    last_acquired: dict[int, int] = field(default_factory=dict)  # shard -> acquires then
    refetches: int = 0
    warned: bool = False
    readers_at: float = float("-inf")


def _drop_inherited(local: _Local) -> None:
    # A forked child closes its copies of the parent's lease descriptors: the parent's
    # own copies keep the leases; the child's would keep them until it exits.
    for lease in local.leases.values():
        lease.close()
    if local.mark is not None:
        local.mark.close(remove=False)  # the parent's mark; the child makes its own


class ShardCache:
    """Shards of the remote dataset at ``url`` (its ``manifest``) in ``directory``."""

    def __init__(
        self,
        url: str,
        manifest: Manifest,
        directory: str | os.PathLike[str],
        limit: int | str | None,
        transient: frozenset[str],
        storage_options: dict[str, Any] | None = None,
        wait_s: float = CACHE_WAIT_S,
    ) -> None:
        self.url = url.rstrip("/")
        self.shards: tuple[ShardInfo, ...] = manifest.shards
        self.store = CacheStore(os.fspath(directory), 0)
        if limit is None:
            free = shutil.disk_usage(self.store.directory).free
            limit = int(DEFAULT_LIMIT_SHARE * free) + self.store.used()
        self.limit = self.store.limit = parse_size(limit, "cache_limit")
        self.largest = max((s.nbytes for s in manifest.shards), default=0)
        self.total = sum(s.nbytes for s in manifest.shards)
        self.key = cache_key(url, manifest)
        self.transient = transient
        self.storage_options = storage_options
        self.wait_s = float(wait_s)
        largest = self.largest
        if largest > self.limit:
            raise InvalidOptionError(
                f"cache_limit={format_size(self.limit)} cannot hold one shard of {url} "
                f"(the largest is {format_size(largest)}); pass a cache_limit of at least "
                f"the shards each reading process keeps open times {format_size(largest)}"
            )
        self.store.prepare_key(self.key, self.url)
        self._local: PerProcess[_Local] = PerProcess()

    @property
    def local(self) -> _Local:
        return self._local.get(_Local, _drop_inherited)

    def open_shards(self) -> int:
        """Shards a reading process keeps open by default: its share of half the limit,
        shared by the readers marked in the cache now (DataLoader workers, ranks and
        jobs; at least one, this process), at least 1. Each holds cache space: a reader
        short of room closes the shards it is not reading first.

        NOTE: each reader used to keep open what half the limit holds; three readers
        then could lease one and a half limits, and shards downloaded ahead found no
        room (bench_remote's cold epoch at 0.76x of the link with a 25% cache). Now
        the readers together lease at most half the limit, and download-ahead keeps
        the other half. A process counts the readers again at most once a second.

        When the whole dataset fits in the limit beside one shard for each reader of
        other datasets, a lease crowds nothing out: every shard may stay open (a warm
        epoch with a full cache then reopens nothing)."""
        local = self.local
        now = time.monotonic()
        if now - local.readers_at > _READERS_TTL_S:
            marks = self.store.reader_marks()
            local.readers = max(1, len(marks))
            others = sum(nbytes for key, nbytes in marks if key != self.key)
            local.whole_fits = self.total + others <= self.limit
            local.readers_at = now
        if local.whole_fits:
            return max(1, len(self.shards))
        share = self.limit // (2 * local.readers * max(self.largest, 1))
        return max(1, share)

    def path(self, number: int) -> str:
        """Where shard ``number`` lies in the cache (it may not be there yet)."""
        return self.store.data_path(self.key, self.shards[number].path)

    # ------------------------------------------------------------- reading
    def acquire(
        self, number: int, keep: set[int] | frozenset[int] = frozenset(), wait: bool = True
    ) -> str:
        """Shard ``number``'s local path, downloaded if missing and leased until
        `release`d: leases of this process's other shards not in ``keep`` are
        released first (their readers are closed), making room for it.

        Without room in the cache: with ``wait``, wait up to ``wait_s`` for readers
        elsewhere to close shards, then raise `CacheError`; else raise `NoRoom` at
        once (the caller closes shards it holds but does not use, and asks again)."""
        local = self.local
        if local.mark is None:
            self._start_reading(local)
            local.readers_at = float("-inf")  # count the readers again, with this one
        with local.lock:
            for other in [n for n in local.leases if n not in keep and n != number]:
                local.leases.pop(other).close()
            lease = local.leases.get(number)
        if lease is None:
            lease = self.store.lease(self.key, self.shards[number].path)
            with local.lock:
                old = local.leases.pop(number, None)
                local.leases[number] = lease
            if old is not None:
                old.close()
        else:
            os.utime(lease.fd)
        path = self.path(number)
        local.acquires += 1
        previous = local.last_acquired.get(number)  # when this process last had it
        if os.path.exists(path):
            local.hits += 1
            local.last_acquired[number] = local.acquires
            self.store.clear_ahead(self.key, self.shards[number].path)
            return path
        local.misses += 1
        if previous is not None and local.acquires - previous <= len(self.shards) // 2:
            self._refetch(local, number)
        started = time.monotonic()
        try:
            if not self._fetch(number, wait_lock=True, wait_room=wait):
                raise NoRoom(f"no room in {self.store.directory} for shard {number} now")
        finally:
            local.wait_s += time.monotonic() - started
        local.last_acquired[number] = local.acquires
        return path

    def _refetch(self, local: _Local, number: int) -> None:
        """Count (and warn once per process about) shard ``number`` evicted and needed
        again soon after this process read it: fewer shards than half the dataset
        were opened here since, so it is downloaded more than once a pass."""
        local.refetches += 1
        if local.warned:
            return
        local.warned = True
        warn_user(
            f"the node cache at {self.store.directory} evicted shard {number} of {self.url} "
            "while it was still being read, and downloads it again: with "
            f"cache_limit={format_size(self.limit)} the shards read together (the "
            "sampler's window, times the reading processes) and those downloaded ahead "
            "do not fit. Pass ShardSampler(window=...) of at most half of cache_limit "
            "divided by the reading processes, in whole shards (at least 8 x "
            f"{format_size(self.largest)}), or raise cache_limit (see docs/cache.md; "
            'memory_stats()["cache"]["refetches"] counts them)',
            RuntimeWarning,
        )

    def _start_reading(self, local: _Local) -> None:
        """Mark this process as a reader of the cache; refuse at once when the limit
        cannot hold one shard for each reader on the node (each needs one to read)."""
        with local.lock:
            if local.mark is not None:
                return
            local.mark = self.store.mark_reader(self.largest, self.key)
        needed = self.store.readers()
        if sum(needed) > self.limit:
            with local.lock:
                mark, local.mark = local.mark, None
            mark.close()
            raise CacheError(
                f"cache_limit={format_size(self.limit)} cannot hold one shard for each of "
                f"the {len(needed)} readers of cache_dir {self.store.directory} now "
                f"(processes reading through it: DataLoader workers, ranks, jobs), which "
                f"need {format_size(sum(needed))} (the largest shard of {self.url} is "
                f"{format_size(self.largest)}); raise cache_limit to at least "
                f"{format_size(sum(needed))} plus what download-ahead should use, or read "
                "with fewer processes"
            )

    def release(self, number: int) -> None:
        """Let shard ``number`` be evicted again (its reader closed)."""
        local = self.local
        with local.lock:
            lease = local.leases.pop(number, None)
        if lease is not None:
            lease.close()

    def release_all(self) -> None:
        local = self._local.current()
        if local is None:
            return
        with local.lock:
            leases, local.leases = list(local.leases.values()), {}
        for lease in leases:
            lease.close()

    # ---------------------------------------------------------- downloading
    def _fetch(self, number: int, wait_lock: bool, wait_room: bool) -> bool:
        """Download shard ``number`` unless it is there; False when it could not start
        now: another process downloads it (unless ``wait_lock``), or no room (unless
        ``wait_room``).

        NOTE: the shard's download lock is held only while a download runs (each
        bounded by `RemoteReadError`'s retries), never while waiting for room: a
        process waiting for room under that lock made every other process wanting
        the shard wait behind it, one ``wait_s`` after another."""
        info = self.shards[number]
        path = self.path(number)
        deadline = time.monotonic() + self.wait_s
        while True:
            lock = self.store.fetch_lock(self.key, info.path)
            if not lock.acquire(blocking=wait_lock):
                return False
            try:
                if os.path.exists(path):
                    return True  # another process downloaded it meanwhile
                self.store.remove_partial(self.key, info.path)
                reserved, used = self._reserve(info)
                if reserved is not None:
                    self._download(info, reserved, path)
                    return True
            finally:
                lock.release()
            if not wait_room:
                return False
            if time.monotonic() > deadline:
                raise CacheError(
                    f"cache_dir {self.store.directory} has no room for shard {info.path} "
                    f"({format_size(info.nbytes)}) after {self.wait_s:.0f} s: "
                    f"{format_size(used)} of cache_limit={format_size(self.limit)} is held "
                    "by shards that readers have open; raise cache_limit, or read with "
                    "fewer processes or a smaller max_open_shards"
                )
            time.sleep(_POLL_S)

    def _download(self, info: ShardInfo, reserved: str, path: str) -> None:
        """Download ``info`` into the ``reserved`` directory, then move it to ``path``."""
        try:
            target = os.path.join(reserved, info.path)
            fs, remote = filesystem(f"{self.url}/{info.path}", self.storage_options)
            nbytes = download_shard(
                fs, remote, f"{self.url}/{info.path}", info, target, self.transient
            )
            try:
                self.store.complete(reserved, target, path)
            except OSError as exc:
                raise CacheError(
                    f"cannot move shard {info.path} into the cache at {path}: {exc}"
                ) from exc
            local = self.local
            local.downloads += 1
            local.bytes_downloaded += nbytes
        finally:
            remove_tree(reserved)

    def _reserve(self, info: ShardInfo) -> tuple[str | None, int]:
        """Room for ``info`` now (evicting unused shards), or None; with the bytes in use."""
        try:
            with self.store.locked():
                reserved, used, evicted = self.store.reserve(self.key, info.path, info.nbytes)
        except OSError as exc:
            raise CacheError(
                f"cache_dir {self.store.directory} cannot be written: "
                f"{exc.strerror or exc} (pass a writable cache_dir)"
            ) from exc
        for trash in evicted:  # removed before this download writes (see CacheStore.evict)
            remove_tree(trash)
        self.local.evictions += len(evicted)
        return reserved, used

    def prefetch(self, numbers: list[int]) -> int:
        """Start downloading shards ``numbers`` in the background (at most
        `PREFETCH_THREADS` at once, within the limit); returns how many started.

        A download ahead never waits for room and never fails the caller: the read
        of that shard downloads it (and reports any fault) if this one did not. Shards
        downloaded ahead and not read yet hold at most half the limit, and are
        evicted only after every shard that was read."""
        local = self.local
        started = 0
        with local.lock:
            if local.pool is None:
                local.pool = ThreadPoolExecutor(PREFETCH_THREADS, "shardio-cache")
            for number in numbers:
                if number in local.pending or os.path.exists(self.path(number)):
                    continue
                if len(local.pending) >= 2 * PREFETCH_THREADS:
                    break
                future = local.pool.submit(self._ahead, number)
                local.pending[number] = future
                started += 1
        return started

    def _ahead(self, number: int) -> None:
        local = self.local
        info = self.shards[number]
        try:
            sizes = {s.path: s.nbytes for s in self.shards}
            waiting = sum(sizes.get(name, 0) for name in self.store.ahead(self.key))
            if waiting + info.nbytes > self.limit // 2:
                return  # enough is downloaded ahead and not read yet
            if self._fetch(number, wait_lock=False, wait_room=False):
                self.store.mark_ahead(self.key, info.path)
                local.prefetched += 1
        except (OSError, ShardCorruptError):
            pass  # the read of this shard downloads it again and raises
        finally:
            with local.lock:
                local.pending.pop(number, None)

    # --------------------------------------------------------------- stats
    def stats(self) -> dict[str, Any]:
        local = self._local.current()
        if local is None:
            local = _Local()
        return {
            "cache_dir": self.store.directory,
            "cache_limit": self.limit,
            "hits": local.hits,
            "misses": local.misses,
            "downloads": local.downloads,
            "bytes_downloaded": local.bytes_downloaded,
            "wait_s": round(local.wait_s, 4),
            "evictions": local.evictions,
            "prefetched": local.prefetched,
            "refetches": local.refetches,
        }

    def close(self) -> None:
        local = self._local.current()
        if local is None:
            return
        if local.pool is not None:
            local.pool.shutdown(wait=True, cancel_futures=True)
            local.pool = None
        self.release_all()
        with local.lock:
            mark, local.mark = local.mark, None
        if mark is not None:
            mark.close()
