"""DatasetReader: a torch-free reader over one file or a sharded dataset directory.

It resolves a path to its adapter, maps global indices onto shards and opens each
shard's reader on first use. :class:`~shardio.dataset.ShardedDataset` wraps it for
torch; conversion and verification use it directly without importing torch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .adapters.base import (
    AccessPattern,
    Columns,
    ShardReader,
    columns_to_samples,
    concat_columns,
    is_run,
)
from .adapters.registry import SHARDED, detect_format, get_backend, is_remote, reader_class
from .errors import ShardCorruptError, UnsupportedFeatureError
from .index import ShardIndex
from .manifest import Manifest, ShardInfo
from .memory import (
    MemoryGuard,
    MemoryPolicy,
    ReleaseKind,
    ReleaseResult,
    hint_ranges,
    readahead_supported,
)
from .openlimit import RecentlyUsed, resolve_open_limit
from .schema import Sample, Schema
from .writer import shard_files

__all__ = ["DatasetReader"]

_SMALL_SAMPLE = 32 * 1024
_WORST_FAULT_BYTES = 2 * 1024 * 1024


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
        **options: Any,
    ) -> None:
        self.path = os.fspath(path)
        self.fields = (
            None if fields is None else ([fields] if isinstance(fields, str) else list(fields))
        )
        self.verify_sizes = verify_sizes
        self.options = dict(options)
        if storage_options is not None:
            self.options["storage_options"] = storage_options
        self.memory_policy = MemoryPolicy.resolve(max_rss, memory_policy)
        self.guard = MemoryGuard(self.memory_policy, self.release_memory)
        self._unchecked_bytes = 0  # read by map-free readers since the last guard check
        self.readahead_bytes = 0
        fmt = format if format is not None else detect_format(self.path, storage_options)
        if fmt != SHARDED:
            fmt = get_backend(fmt).name  # validates the name, resolves an alias
        self.manifest: Manifest | None = None
        self._readers: dict[int, ShardReader[Any]] = {}
        self._recent = RecentlyUsed(resolve_open_limit(max_open_shards))
        if fmt == SHARDED:
            self.manifest = (
                Manifest.load_remote(self.path, storage_options)
                if is_remote(self.path)
                else Manifest.load(self.path)
            )
            self.format = self.manifest.format
            self._reader_class = reader_class(self.format, self.path)
            self._check_remote()
            field_count = len(self.fields) if self.fields else len(self.manifest.schema)
            self._fit_budget(len(self.manifest.shards), field_count)
            self.schema: Schema = self.manifest.schema.select(self.fields, where=self.path)
            self.shard_infos: tuple[ShardInfo, ...] = self.manifest.shards
            lengths = [s.num_samples for s in self.shard_infos]
        else:
            self.format = fmt
            self._reader_class = reader_class(fmt, self.path)
            self._check_remote()
            self._fit_budget(1, len(self.fields) if self.fields else 4)
            reader = self._reader_class(self.path, fields=self.fields, **self.options)
            self._readers[0] = reader
            self.schema = reader.schema
            lengths = [len(reader)]
            self.shard_infos = (ShardInfo(self.path, lengths[0], self._local_nbytes(reader)),)
        self.index = ShardIndex(lengths)

    def _check_remote(self) -> None:
        if is_remote(self.path) and not self._reader_class.remote:
            raise UnsupportedFeatureError(
                f"the {self.format} backend reads local files only, but got {self.path}; "
                "copy the dataset to local disk, or convert it to zarr or hdf5 shards"
            )

    def _fit_budget(self, shard_count: int, field_count: int) -> None:
        """Backend options that keep reading under the budget (options given win).

        Backends that map files copy values with pread instead. What every (shard,
        field) pair may hold is a share of the budget: raw mmap fields whose file is at
        most 1/16 of it (labels, say) remain mapped, since a system call per row would
        cost more; HDF5's chunk caches, one per dataset in every open file, get 1/8
        (each at least 64 KiB, at most 16 MiB)."""
        policy = self.memory_policy
        if policy is None or self.format not in ("mmap", "lmdb", "hdf5"):
            return
        self.options.setdefault("read_mode", "pread")
        per_pair = policy.max_rss // (max(1, shard_count) * max(1, field_count))
        if self.format == "mmap":
            self.options.setdefault("map_below", per_pair // 16)
        if self.format == "hdf5":
            cache = min(max(per_pair // 8, 64 * 1024), 16 * 1024 * 1024)
            self.options.setdefault("rdcc_nbytes", cache)

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

    def _shard_path(self, info: ShardInfo) -> str:
        if is_remote(self.path):
            return f"{self.path.rstrip('/')}/{info.path}"
        return os.path.join(self.path, info.path)

    def shard(self, number: int) -> ShardReader[Any]:
        """The reader of shard ``number``, created (and checked) on first use.

        At most ``max_open_shards`` readers stay open in a process: using one more
        closes the least recently used (it reopens on its next use)."""
        evicted = self._recent.use(number)
        if evicted is not None and evicted in self._readers:
            self._readers[evicted].close()
        return self._shard_reader(number)

    def _shard_reader(self, number: int) -> ShardReader[Any]:
        """The reader of shard ``number``, created and checked on first use, without
        counting as a use (see :meth:`shard`)."""
        reader = self._readers.get(number)
        if reader is None:
            info = self.shard_infos[number]
            path = self._shard_path(info)
            if self.verify_sizes and not is_remote(path):
                self._check_shard_size(path, info)
            reader = self._reader_class(path, fields=self.fields, **self.options)
            if len(reader) != info.num_samples:
                raise ShardCorruptError(
                    f"shard {path} holds {len(reader)} samples, "
                    f"but the manifest says {info.num_samples}"
                )
            if reader.schema != self.schema:
                raise ShardCorruptError(
                    f"shard {path} has fields {list(reader.schema.names)} that differ from the "
                    f"manifest's {list(self.schema.names)}"
                )
            self._readers[number] = reader
        return reader

    @staticmethod
    def _check_shard_size(path: str, info: ShardInfo) -> None:
        # NOTE: checked before any mapping: reading an mmap past the end of a truncated
        # file kills the process with SIGBUS instead of raising.
        if not os.path.exists(path):
            raise ShardCorruptError(f"shard {path} listed in the manifest is missing")
        try:
            actual = sum(os.path.getsize(p) for p in shard_files(path))
        except OSError as exc:
            raise ShardCorruptError(f"cannot read shard {path}: {exc}") from exc
        if actual != info.nbytes:
            raise ShardCorruptError(
                f"shard {path} has {actual} bytes, but the manifest says {info.nbytes} "
                "(truncated or modified since it was written)"
            )

    # ----------------------------------------------------------------- reading
    def read(self, index: int) -> Sample:
        shard, local = self.index.locate(index)
        reader = self.shard(shard)
        before = reader.bytes_read
        sample = reader.read(local)
        if self.memory_policy is not None:
            self.guard.after_read(reader.bytes_read - before)
        return sample

    def read_many(self, indices: Sequence[int] | np.ndarray) -> Columns:
        """Samples at global ``indices`` as columns, in the order given."""
        shards, local = self.index.locate_many(indices)
        count = len(local)
        if count == 0:
            return self._empty_columns()
        first = int(shards[0])
        if (shards == first).all():
            columns = self._read_shard(first, local)
        else:
            columns = self._gather_shards(shards, local)
        if self._unchecked_bytes:
            # Readers that map no pages are checked once per call, not once per shard:
            # a batch spread over many shards would otherwise read /proc per shard.
            self.guard.after_read(self._unchecked_bytes)
            self._unchecked_bytes = 0
        return columns

    def _read_shard(self, number: int, local: np.ndarray) -> Columns:
        reader = self.shard(number)
        if len(local) > 1:
            reader.hint_access(self._access_pattern(local))
        if self.memory_policy is None:
            return reader.read_many(local)
        if not reader.touches_mapped_pages:
            before = reader.bytes_read
            columns = reader.read_many(local)
            self._unchecked_bytes += reader.bytes_read - before
            return columns
        # NOTE: one touched page can map a whole large folio (up to 2 MiB) of the page
        # cache, so a batch is read in pieces with an RSS check between them.
        step = max(4, self.memory_policy.max_rss // (4 * _WORST_FAULT_BYTES))
        parts = []
        for start in range(0, len(local), step):
            before = reader.bytes_read
            parts.append(reader.read_many(local[start : start + step]))
            self.guard.after_read(reader.bytes_read - before)
        return parts[0] if len(parts) == 1 else concat_columns(parts)

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

    def _gather_shards(self, shards: np.ndarray, local: np.ndarray) -> Columns:
        count = len(local)
        order = np.argsort(shards, kind="stable")
        boundaries = np.flatnonzero(np.diff(shards[order])) + 1
        columns: Columns = {}
        for positions in np.split(order, boundaries):
            part = self._read_shard(int(shards[positions[0]]), local[positions])
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
                    for position, value in zip(positions.tolist(), column):
                        target[position] = value
        return columns

    def read_samples(self, indices: Sequence[int] | np.ndarray) -> list[Sample]:
        columns = self.read_many(indices)
        return columns_to_samples(columns, len(indices))

    def _empty_columns(self) -> Columns:
        return {
            f.name: [] if f.variable else np.empty((0, *f.shape), dtype=f.dtype)
            for f in self.schema
        }

    def readahead(self, start: int, stop: int) -> int:
        """Ask the OS to start reading samples ``[start, stop)`` into the page cache.

        A hint that returns at once, for a caller that knows what is read next (the
        ``shard-window`` order of :class:`~shardio.ShardSampler`). The page cache is
        shared, so a hint given here also serves DataLoader workers; the pages it
        brings in count in no process's RSS. A shard this process has not opened is
        opened to learn where its samples lie and closed again. Returns the bytes
        hinted: 0 for remote data, on platforms without ``posix_fadvise``, and for
        backends that cannot tell where samples lie (see ``ShardReader.byte_ranges``).
        """
        start, stop = max(0, int(start)), min(int(stop), len(self))
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
            known = self._readers.get(number)
            was_open = known is not None and known.is_open
            reader = self._shard_reader(number)  # a hint is not a use: nothing is evicted
            try:
                hinted += hint_ranges(reader.byte_ranges(lo, hi))
            finally:
                if not was_open:
                    reader.close()  # this process may only hint: hold no handles for it
        self.readahead_bytes += hinted
        return hinted

    # ------------------------------------------------------------------ memory
    @property
    def open_readers(self) -> list[ShardReader[Any]]:
        return [r for r in self._readers.values() if r.is_open]

    def release_memory(self, kind: ReleaseKind = "advise") -> ReleaseResult:
        """Ask every open shard reader to release what reading made resident."""
        total = ReleaseResult()
        for reader in self.open_readers:
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
        return stats

    # ------------------------------------------------------------------- close
    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
