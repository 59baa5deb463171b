"""DatasetReader: a torch-free reader over one file or a sharded dataset directory.

It resolves a path to its adapter, maps global indices onto shards and opens each
shard's reader on first use. `ShardedDataset` wraps it for
torch; conversion and verification use it directly without importing torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardio.core.errors import (
    InvalidOptionError,
    ShardCorruptError,
    ShardioError,
    TooManyOpenFilesError,
    UnsupportedFeatureError,
)
from shardio.core.index import ShardIndex
from shardio.core.perprocess import ForkSafeLock, PerProcess
from shardio.core.safeopen import check_descriptor_headroom, out_of_descriptors, too_many_open
from shardio.core.schema import Sample, Schema
from shardio.memory import (
    AccessPattern,
    MemoryGuard,
    MemoryPolicy,
    ReleaseKind,
    ReleaseResult,
    hint_ranges,
    readahead_supported,
)

from .adapters.base import Columns, ShardReader, concat_columns, is_run
from .adapters.registry import SHARDED, detect_format, get_backend, is_remote, reader_class
from .cache import NoRoom, ShardCache
from .generation import Generation, check_generation
from .integrity import ShardCheck, VerifyMode, check_mode
from .layout import MANIFEST_NAME, ShardFiles, shard_files_as_written
from .manifest import Manifest, ShardInfo
from .openlimit import RecentlyUsed, resolve_open_limit

__all__ = ["DatasetReader"]


@contextlib.contextmanager
def _as_corrupt(path: str) -> Iterator[None]:
    """Errors a backend library raises on damaged files become a ShardCorruptError
    naming the shard (ShardioErrors, memory errors and interrupts pass through)."""
    try:
        yield
    except (ShardioError, MemoryError):
        raise
    except Exception as exc:
        if out_of_descriptors(exc):  # not damage: say what to change
            raise too_many_open(path, exc) from exc
        raise ShardCorruptError(
            f"shard {path} cannot be read: {type(exc).__name__}: {exc}"
        ) from exc


_SMALL_SAMPLE = 32 * 1024
_WORST_FAULT_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class _ProcessBudget:
    """What one process may add by reading, and the backend options fitted to it."""

    max_rss: int
    options: dict[str, Any]


class DatasetReader:
    """Reads samples by global index from a dataset of one or more shards."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fields: Sequence[str] | None = None,
        format: str | None = None,
        storage_options: dict[str, Any] | None = None,
        verify_sizes: bool = True,
        max_rss: int | str | None = None,
        memory_policy: MemoryPolicy | None = None,
        max_open_shards: int | None = None,
        allow_external: bool = False,
        verify: VerifyMode = "off",
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
        **options: Any,
    ) -> None:
        self.path = os.fspath(path)
        self._cache: ShardCache | None = None
        self.allow_external = bool(allow_external)
        self.verify = check_mode(verify)
        self._checks: dict[int, ShardCheck] = {}
        self._generations: dict[str, Generation] = {}  # shard path -> as first opened
        self.fields = (
            None if fields is None else ([fields] if isinstance(fields, str) else list(fields))
        )
        self.verify_sizes = verify_sizes
        self.options = dict(options)
        if storage_options is not None:
            self.options["storage_options"] = storage_options
        self.memory_policy = MemoryPolicy.resolve(max_rss, memory_policy)
        self.guard = MemoryGuard(self.memory_policy, self.release_memory)
        self.readahead_bytes = 0
        # NOTE: threads of one process share this reader (shardio.Loader). The lock
        # guards bookkeeping only (open shards, their use counts, the memory guard),
        # never the reads themselves, which release the GIL.
        self._lock = ForkSafeLock()
        self._in_use: Counter[int] = Counter()
        self._close_when_unused: set[int] = set()
        fmt = format if format is not None else detect_format(self.path, storage_options)
        if fmt != SHARDED:
            fmt = get_backend(fmt).name  # validates the name, resolves an alias
        self.manifest: Manifest | None = None
        self._readers: dict[int, ShardReader[Any]] = {}
        resolve_open_limit(max_open_shards)  # checked now; sized below, from the schema
        self._budget: PerProcess[_ProcessBudget] = PerProcess()
        if fmt == SHARDED:
            if is_remote(self.path):
                self.manifest = Manifest.load_remote(self.path, storage_options)
            else:
                self.manifest = Manifest.load(self.path)
                if verify_sizes:  # verify() checks files itself, and reports instead
                    self.manifest.check_directory(self.path)
            self.format = self.manifest.format
            self._reader_class = reader_class(self.format, self.path)
            if cache_dir is not None and is_remote(self.path):
                self._cache = ShardCache(
                    self.path,
                    self.manifest,
                    cache_dir,
                    cache_limit,
                    frozenset(self._reader_class.transient_files),
                    storage_options,
                )
                self.options.pop("storage_options", None)  # shards are read locally
            self._check_remote()
            field_count = len(self.fields) if self.fields else len(self.manifest.schema)
            self._budget_shape = (len(self.manifest.shards), field_count)
            self.schema: Schema = self.manifest.schema.select(self.fields, where=self.path)
            self.shard_infos: tuple[ShardInfo, ...] = self.manifest.shards
            lengths = [s.num_samples for s in self.shard_infos]
        else:
            self.format = fmt
            self._reader_class = reader_class(fmt, self.path)
            if cache_dir is not None and is_remote(self.path):
                raise UnsupportedFeatureError(
                    f"cache_dir= serves the shards of a shardio dataset (a directory with "
                    f"{MANIFEST_NAME}), but {self.path} is a single {fmt} file or store; "
                    "convert it (shardio convert SRC s3://.../x.shardio), or read it without "
                    "cache_dir (hdf5 and zarr read remotely)"
                )
            self._check_remote()
            self._budget_shape = (1, len(self.fields) if self.fields else 4)
            reader = self._reader_class(self.path, fields=self.fields, **self.reader_options)
            self._check_generation(reader)
            self._readers[0] = reader
            with _as_corrupt(self.path):
                self.schema = reader.schema
                lengths = [len(reader)]
            self.shard_infos = (ShardInfo(self.path, lengths[0], self._local_nbytes(reader)),)
        self.index = ShardIndex(lengths)
        per_shard = self._reader_class.descriptors_per_shard(self.schema)
        if max_open_shards is None and self._cache is not None:  # open shards hold cache space
            max_open_shards = min(self._cache.open_shards(), resolve_open_limit(None, per_shard))
        self._recent = RecentlyUsed(resolve_open_limit(max_open_shards, per_shard))
        if self.verify != "off":
            self._check_verifiable()

    def _check_verifiable(self) -> None:
        if self.manifest is None or is_remote(self.path):
            raise InvalidOptionError(
                f"verify={self.verify!r} checks shards against the digests their writer "
                f"recorded, which {self.path} has none of: it needs a local dataset "
                "directory written by shardio (shardio convert makes one)"
            )
        recorded = "checksum" if self.verify == "open" else "blocks"
        missing = [s.path for s in self.shard_infos if getattr(s, recorded) is None]
        if missing:
            raise InvalidOptionError(
                f"verify={self.verify!r} needs the {recorded} of every shard, but "
                f"{self.path}'s manifest has none for {missing[:3]} (written with "
                "checksum=False, or by an older shardio); write it again, or use "
                + ("verify='off'" if self.verify == "open" else "verify='open'")
            )

    def _shard_check(self, number: int, reader: ShardReader[Any]) -> ShardCheck:
        check = self._checks.get(number)
        if check is None:
            info = self.shard_infos[number]
            assert info.checksum is not None
            files = shard_files_as_written(reader.path, info.nbytes, reader.transient_files)
            check = ShardCheck(reader.path, files.paths, info.checksum, info.blocks)
            self._checks[number] = check
        return check

    def _check_integrity(self, number: int, reader: ShardReader[Any], local: np.ndarray) -> None:
        """Raise before handing out values of a shard that is not as written."""
        check = self._shard_check(number, reader)
        if check.complete:
            return
        if self.verify == "open":
            check.check_whole()
        else:
            check.check_ranges(reader.value_ranges(local))

    def _check_remote(self) -> None:
        if is_remote(self.path) and self._cache is None and not self._reader_class.remote:
            raise UnsupportedFeatureError(
                f"the {self.format} backend reads local files only, but got {self.path}; "
                "pass cache_dir= (a local directory) to read its shards through the node "
                "cache, or convert it to zarr or hdf5 shards (see docs/cache.md)"
            )

    def _process_budget(self) -> _ProcessBudget | None:
        """This process's budget and the backend options fitted to it (None: no budget).

        A job-wide budget (``max_rss="auto"`` or ``"total:SIZE"``) is split between
        the main process and each DataLoader worker: a worker fits its caches and its
        read pieces to its own slot of the job, not to what the main process could
        hold reading alone."""
        policy = self.memory_policy
        if policy is None:
            return None
        return self._budget.get(lambda: self._fit_budget(policy))

    def _fit_budget(self, policy: MemoryPolicy) -> _ProcessBudget:
        budget = policy.max_rss
        if policy.job is not None and policy.job.limit is not None:
            worker = self.guard.worker_info() if self.guard.worker_info is not None else None
            budget = policy.job.provisional_share(workers=worker[1] if worker else 0)
        options = self._reader_class.budget_options(budget, *self._budget_shape)
        return _ProcessBudget(budget, options)

    @property
    def reader_options(self) -> dict[str, Any]:
        """The options shard readers of this process are made and opened with: the
        backend's budget options, then the options given (which win)."""
        budget = self._process_budget()
        options = {**(budget.options if budget else {}), **self.options}
        return {**options, "allow_external": True} if self.allow_external else options

    def _open_here(self, reader: ShardReader[Any]) -> None:
        """Open ``reader`` in this process (under the lock), with this process's
        budget options: a reader made in the main process is reopened in a worker."""
        if not reader.is_open:
            reader.backend_options.update(
                {k: v for k, v in self.reader_options.items() if k in reader.options}
            )
            self._check_generation(reader)
            reader.handle  # noqa: B018 - opened here, under the lock, not by racing threads
            try:
                check_descriptor_headroom(reader.path)
            except TooManyOpenFilesError:
                reader.close()
                raise
        reader.handle  # noqa: B018 - opened here, under the lock, not by racing threads

    def _check_generation(self, reader: ShardReader[Any]) -> None:
        """Before (re)opening ``reader``: refuse a shard that is not the generation
        this dataset first opened; with `verify=`, its blocks are checked again (those
        checked before were another handle's)."""
        if is_remote(reader.path):
            return
        if self._cache is not None:
            # NOTE: the node cache checked this file against the manifest's digests when
            # it fetched it (a rewritten dataset gets another cache key), so a shard
            # evicted and fetched again is a new file of the same generation: only the
            # blocks checked in the old file are checked again.
            self._forget_checks(reader.path)
            return
        transient = self._reader_class.transient_files
        first = self._generations.get(reader.path)
        if first is None:
            with _as_corrupt(reader.path):
                self._generations[reader.path] = Generation.of(reader.path, transient)
            return
        check_generation(reader.path, first, transient)
        self._forget_checks(reader.path)

    def _forget_checks(self, path: str) -> None:
        """Integrity checks made on an earlier handle of shard ``path`` do not vouch for
        the next one."""
        for number, check in list(self._checks.items()):
            if check.path == path:
                del self._checks[number]

    @staticmethod
    def _local_nbytes(reader: ShardReader[Any]) -> int:
        if is_remote(reader.path):
            return 0
        return sum(os.path.getsize(p) for p in reader.files() if os.path.exists(p))

    # --------------------------------------------------------------- structure
    def __len__(self) -> int:
        return len(self.index)

    @property
    def shard_lengths(self) -> tuple[int, ...]:
        return self.index.lengths

    @property
    def shard_nbytes(self) -> tuple[int, ...]:
        return tuple(s.nbytes for s in self.shard_infos)

    @property
    def shard_paths(self) -> list[str]:
        if self.manifest is None:
            return [self.path]
        return [self._shard_path(s) for s in self.shard_infos]

    @property
    def max_open_shards(self) -> int:
        """Most shards this reader keeps open in a process (a `Mix` lowers it to share
        one limit between its sources)."""
        return self._recent.limit

    @max_open_shards.setter
    def max_open_shards(self, value: int) -> None:
        self._recent.limit = resolve_open_limit(value)

    def _shard_path(self, info: ShardInfo) -> str:
        if is_remote(self.path):
            return f"{self.path.rstrip('/')}/{info.path}"
        return os.path.join(self.path, info.path)

    def shard(self, number: int) -> ShardReader[Any]:
        """The reader of shard ``number``, created (and checked) on first use.

        At most ``max_open_shards`` readers stay open in a process: using one more
        closes the least recently used (it reopens on its next use)."""
        with self._lock:
            self._use(number)
            return self._shard_reader(number)

    def _use(self, number: int) -> None:
        """Count a use of shard ``number``; close the least recently used one beyond the
        limit, or, while another thread reads it, as soon as that read is done."""
        evicted = self._recent.use(number)
        self._close_when_unused.discard(number)
        if evicted is None or evicted not in self._readers:
            return
        if self._in_use[evicted]:
            self._close_when_unused.add(evicted)
        else:
            self._readers[evicted].close()

    @contextlib.contextmanager
    def _reading(self, number: int, local: np.ndarray) -> Iterator[ShardReader[Any]]:
        """Shard ``number``'s reader, open and marked in use (never closed by another
        thread) while the caller reads ``local`` from it."""
        with self._lock:
            self._use(number)
            reader = self._shard_reader(number)
            if self._cache is not None and not reader.is_open:
                self._cache_shard(number)  # it may have been evicted since it closed
            self._open_here(reader)
            if len(local) > 1:
                reader.hint_access(self._access_pattern(local))
            self._in_use[number] += 1
        try:
            yield reader
        finally:
            with self._lock:
                self._in_use[number] -= 1
                if not self._in_use[number]:
                    del self._in_use[number]
                    if number in self._close_when_unused:
                        self._close_when_unused.discard(number)
                        reader.close()

    def _after_read(self, nbytes: int) -> None:
        with self._lock:
            self.guard.after_read(nbytes)

    def _shard_reader(self, number: int) -> ShardReader[Any]:
        """The reader of shard ``number``, created and checked on first use, without
        counting as a use (see `shard`)."""
        reader = self._readers.get(number)
        if reader is None:
            info = self.shard_infos[number]
            path = self._shard_path(info) if self._cache is None else self._cache_shard(number)
            if (
                self._cache is None
                and not is_remote(path)
                and (self.verify_sizes or not self.allow_external)
            ):
                files = self._scan(path, info)  # one listing serves both checks
                self._check_contained(path, files.links)
                if self.verify_sizes and files.nbytes != info.nbytes:
                    raise ShardCorruptError(
                        f"shard {path} has {files.nbytes} bytes, but the manifest says "
                        f"{info.nbytes} (truncated or modified since it was written)"
                    )
            reader = self._reader_class(path, fields=self.fields, **self.reader_options)
            self._check_generation(reader)  # the first open records it
            with _as_corrupt(path):
                length, schema = len(reader), reader.schema
            try:
                check_descriptor_headroom(path)
            except TooManyOpenFilesError:
                reader.close()
                raise
            if length != info.num_samples:
                raise ShardCorruptError(
                    f"shard {path} holds {length} samples, but the manifest says {info.num_samples}"
                )
            if schema != self.schema:
                raise ShardCorruptError(
                    f"shard {path} has fields {list(reader.schema.names)} that differ from the "
                    f"manifest's {list(self.schema.names)}"
                )
            self._readers[number] = reader
        return reader

    def _cache_shard(self, number: int) -> str:
        """Shard ``number`` in the node cache (downloaded, checked and leased), the
        leases of this process's closed shards given back (see shardio.storage.cache)."""
        assert self._cache is not None
        try:
            return self._cache.acquire(number, self._open_shards(), wait=False)
        except NoRoom:  # close the shards open here but not read now, then wait for room
            for other, reader in self._readers.items():
                if other != number and reader.is_open and not self._in_use[other]:
                    reader.close()
            return self._cache.acquire(number, self._open_shards())

    def _open_shards(self) -> set[int]:
        return {n for n, r in self._readers.items() if r.is_open}

    @property
    def transient_files(self) -> frozenset[str]:
        """File names the backend's library may add to a shard after it was written."""
        return frozenset(self._reader_class.transient_files)

    def _scan(self, path: str, info: ShardInfo) -> ShardFiles:
        # NOTE: sizes are checked before any mapping: reading an mmap past the end of a
        # truncated file kills the process with SIGBUS instead of raising.
        if not os.path.lexists(path):
            raise ShardCorruptError(f"shard {path} listed in the manifest is missing")
        try:
            return shard_files_as_written(path, info.nbytes, self._reader_class.transient_files)
        except ShardioError:  # a special file, named as such
            raise
        except OSError as exc:
            if out_of_descriptors(exc):
                raise too_many_open(path, exc) from exc
            raise ShardCorruptError(f"cannot read shard {path}: {exc}") from exc

    def _check_contained(self, path: str, links: list[str]) -> None:
        """Refuse a shard that is, or holds, a link to a file outside the dataset
        directory (unless ``allow_external=True``): a dataset reads its own files only."""
        if self.allow_external:
            return
        root = os.path.realpath(self.path)
        for candidate in [path, *links]:
            target = os.path.realpath(candidate)
            if os.path.commonpath([root, target]) != root:
                raise ShardCorruptError(
                    f"shard {path}: {candidate} leads to {target}, outside the dataset "
                    f"directory {self.path}; pass allow_external=True to read it anyway"
                )

    # ----------------------------------------------------------------- reading
    def read(self, index: int) -> Sample:
        shard, local = self.index.locate(index)
        at = np.array([local], dtype=np.int64)
        with self._reading(shard, at) as reader:
            before = reader.bytes_read
            with _as_corrupt(reader.path):
                if self.verify != "off":
                    self._check_integrity(shard, reader, at)
                sample = reader.read(local)
            nbytes = reader.bytes_read - before
        if self.memory_policy is not None:
            self._after_read(nbytes)
        return sample

    def read_many(
        self, indices: Sequence[int] | np.ndarray, out: Mapping[str, np.ndarray] | None = None
    ) -> Columns:
        """Samples at global ``indices`` as columns, in the order given.

        ``out`` maps fixed fields to arrays of ``len(indices)`` rows (the field's dtype
        and shape) that those fields are read into, and returned as, where the caller
        owns the memory (shared memory in a DataLoader worker)."""
        shards, local = self.index.locate_many(indices)
        count = len(local)
        out = {} if out is None else out
        if count == 0:
            return {**self._empty_columns(), **out}
        first = int(shards[0])
        unchecked = [0]  # bytes read by map-free readers, checked once per call below
        if (shards == first).all():
            columns = self._read_shard(first, local, out, unchecked)
        else:
            columns = self._gather_shards(shards, local, out, unchecked)
        if unchecked[0]:
            # Readers that map no pages are checked once per call, not once per shard:
            # a batch spread over many shards would otherwise read /proc per shard.
            self._after_read(unchecked[0])
        return columns

    def _read_shard(
        self,
        number: int,
        local: np.ndarray,
        out: Mapping[str, np.ndarray],
        unchecked: list[int],
    ) -> Columns:
        with self._reading(number, local) as reader, _as_corrupt(reader.path):
            if self.verify != "off":
                self._check_integrity(number, reader, local)
            return self._read_open_shard(reader, local, out, unchecked)

    def _read_open_shard(
        self,
        reader: ShardReader[Any],
        local: np.ndarray,
        out: Mapping[str, np.ndarray],
        unchecked: list[int],
    ) -> Columns:
        def read(indices: np.ndarray, target: Mapping[str, np.ndarray]) -> Columns:
            return reader.read_into(indices, target) if target else reader.read_many(indices)

        if self.memory_policy is None:
            return read(local, out)
        if not reader.touches_mapped_pages:
            before = reader.bytes_read
            columns = read(local, out)
            unchecked[0] += reader.bytes_read - before
            return columns
        # NOTE: one touched page can map a whole large folio (up to 2 MiB) of the page
        # cache, so a batch is read in pieces with an RSS check between them.
        budget = self._process_budget()
        assert budget is not None  # a memory policy is set
        step = max(4, budget.max_rss // (4 * _WORST_FAULT_BYTES))
        parts = []
        for start in range(0, len(local), step):
            piece = {name: target[start : start + step] for name, target in out.items()}
            before = reader.bytes_read
            parts.append(read(local[start : start + step], piece))
            self._after_read(reader.bytes_read - before)
        if len(parts) == 1:
            return parts[0]
        columns = concat_columns(parts)
        columns.update(out)  # the pieces were read into views of ``out``
        return columns

    def _access_pattern(self, local: np.ndarray) -> AccessPattern:
        access = self.memory_policy.access if self.memory_policy is not None else "auto"
        if access != "auto":
            return access
        if is_run(local):
            return "sequential"
        return self._random_pattern

    @functools.cached_property
    def _random_pattern(self) -> AccessPattern:
        # Random reads of small samples waste readahead; large ones need it, since
        # readahead turns many page faults into one I/O.
        sample_bytes = self.schema.fixed_sample_nbytes or _SMALL_SAMPLE
        return "random" if sample_bytes < _SMALL_SAMPLE else "normal"

    def _gather_shards(
        self,
        shards: np.ndarray,
        local: np.ndarray,
        out: Mapping[str, np.ndarray],
        unchecked: list[int],
    ) -> Columns:
        count = len(local)
        order = np.argsort(shards, kind="stable")
        boundaries = np.flatnonzero(np.diff(shards[order])) + 1
        columns: Columns = dict(out)
        for positions in np.split(order, boundaries):
            part = self._read_shard(int(shards[positions[0]]), local[positions], {}, unchecked)
            for name, column in part.items():
                if name not in columns:
                    columns[name] = (
                        np.empty((count, *column.shape[1:]), dtype=column.dtype)
                        if isinstance(column, np.ndarray)
                        else [None] * count
                    )
                target = columns[name]
                if isinstance(target, np.ndarray):
                    target[positions] = column
                else:
                    for position, value in zip(positions.tolist(), column, strict=True):
                        target[position] = value
        return columns

    def _empty_columns(self) -> Columns:
        return {
            f.name: [] if f.variable else np.empty((0, *f.shape), dtype=f.dtype)
            for f in self.schema
        }

    def readahead(self, start: int, stop: int) -> int:
        """Ask the OS to start reading samples ``[start, stop)`` into the page cache.

        A hint that returns at once, for a caller that knows what is read next (the
        ``shard-window`` order of `ShardSampler`). The page cache is
        shared, so a hint given here also serves DataLoader workers; the pages it
        brings in count in no process's RSS. A shard this process has not opened is
        opened to learn where its samples lie and closed again. Returns the bytes
        hinted: 0 for remote data, on platforms without ``posix_fadvise``, and for
        backends that cannot tell where samples lie (see ``ShardReader.byte_ranges``).
        """
        start, stop = max(0, int(start)), min(int(stop), len(self))
        if self._cache is not None and stop > start:  # download ahead instead
            first, last = self.index.locate(start)[0], self.index.locate(stop - 1)[0]
            self._cache.prefetch(list(range(first, last + 1)))
            return 0
        if stop <= start or is_remote(self.path) or not readahead_supported():
            return 0
        starts = self.index.starts
        first = int(np.searchsorted(starts, start, side="right")) - 1
        last = int(np.searchsorted(starts, stop - 1, side="right")) - 1
        hinted = 0
        for number in range(first, last + 1):
            offset = int(starts[number])
            lo, hi = max(start, offset) - offset, min(stop, int(starts[number + 1])) - offset
            if hi <= lo:
                continue
            with self._lock:
                known = self._readers.get(number)
                was_open = known is not None and known.is_open
                reader = self._shard_reader(number)  # a hint is not a use: nothing is evicted
                if not was_open:
                    self._in_use[number] += 1  # no other thread closes it meanwhile
                self._open_here(reader)
            try:
                hinted += hint_ranges(reader.byte_ranges(lo, hi))
            finally:
                if not was_open:
                    with self._lock:
                        self._in_use[number] -= 1
                        if not self._in_use[number]:
                            del self._in_use[number]
                            reader.close()  # this process may only hint: hold no handles
        self.readahead_bytes += hinted
        return hinted

    # ------------------------------------------------------------------ memory
    @property
    def open_readers(self) -> list[ShardReader[Any]]:
        return [r for r in self._readers.values() if r.is_open]

    def release_memory(self, kind: ReleaseKind = "advise") -> ReleaseResult:
        """Ask every open shard reader to release what reading made resident.

        A reader another thread is reading from is only advised, never closed: its
        next release (or reopen) comes with a later check."""
        total = ReleaseResult()
        for number, reader in list(self._readers.items()):
            if not reader.is_open:
                continue
            if self._in_use[number] and not (kind == "advise" and reader.maps_files):
                continue
            total += reader.release_memory(kind)
        return total

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self._readers.values())

    def memory_stats(self) -> dict[str, Any]:
        """RSS of this process (total, file-backed, anonymous), its growth over the
        baseline, bytes read, and the advise calls and reopens the budget made."""
        stats = self.guard.stats().as_dict()
        stats["bytes_read"] = self.bytes_read
        stats["readahead_bytes"] = self.readahead_bytes
        if self._cache is not None:
            stats["cache"] = self._cache.stats()
        return stats

    # ------------------------------------------------------------------- close
    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
