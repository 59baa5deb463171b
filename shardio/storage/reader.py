"""DatasetReader: a torch-free reader over one file or a sharded dataset directory.

It owns the dataset's shards: the manifest (or the one file), the index from global
sample numbers to (shard, local index), and the open shard readers (`OpenShards`).
`read_many(indices, out)` groups a batch by shard and calls each shard reader's
`read_into`; the memory budget (`ReadBudget`) and the integrity checks
(`ShardChecks`) each wrap that call, and nothing below calls back up.
`ShardedDataset` wraps it for torch; conversion and verification use it directly
without importing torch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from shardio.core.errors import (
    ShardCorruptError,
    ShardioError,
    TooManyOpenFilesError,
    UnsupportedFeatureError,
)
from shardio.core.index import ShardIndex
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
from shardio.memory.jobbudget import WorkerInfo

from .adapters.base import Columns, ShardReader, is_run
from .adapters.registry import SHARDED, detect_format, get_backend, is_remote, reader_class
from .budget import ReadBudget
from .cache import NoRoom, ShardCache
from .integrity import ShardChecks, VerifyMode, check_mode
from .layout import MANIFEST_NAME, ShardFiles, shard_files_as_written
from .manifest import Manifest, ShardInfo
from .openlimit import resolve_open_limit
from .openshards import OpenShards, ProcessShards

__all__ = ["DatasetReader"]


def _as_corrupt(path: str, exc: Exception) -> ShardioError:
    """The error to raise for ``exc``, raised by a backend library reading shard
    ``path`` (not a ShardioError): damage becomes a ShardCorruptError naming the
    shard; running out of file descriptors says what to change."""
    if out_of_descriptors(exc):  # not damage: say what to change
        return too_many_open(path, exc)
    return ShardCorruptError(f"shard {path} cannot be read: {type(exc).__name__}: {exc}")


class _BackendErrors:
    """``with _BackendErrors(path):`` raises what a backend library raised reading shard
    ``path`` as `_as_corrupt` says; shardio's own errors and MemoryError pass as they are.

    A class, not a generator: it is entered once per shard of every batch."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, (ShardioError, MemoryError)):
            raise _as_corrupt(self.path, exc) from exc


_SMALL_SAMPLE = 32 * 1024


