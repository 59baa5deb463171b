"""Download one shard whole (a file or a directory) and check it against its digest.

Retries: botocore (s3fs) already retries each request (`shardio.storage.remote` sets
``total_max_attempts=3``; 503 SlowDown and 429 are retried as throttling, dropped
connections and timeouts as transient). Around a whole shard this module adds
`ATTEMPTS` tries with exponential backoff (`BACKOFF_S`, doubling), so a shard that
keeps failing raises `RemoteReadError` naming its URL after at most
``ATTEMPTS x (one request's bound) + 0.5 + 1 s`` (3 x 33 s + 1.5 s with the defaults
of docs/remote.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO

from shardio.core.checksum import hash_files
from shardio.core.errors import CacheError, RemoteReadError, ShardCorruptError, ShardioError

from ..layout import scan_shard
from ..manifest import ShardInfo
from ..remote import is_fault, remote_errors

__all__ = ["ATTEMPTS", "BACKOFF_S", "download_shard", "remote_listing"]

ATTEMPTS = 3
# A download's local write failed: the cache's disk, not the network (never retried).
_LOCAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM}
)
BACKOFF_S = 0.5
#: Requests in flight for one directory shard (a Zarr shard is one file per chunk):
#: one at a time, each file costs the link's latency.
FILE_CONCURRENCY = 8
#: Bytes of a file requested and written at a time (one ranged request each), and
#: how many of its pieces are requested at once (one wait for the link's latency).
#: NOTE: the page cache keeps a file in folios as large as the writes that made it:
#: a shard written 64 KiB at a time (s3fs's `get_file`) cost its readers six to ten
#: times the page faults of one written in large pieces, and each fresh DataLoader
#: worker faults again: the warm cached epoch read at 0.87-0.92x of local disk.
#: Pieces one after another cost 15% of a single stream's speed in latency; two at
#: once kept it (8 MiB pieces, as boto3's transfer manager uses).
PIECE_BYTES = 8 << 20
PIECES_AT_ONCE = 2


def remote_listing(fs: Any, path: str, url: str) -> dict[str, int]:
    """Files of the remote shard at ``path`` by their path inside it, with sizes."""
    with remote_errors(url):
        found = fs.find(path, detail=True, withdirs=False)
    root = path.rstrip("/")
    files: dict[str, int] = {}
    for name, info in found.items():
        name = name.rstrip("/")
        relative = "" if name == root else os.path.relpath(name, root)
        files[relative] = int(info.get("size") or 0)
    return files


def _with_retries(url: str, action: Any) -> Any:
    delay = BACKOFF_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with remote_errors(url):
                return action()
        except RemoteReadError:
            if attempt == ATTEMPTS:
                raise
        except Exception as exc:  # a fault remote_errors did not translate
            if not is_fault(exc) or attempt == ATTEMPTS:
                raise
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def download_shard(
    fs: Any, path: str, url: str, info: ShardInfo, target: str, transient: frozenset[str]
) -> int:
    """Download the shard at ``path`` (``url``) to ``target`` (which must not exist) and
    check it against ``info``; returns the bytes downloaded.

    A shard whose size or digest differs from the manifest's raises
    `ShardCorruptError` (the dataset changed on the server, or the download was
    damaged): nothing unchecked is ever left at ``target``."""
    listing = _with_retries(url, lambda: remote_listing(fs, path, url))
    if not listing:
        raise ShardCorruptError(f"shard {url} listed in the manifest is missing on the server")
    counted = {k: v for k, v in listing.items() if os.path.basename(k) not in transient}
    nbytes = sum(counted.values())
    if nbytes != info.nbytes:
        raise ShardCorruptError(
            f"shard {url} has {nbytes} bytes on the server, but the manifest says "
            f"{info.nbytes}: the dataset was rewritten or damaged since its manifest was "
            "read; open the dataset again"
        )
    try:
        if list(counted) == [""]:
            _with_retries(url, _getter(fs, path, url, target, nbytes))
        else:
            _fetch_directory(fs, path, url, target, counted)
    except OSError as exc:
        if isinstance(exc, ShardioError):  # the server's, or a check's: named already
            raise
        raise CacheError(
            f"writing shard {url} into the cache at {target} failed: {exc.strerror or exc} "
            "(the cache_dir is full or read-only; free space or pass another cache_dir)"
        ) from exc
    if info.checksum is not None:
        files = scan_shard(target).without(transient)
        actual = hash_files(files.paths, target)
        if actual != info.checksum:
            raise ShardCorruptError(
                f"shard {url} downloaded with digest {actual}, but the manifest records "
                f"{info.checksum}: the dataset was rewritten or damaged since its manifest "
                "was read; open the dataset again (nothing was cached)"
            )
    return nbytes


def _fetch_directory(fs: Any, path: str, url: str, target: str, files: dict[str, int]) -> None:
    """The ``files`` (sizes by path inside the shard) of a directory shard into
    ``target``, `FILE_CONCURRENCY` at a time, each with its own retries; the first
    failure is raised once all have ended."""
    os.makedirs(target)
    for directory in sorted({os.path.dirname(os.path.join(target, f)) for f in files}):
        os.makedirs(directory, exist_ok=True)  # each once: a mkdir costs ~1 ms on some disks
    root = path.rstrip("/")
    pool = _file_pool()
    pending = []
    for relative in sorted(files):
        file_url = f"{url}/{relative}"
        remote, local = f"{root}/{relative}", os.path.join(target, relative)
        pending.append((file_url, _getter(fs, remote, file_url, local, files[relative])))
    fetches: list[Future[Any]] = []
    # At most FILE_CONCURRENCY of this shard's files in flight; the pool is shared
    # by the downloads of this process (a pool made per shard started 8 threads a
    # shard, which cost more than the requests of a small Zarr shard).
    for start in range(0, len(pending), FILE_CONCURRENCY):
        batch = [
            pool.submit(_with_retries, *job) for job in pending[start : start + FILE_CONCURRENCY]
        ]
        wait(batch)
        fetches += batch
        if any(f.exception() is not None for f in batch):
            break
    for fetch in fetches:
        fetch.result()


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _file_pool() -> ThreadPoolExecutor:
    """This process's pool for the files of directory shards (a forked child makes
    its own: the parent's threads do not exist in it)."""
    pid = os.getpid()
    with _POOLS_LOCK:
        pool = _POOLS.get(pid)
        if pool is None:
            _POOLS.clear()
            pool = _POOLS[pid] = ThreadPoolExecutor(4 * FILE_CONCURRENCY, "shardio-files")
        return pool


