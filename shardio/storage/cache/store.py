"""The cache directory: complete shards, downloads in progress, leases and eviction.

One directory per node, shared by every process naming it, coordinated by file
locks only (flock dies with its process, so a kill -9 leaves nothing held)::

    CACHE_DIR/.lock                     global lock: space is reserved and freed under it
    CACHE_DIR/.readers/<pid>.<id>.<nbytes>  shared flock while a process reads through the
                                        cache; <nbytes> is the largest shard it may hold
    CACHE_DIR/<key>/source.json         the dataset URL this key caches (for listings)
    CACHE_DIR/<key>/data/<shard>        complete shards, read as local shards
    CACHE_DIR/<key>/tmp/<shard>.<nbytes>.<pid>/   a download in progress ("reserved")
    CACHE_DIR/<key>/trash/<shard>.<nbytes>.<pid>.<id>  an evicted shard being removed
    CACHE_DIR/<key>/locks/<shard>.fetch one download per shard (flock)
    CACHE_DIR/<key>/locks/<shard>.lease shared flock while a reader has the shard open;
                                        its mtime is the shard's last use (LRU)

A key is one version of one dataset (its URL and manifest digest), so a dataset
rewritten at the same URL gets a new key and is never served stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

from shardio.core.errors import CacheError
from shardio.core.perprocess import process_alive

__all__ = ["CacheEntry", "CacheStore", "FileMutex", "Lease", "ReaderMark", "remove_tree"]

_MARKER = ".shardio-cache"


def _tree_nbytes(path: str) -> int:
    """Bytes of the files under ``path`` (a file or a directory)."""
    try:
        if not os.path.isdir(path):
            return os.lstat(path).st_size
    except FileNotFoundError:
        return 0
    total = 0
    for directory, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _owner_alive(name: str) -> bool:
    """True while the process named in trash entry ``name`` (``<shard>.<nbytes>.<pid>
    .<id>``) runs; an entry of the older form (no bytes in it) has none."""
    try:
        pid = int(name.rsplit(".", 3)[2])
    except (ValueError, IndexError):
        return False
    return process_alive(pid)


def remove_tree(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@dataclass(frozen=True)
class CacheEntry:
    """One complete shard in the cache."""

    key: str
    name: str
    nbytes: int
    last_used: float
    in_use: bool


class FileMutex:
    """An exclusive flock on a lock file, across processes and threads (each holder
    opens its own descriptor), which dies with its process.

    NOTE: waiting blocks in flock(2) itself (the GIL released), so a waiter takes
    the lock as soon as it is free. filelock's `FileLock` polls every 50 ms instead:
    a download ahead, a reader and the cache's bookkeeping contending for the cache's
    global lock each waited a poll or more per reservation, which made a cold epoch
    of many small shards (Zarr's directories) several times slower than the link."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for it unless ``blocking`` is False); True when held."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            # LOCK_UN first: a forked child's copy of the descriptor must not keep it.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FileMutex:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Lease:
    """A shared flock on a shard's lease file: while held, no process evicts the shard."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH)
            os.utime(self.fd)  # last use, for LRU eviction
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            # NOTE: the shard was used until now: without this, a shard read for a
            # long time kept the time it was opened and was evicted first once closed,
            # often just before the next block of the order needed it again.
            with contextlib.suppress(OSError):
                os.utime(self.fd)
            os.close(self.fd)  # releases the flock (with this process's last copy)
            self.fd = -1


class ReaderMark:
    """A reading process's mark in the cache: a shared flock on its own file, which
    dies with the process; its name carries the dataset's cache key and the largest
    shard the reader may hold."""

    def __init__(self, directory: str, nbytes: int, key: str = "") -> None:
        os.makedirs(directory, exist_ok=True)
        while True:
            name = f"{os.getpid()}.{os.urandom(4).hex()}.{key or '-'}.{int(nbytes)}"
            self.path = os.path.join(directory, name)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_SH)
            # A sweep may have removed the file between its creation and the flock.
            if os.path.exists(self.path):
                return
            os.close(self.fd)

    def close(self, remove: bool = True) -> None:
        """Give the mark up (``remove=False`` in a forked child: the parent's file)."""
        if self.fd >= 0:
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
            os.close(self.fd)
            self.fd = -1


class CacheStore:
    """A cache directory holding at most ``limit`` bytes of shards."""

    def __init__(self, directory: str, limit: int) -> None:
        self.directory = os.path.abspath(directory)
        self.limit = int(limit)
        try:
            os.makedirs(self.directory, exist_ok=True)
            marker = os.path.join(self.directory, _MARKER)
            if not os.path.exists(marker):
                with open(marker, "w") as handle:
                    handle.write("shardio shard cache: see `shardio cache --help`\n")
        except OSError as exc:
            raise CacheError(
                f"cache_dir {self.directory} cannot be used: {exc.strerror or exc} "
                "(it must be a writable local directory)"
            ) from exc
        self._global = os.path.join(self.directory, ".lock")
        # Bytes of complete directory shards by (path, inode, ctime): a complete shard
        # never changes (a new download is a new inode), and walking every directory
        # shard under the global lock at each reservation held it for tens of ms.
        self._sizes: dict[str, tuple[int, int, int]] = {}

    def _shard_nbytes(self, path: str) -> int:
        """Bytes of the complete shard at ``path`` (0 when it is gone)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return 0
        if not os.path.isdir(path):
            return st.st_size
        known = self._sizes.get(path)
        if known is not None and known[:2] == (st.st_ino, st.st_ctime_ns):
            return known[2]
        nbytes = _tree_nbytes(path)
        self._sizes[path] = (st.st_ino, st.st_ctime_ns, nbytes)
        return nbytes

    @classmethod
    def existing(cls, directory: str) -> CacheStore:
        """The cache at ``directory``, which must exist and be a shardio cache (so that
        clearing it never removes anything else)."""
        if not os.path.isfile(os.path.join(directory, _MARKER)):
            raise CacheError(
                f"{directory} is not a shardio cache directory (it has no {_MARKER} file); "
                "name the cache_dir a dataset was read with"
            )
        return cls(directory, 0)

    # ------------------------------------------------------------------ paths
    def key_dir(self, key: str) -> str:
        return os.path.join(self.directory, key)

    def data_path(self, key: str, name: str) -> str:
        return os.path.join(self.directory, key, "data", name)

    def _lock_path(self, key: str, name: str, kind: str) -> str:
        return os.path.join(self.directory, key, "locks", f"{name}.{kind}")

    def prepare_key(self, key: str, source: str) -> None:
        """Make ``key``'s directories and record which dataset it caches."""
        root = self.key_dir(key)
        try:
            for sub in ("data", "tmp", "trash", "locks"):
                os.makedirs(os.path.join(root, sub), exist_ok=True)
            info = os.path.join(root, "source.json")
            if not os.path.exists(info):
                partial = f"{info}.{os.getpid()}"
                with open(partial, "w") as handle:
                    json.dump({"source": source}, handle)
                os.replace(partial, info)
        except OSError as exc:
            raise CacheError(
                f"cache_dir {self.directory} cannot be written: {exc.strerror or exc} "
                "(it must be a writable local directory; pass another cache_dir)"
            ) from exc

    # ----------------------------------------------------------------- locks
    def fetch_lock(self, key: str, name: str) -> FileMutex:
        """The lock one download of shard ``name`` holds (across processes and threads)."""
        return FileMutex(self._lock_path(key, name, "fetch"))

    def lease(self, key: str, name: str) -> Lease:
        return Lease(self._lock_path(key, name, "lease"))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The global lock, under which space is counted, reserved and freed (held for
        local file operations only, never across a network request)."""
        with FileMutex(self._global):
            yield

    # --------------------------------------------------------------- readers
    def mark_reader(self, nbytes: int, key: str = "") -> ReaderMark:
        """Mark this process as reading dataset ``key`` through the cache, holding
        shards of up to ``nbytes`` (see `readers`)."""
        try:
            return ReaderMark(os.path.join(self.directory, ".readers"), nbytes, key)
        except OSError as exc:
            raise CacheError(
                f"cache_dir {self.directory} cannot be written: {exc.strerror or exc} "
                "(it must be a writable local directory; pass another cache_dir)"
            ) from exc

    def readers(self) -> list[int]:
        """Per live reader (process and dataset) marked in the cache, the largest shard
        it may hold; the marks of dead processes are removed."""
        return [nbytes for _, nbytes in self.reader_marks()]

    def reader_marks(self) -> list[tuple[str, int]]:
        """Per live reader marked in the cache, its dataset's key ("" when unnamed) and
        the largest shard it may hold; the marks of dead processes are removed."""
        directory = os.path.join(self.directory, ".readers")
        found = []
        for name in self._listdir(".readers"):
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process holds it: alive
                with contextlib.suppress(ValueError, IndexError):
                    parts = name.split(".")
                    key = parts[2] if len(parts) == 4 and parts[2] != "-" else ""
                    found.append((key, int(parts[-1])))
            else:  # nobody holds it: its process died
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            finally:
                os.close(fd)
        return found

    # ----------------------------------------------------------------- space
    def _keys(self) -> list[str]:
        try:
            return sorted(
                e.name for e in os.scandir(self.directory) if e.is_dir() and e.name[0] != "."
            )
        except FileNotFoundError:
            return []

    def _listdir(self, *parts: str) -> list[str]:
        try:
            return sorted(os.listdir(os.path.join(self.directory, *parts)))
        except FileNotFoundError:
            return []

    def _live(self, key: str, name: str) -> bool:
        """True while some process holds shard ``name``'s download lock."""
        lock = self.fetch_lock(key, name)
        if not lock.acquire(blocking=False):
            return True
        lock.release()
        return False

    def sweep(self) -> None:
        """Remove what dead processes left: evictions half done and downloads whose
        process no longer holds their lock. Call under `locked`."""
        for key in self._keys():
            for name in self._listdir(key, "trash"):
                if not _owner_alive(name):  # its evicting process removes it itself
                    remove_tree(os.path.join(self.directory, key, "trash", name))
            for name in self._listdir(key, "tmp"):
                shard = name.rsplit(".", 2)[0]
                if not self._live(key, shard):
                    remove_tree(os.path.join(self.directory, key, "tmp", name))

    def mark_ahead(self, key: str, name: str) -> None:
        """Mark shard ``name`` downloaded ahead and not read yet: evicted last."""
        with open(self._lock_path(key, name, "ahead"), "w"):
            pass
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._lock_path(key, name, "lease"))  # recently used: evicted late

    def clear_ahead(self, key: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._lock_path(key, name, "ahead"))

    def ahead(self, key: str) -> set[str]:
        """Shards of ``key`` downloaded ahead and not read yet."""
        return {
            n.removesuffix(".ahead")
            for n in self._listdir(key, "locks")
            if n.endswith(".ahead")
            and os.path.exists(self.data_path(key, n.removesuffix(".ahead")))
        }

    def remove_partial(self, key: str, name: str) -> None:
        """Remove downloads of ``name`` left by dead processes; call holding its
        download lock (so none of them is live)."""
        for entry in self._listdir(key, "tmp"):
            if entry.rsplit(".", 2)[0] == name:
                remove_tree(os.path.join(self.directory, key, "tmp", entry))

    def used(self) -> int:
        """Bytes of complete shards plus the bytes reserved by downloads in progress."""
        total = 0
        for key in self._keys():
            # NOTE: reservations are listed before complete shards. A download moves
            # its shard from its reservation into data/ (`complete`); listed the
            # other way round, a shard completed between the two listings was in
            # neither, and the cache went one shard over its limit (Zarr's directory
            # shards made the listing of data/ slow enough to hit it).
            for name in self._listdir(key, "tmp"):
                with contextlib.suppress(ValueError, IndexError):
                    total += int(name.rsplit(".", 2)[1])
            for name in self._listdir(key, "data"):
                total += self._shard_nbytes(os.path.join(self.directory, key, "data", name))
            for name in self._listdir(key, "trash"):
                try:
                    total += int(name.rsplit(".", 3)[1])
                except (ValueError, IndexError):
                    total += _tree_nbytes(os.path.join(self.directory, key, "trash", name))
        return total

    def disk_bytes(self) -> int:
        """Bytes of every file the cache holds now (complete, partial and evicting)."""
        return sum(
            _tree_nbytes(os.path.join(self.directory, key, sub))
            for key in self._keys()
            for sub in ("data", "tmp", "trash")
        )

    def entries(self) -> list[CacheEntry]:
        """Complete shards, least recently used first."""
        found = []
        for key in self._keys():
            for name in self._listdir(key, "data"):
                lease = self._lock_path(key, name, "lease")
                try:
                    last = os.stat(lease).st_mtime
                except FileNotFoundError:
                    last = 0.0
                nbytes = self._shard_nbytes(os.path.join(self.directory, key, "data", name))
                found.append(CacheEntry(key, name, nbytes, last, self._in_use(key, name)))
        return sorted(found, key=lambda e: e.last_used)

    def _in_use(self, key: str, name: str) -> bool:
        path = self._lock_path(key, name, "lease")
        if not os.path.exists(path):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def evict(self, entry: CacheEntry) -> str | None:
        """Move ``entry`` to the trash unless a reader holds it; call under `locked`,
        then `remove_tree` what it returns (the trash path; None: not evicted) after
        the lock is given back.

        NOTE: removing a Zarr shard (a tree of directories) under the global lock
        held every other reservation for tens of ms per eviction; the rename is one
        call, and the trash counts as used (its bytes are in its name) until removed."""
        path = self._lock_path(entry.key, entry.name, "lease")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            source = self.data_path(entry.key, entry.name)
            label = f"{entry.name}.{entry.nbytes}.{os.getpid()}.{os.urandom(4).hex()}"
            trash = os.path.join(self.key_dir(entry.key), "trash", label)
            try:
                os.rename(source, trash)
            except FileNotFoundError:
                return None
            self._sizes.pop(source, None)
            self.clear_ahead(entry.key, entry.name)
            return trash
        finally:
            os.close(fd)

    def reserve(self, key: str, name: str, nbytes: int) -> tuple[str | None, int, list[str]]:
        """A download directory for ``nbytes`` of shard ``name``, made after evicting
        unused shards (least recently used first) until it fits; call under
        `locked`. Returns it (None when it does not fit), the bytes in use and the
        trash of the shards evicted (`remove_tree` each once the lock is given back,
        before the download writes)."""
        self.sweep()
        used = self.used()
        evicted: list[str] = []
        if used + nbytes > self.limit:
            ahead = {(k, n) for k in self._keys() for n in self.ahead(k)}
            entries = self.entries()  # least recently used first; read ones before ahead ones
            entries.sort(key=lambda e: (e.key, e.name) in ahead)
            for entry in entries:
                if entry.in_use or (entry.key == key and entry.name == name):
                    continue
                trash = self.evict(entry)
                if trash is not None:
                    used -= entry.nbytes
                    evicted.append(trash)
                    if used + nbytes <= self.limit:
                        break
        if used + nbytes > self.limit:
            return None, used, evicted
        path = os.path.join(self.key_dir(key), "tmp", f"{name}.{nbytes}.{os.getpid()}")
        os.makedirs(path)
        return path, used, evicted

    def complete(self, reserved: str, downloaded: str, path: str) -> None:
        """Move the ``downloaded`` shard into place at ``path`` and give its
        ``reserved`` directory up, under the global lock: the bytes are counted as a
        reservation or as a complete shard, never as neither or both."""
        with self.locked():
            try:
                os.rename(downloaded, path)
            finally:
                remove_tree(reserved)

    def clear(self, key: str | None = None) -> tuple[int, int]:
        """Remove unused complete shards (of ``key``, or all); returns (removed, kept)."""
        removed: list[str] = []
        kept = 0
        with self.locked():
            self.sweep()
            for entry in self.entries():
                if key is not None and entry.key != key:
                    continue
                trash = self.evict(entry)
                if trash is not None:
                    removed.append(trash)
                else:
                    kept += 1
        for trash in removed:
            remove_tree(trash)
        return len(removed), kept

    def source(self, key: str) -> str:
        try:
            with open(os.path.join(self.key_dir(key), "source.json")) as handle:
                return str(json.load(handle).get("source", "?"))
        except (OSError, ValueError):
            return "?"