class DatasetReader:
    """Reads samples by global index from a dataset of one or more shards.

    ``worker_info`` tells a DataLoader worker's ``(id, num_workers)`` (None in the
    main process); it is asked once per process, and splits a job-wide ``max_rss``."""

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
        worker_info: Callable[[], WorkerInfo | None] | None = None,
        **options: Any,
    ) -> None:
        self.path = os.fspath(path)
        self._cache: ShardCache | None = None
        self.allow_external = bool(allow_external)
        self.verify = check_mode(verify)
        self.fields = (
            None if fields is None else ([fields] if isinstance(fields, str) else list(fields))
        )
        self.verify_sizes = verify_sizes
        self.options = dict(options)
        if storage_options is not None:
            self.options["storage_options"] = storage_options
        self.memory_policy = MemoryPolicy.resolve(max_rss, memory_policy)
        self.guard = MemoryGuard(self.memory_policy, worker_info)
        self.readahead_bytes = 0
        fmt = format if format is not None else detect_format(self.path, storage_options)
        if fmt != SHARDED:
            fmt = get_backend(fmt).name  # validates the name, resolves an alias
        self.manifest: Manifest | None = None
        # Checked now; sized below, from the schema.
        self._shards = OpenShards(resolve_open_limit(max_open_shards))
        self._lock = self._shards.lock
        self._budget: ReadBudget | None = None
        self._checked: set[int] = set()  # shards checked against the manifest
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
            self._make_budget((len(self.manifest.shards), field_count))
            self.schema: Schema = self.manifest.schema.select(self.fields, where=self.path)
            self.shard_infos: tuple[ShardInfo, ...] = self.manifest.shards
            self._checks = self._make_checks()
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
            self._make_budget((1, len(self.fields) if self.fields else 4))
            self.shard_infos = ()
            self._checks = self._make_checks()
            reader = self._reader_class(self.path, fields=self.fields, **self.reader_options)
            self._before_open(reader)
            self._shards.readers[0] = reader
            self._checked.add(0)
            with _BackendErrors(self.path):
                self.schema = reader.schema
                lengths = [len(reader)]
            self.shard_infos = (ShardInfo(self.path, lengths[0], self._local_nbytes(reader)),)
        self.index = ShardIndex(lengths)
        self._reader_class.check_options(self.options, self.path)  # now, not at first read
        per_shard = self._reader_class.descriptors_per_shard(self.schema)
        # With a cache and no max_open_shards, the open limit follows the cache's
        # readers (ShardCache.open_shards), capped by the descriptors' limit.
        self._open_cap: int | None = None
        if max_open_shards is None and self._cache is not None:  # open shards hold cache space
            self._open_cap = resolve_open_limit(None, per_shard)
            max_open_shards = min(self._cache.open_shards(), self._open_cap)
        self._shards.recent.limit = resolve_open_limit(max_open_shards, per_shard)
        self._checks.check_verifiable(
            self.path, self.manifest is not None and not is_remote(self.path)
        )

    def share_budget(self, policy: MemoryPolicy, guard: MemoryGuard) -> None:
        """Read under ``policy``, reporting reads to ``guard``: a budget shared with
        other readers (a `Mix`'s sources), given before the first read."""
        self.memory_policy, self.guard = policy, guard
        self._make_budget(self._budget_shape)

    def _make_budget(self, shape: tuple[int, int]) -> None:
        self._budget_shape = shape
        if self.memory_policy is not None:
            self._budget = ReadBudget(
                self.memory_policy, self.guard, self._shards, self._reader_class, shape
            )

    def _make_checks(self) -> ShardChecks:
        return ShardChecks(
            self.verify,
            self.shard_infos,
            self._reader_class.transient_files,
            cached=self._cache is not None,
        )

    def _check_remote(self) -> None:
        if is_remote(self.path) and self._cache is None and not self._reader_class.remote:
            raise UnsupportedFeatureError(
                f"the {self.format} backend reads local files only, but got {self.path}; "
                "pass cache_dir= (a local directory) to read its shards through the node "
                "cache, or convert it to zarr or hdf5 shards (see docs/cache.md)"
            )

    @property
    def reader_options(self) -> dict[str, Any]:
        """The options shard readers of this process are made and opened with: the
        backend's budget options, then the options given (which win)."""
        fitted = self._budget.here.options if self._budget is not None else {}
        options = {**fitted, **self.options}
        return {**options, "allow_external": True} if self.allow_external else options

    def _before_open(self, reader: ShardReader[Any]) -> None:
        with _BackendErrors(reader.path):
            self._checks.before_open(reader.path)

    def _open_here(self, reader: ShardReader[Any]) -> None:
        """Open ``reader`` (made in this process, with its options) under the lock."""
        if reader.is_open:
            return
        self._before_open(reader)
        reader.handle  # noqa: B018 - opened here, under the lock, not by racing threads
        try:
            check_descriptor_headroom(reader.path)
        except TooManyOpenFilesError:
            reader.close()
            raise

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
        return self._shards.recent.limit

    @max_open_shards.setter
    def max_open_shards(self, value: int) -> None:
        self._open_cap = None  # set: no longer the cache's readers' share
        self._shards.recent.limit = resolve_open_limit(value)

    def _shard_path(self, info: ShardInfo) -> str:
        if is_remote(self.path):
            return f"{self.path.rstrip('/')}/{info.path}"
        return os.path.join(self.path, info.path)

    def shard(self, number: int) -> ShardReader[Any]:
        """The reader of shard ``number``, created (and checked) on first use.

        At most ``max_open_shards`` readers stay open in a process: using one more
        closes the least recently used (it reopens on its next use)."""
        with self._lock:
            self._shards.use(number)
            return self._shard_reader(number)

    def _enter(self, number: int, local: np.ndarray | None) -> ShardReader[Any]:
        """Shard ``number``'s reader, open in this process and counted in use (no
        other thread closes it) until `OpenShards.leave`. ``local``: the rows about to
        be read (a use, hinted to the backend); None: a readahead hint, not a use."""
        with self._lock:
            return self._enter_held(self._shards.here(), number, local)

    def _enter_held(
        self, held: ProcessShards, number: int, local: np.ndarray | None
    ) -> ShardReader[Any]:
        """`_enter` for a caller that holds the lock and looked up this process's
        ``held`` readers (once for a batch's shards)."""
        if local is not None:
            self._shards.use(number, held)
        reader = held.readers.get(number)
        if reader is None:
            reader = self._shard_reader(number)
            self._open_here(reader)
        elif not reader.is_open:
            if self._cache is not None:
                self._cache_shard(number)  # it may have been evicted since it closed
            self._open_here(reader)
        if local is not None and len(local) > 1:
            reader.hint_access(self._access_pattern(local))
        held.users[number] += 1
        return reader

    def _shard_reader(self, number: int) -> ShardReader[Any]:
        """This process's reader of shard ``number``, made on first use here with this
        process's options (a DataLoader worker's budget), without counting as a use
        (see `shard`). The shard is checked once per dataset, where it is first made."""
        reader = self._shards.readers.get(number)
        if reader is None:
            if self.manifest is None:  # the one file, checked when this dataset was made
                path = self.path
            elif self._cache is None:
                path = self._shard_path(self.shard_infos[number])
            else:
                path = self._cache_shard(number)
            reader = self._reader_class(path, fields=self.fields, **self.reader_options)
            if number not in self._checked:
                self._check_shard(number, reader)
                self._checked.add(number)
            self._shards.readers[number] = reader
        return reader

    def _check_shard(self, number: int, reader: ShardReader[Any]) -> None:
        """Refuse shard ``number`` where its files, sample count or fields are not
        what the manifest says (opens it)."""
        info, path = self.shard_infos[number], reader.path
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
        self._before_open(reader)  # the first open records the generation
        with _BackendErrors(path):
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

    def _cache_shard(self, number: int) -> str:
        """Shard ``number`` in the node cache (downloaded, checked and leased), the
        leases of this process's closed shards given back (see shardio.storage.cache)."""
        assert self._cache is not None
        try:
            path = self._cache.acquire(number, self._shards.open_numbers(), wait=False)
        except NoRoom:  # close the shards open here but not read now, then wait for room
            self._shards.close_unused(keep=number)
            path = self._cache.acquire(number, self._shards.open_numbers())
        if self._open_cap is not None:
            self._shards.recent.limit = min(self._cache.open_shards(), self._open_cap)
        return path

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
        """One sample: the batch path's steps for one index, without its grouping."""
        number, local = self.index.locate(index)
        rows = np.array([local], dtype=np.int64)
        reader = self._enter(number, rows)
        budget = self._budget
        try:
            with _BackendErrors(reader.path):
                self._checks.check(number, reader, rows)
                before = reader.bytes_read
                sample = reader.read(local)
                if budget is not None:
                    budget.after(reader, reader.bytes_read - before)
        finally:
            self._shards.leave(number)
        if budget is not None:
            budget.settle()
        return sample

    def read_many(
        self, indices: Sequence[int] | np.ndarray, out: Mapping[str, np.ndarray] | None = None
    ) -> Columns:
        """Samples at global ``indices`` as columns, in the order given.

        ``out`` maps fixed fields to arrays of ``len(indices)`` rows (the field's dtype
        and shape) that those fields are read into, and returned as, where the caller
        owns the memory (shared memory in a DataLoader worker).

        The batch is grouped by shard; each group is one call of the shard reader's
        `read_into`, with the integrity checks before it and the memory budget's
        accounting after it (a large batch from a mapping: in pieces)."""
        shards, local = self.index.locate_many(indices)
        count = len(local)
        out = {} if out is None else out
        if count == 0:
            return {**self._empty_columns(), **out}
        first = int(shards[0])
        if len(self.index.lengths) == 1 or (shards == first).all():
            groups: list[tuple[int, np.ndarray | None, np.ndarray]] = [(first, None, local)]
        else:
            order = np.argsort(shards, kind="stable")
            boundaries = np.flatnonzero(np.diff(shards[order])) + 1
            groups = [(int(shards[p[0]]), p, local[p]) for p in np.split(order, boundaries)]
        columns: Columns = dict(out)
        budget = self._budget
        checks = self._checks if self._checks.mode != "off" else None
        # A batch's shards are entered and left under one lock each, as many at a time
        # as may be open (through the node cache: one at a time, as it may wait for room).
        window = 1 if self._cache is not None else max(1, self._shards.recent.limit)
        for at in range(0, len(groups), window):
            part = groups[at : at + window] if window < len(groups) else groups
            numbers = [number for number, _, _ in part]
            readers: list[ShardReader[Any]] = []
            with self._lock:
                held = self._shards.here()
                try:
                    for number, _, rows in part:
                        readers.append(self._enter_held(held, number, rows))
                except BaseException:
                    self._shards.leave_held(held, numbers[: len(readers)])
                    raise
            try:
                for (number, positions, rows), reader in zip(part, readers, strict=True):
                    with _BackendErrors(reader.path):
                        if checks is not None:
                            checks.check(number, reader, rows)
                        target = out if positions is None else {}
                        step = 0 if budget is None else budget.pieces(reader)
                        if budget is None:
                            part_columns = reader.read_into(rows, target)
                        elif step and len(rows) > step:
                            part_columns = budget.read_in_pieces(reader, rows, target, step)
                        else:
                            before = reader.bytes_read
                            part_columns = reader.read_into(rows, target)
                            budget.after(reader, reader.bytes_read - before)
                    if positions is None:
                        columns = part_columns
                    else:
                        _scatter(part_columns, positions, count, columns)
            finally:
                self._shards.leave_all(numbers)
        if budget is not None:
            budget.settle()
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
            known = self._shards.readers.get(number)
            was_open = known is not None and known.is_open
            reader = self._enter(number, None)  # a hint is not a use: nothing is evicted
            try:
                hinted += hint_ranges(reader.byte_ranges(lo, hi))
            finally:
                # This process may only hint: it holds no handle it did not hold before.
                self._shards.leave(number, close=not was_open)
        self.readahead_bytes += hinted
        return hinted

    # ------------------------------------------------------------------ memory
    @property
    def open_readers(self) -> list[ShardReader[Any]]:
        return [r for r in self._shards.readers.values() if r.is_open]

    def release_memory(self, kind: ReleaseKind = "advise") -> ReleaseResult:
        """Ask every open shard reader to release what reading made resident.

        A reader another thread is reading from is only advised, never closed: its
        next release (or reopen) comes with a later check."""
        return self._shards.release(kind)

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self._shards.readers.values())

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
        self._shards.close()
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scatter(part: Columns, positions: np.ndarray, count: int, columns: Columns) -> None:
    """Put one shard's ``part`` of a batch at its ``positions`` in ``columns``."""
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