@contextlib.contextmanager
def _writing(local: str) -> Iterator[None]:
    """A failed write of ``local`` into the cache as a `CacheError` that says so."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _LOCAL_ERRNOS:
            raise
        raise CacheError(
            f"writing {local} into the cache failed: {exc.strerror or exc} (the "
            "cache_dir is full or read-only; free space or pass another cache_dir)"
        ) from exc


def _create(local: str) -> BinaryIO:
    """``local`` opened for writing, unbuffered: a fault of the cache's disk is raised by
    the write that met it (as a `CacheError`), not later by a flush."""
    with _writing(local):
        return open(local, "wb", buffering=0)


def _write_all(sink: BinaryIO, piece: bytes) -> int:
    """Write all of ``piece`` (an unbuffered write may take part of it); its length."""
    view = memoryview(piece)
    while view:
        view = view[sink.write(view) :]
    return len(piece)


def _getter(fs: Any, remote: str, url: str, local: str, nbytes: int) -> Any:
    """A download of the ``nbytes`` file at ``remote`` to ``local`` in pieces of
    `PIECE_BYTES`, `PIECES_AT_ONCE` requested together (a retry starts the file again).
    At most `PIECES_AT_ONCE` x `PIECE_BYTES` of it is held in memory."""

    def get() -> None:
        written = 0
        group = PIECE_BYTES * PIECES_AT_ONCE
        with _create(local) as sink:
            for first in range(0, nbytes, group):
                starts = list(range(first, min(nbytes, first + group), PIECE_BYTES))
                ends = [min(nbytes, start + PIECE_BYTES) for start in starts]
                # The server's errors (a refusal too) are left to _with_retries.
                pieces = fs.cat_ranges([remote] * len(starts), starts, ends, on_error="raise")
                with _writing(local):
                    for piece in pieces:
                        written += _write_all(sink, piece)
        if written != nbytes:
            raise RemoteReadError(
                f"reading {url} gave {written} of its {nbytes} bytes (the connection "
                "was cut, or the file changed on the server)"
            )

    return get
