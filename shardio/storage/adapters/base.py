"""The adapter contract: one reader and one writer per storage backend.

A `ShardReader` reads samples from one shard (a file or directory of its
backend). Its handle is a `PerProcess` value, opened
lazily in the process that reads, so a reader pickled into a DataLoader worker, or
inherited through ``fork``, opens its own handle there; a pickled reader carries its
path and options only. Several threads may read through one reader at once.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from shardio.core.errors import InvalidOptionError
from shardio.core.fieldnames import check_field_dtypes, check_field_names
from shardio.core.perprocess import PerProcess
from shardio.core.schema import Sample, Schema
from shardio.memory import AccessPattern, FileRange, ReleaseKind, ReleaseResult

from ..integrity import ValueRanges
from .positioned import is_run, raise_if_truncated

__all__ = [
    "Columns",
    "ShardReader",
    "ShardFileWriter",
    "coalesce_ranges",
    "columns_to_samples",
    "concat_columns",
    "is_run",
    "put_rows",
    "raise_if_truncated",
    "samples_to_columns",
    "sorted_rows",
    "take_columns",
]

Columns = dict[str, Any]
"""A batch by field: a stacked ``np.ndarray`` for array fields, a list for variable ones."""

HandleT = TypeVar("HandleT")


def _check_options(given: Mapping[str, Any], accepted: frozenset[str], where: str) -> None:
    unknown = sorted(set(given) - accepted)
    if unknown:
        listing = ", ".join(sorted(accepted)) or "none"
        raise InvalidOptionError(
            f"option {unknown[0]}= is not supported {where}; its options are: {listing}"
        )


class ShardReader(ABC, Generic[HandleT]):
    """Reads one shard of one backend. Subclasses implement the ``_``-prefixed hooks."""

    #: Name used in manifests, ``format=`` options and error messages.
    format: ClassVar[str]
    #: Reads fsspec URLs (``s3://``, ``gs://``, ...), not only local files.
    remote: ClassVar[bool] = False
    #: Memory: the backend maps files into the process (RSS grows with pages read),
    #: or holds library caches that only a reopen drops.
    maps_files: ClassVar[bool] = False
    holds_caches: ClassVar[bool] = False
    #: The ``read_mode=`` values a backend that names ``"read_mode"`` in `options`
    #: accepts: ``"map"`` (the default: through a mapping) or ``"pread"`` (copied with
    #: pread: no page mapped; the mode under a memory budget). Checked here, once.
    READ_MODES: ClassVar[tuple[str, ...]] = ("map", "pread")
    #: Backend-specific keyword options this reader accepts.
    options: ClassVar[frozenset[str]] = frozenset()
    #: Files the backend's own library may create in a shard after it was written
    #: (not part of its size or checksum).
    transient_files: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def check_options(cls, options: Mapping[str, Any], path: str) -> str | None:
        """Refuse an option the backend does not take, or a ``read_mode`` it does not
        offer (the one place either is checked); returns the read mode, None where the
        backend takes none."""
        _check_options(options, cls.options, f"by the {cls.format} backend (reading {path})")
        if "read_mode" not in cls.options:
            return None
        mode = options.get("read_mode", "map")
        if mode not in cls.READ_MODES:
            raise InvalidOptionError(
                f"read_mode should be {' or '.join(map(repr, cls.READ_MODES))}, but got "
                f"read_mode={mode!r} (the {cls.format} backend, reading {path})"
            )
        return str(mode)

    @classmethod
    def descriptors_per_shard(cls, schema: Schema) -> int:
        """File descriptors one open shard of ``schema`` holds (sizes the default
        `max_open_shards`)."""
        return 3

    def __init__(
        self,
        path: str,
        *,
        fields: Sequence[str] | None = None,
        allow_external: bool = False,
        **options: Any,
    ) -> None:
        #: ``"map"`` or ``"pread"`` where the backend takes ``read_mode=``, else None.
        self.read_mode = self.check_options(options, path)
        self.path = path
        #: Read data that metadata places outside the shard (HDF5 external storage and
        #: virtual datasets, files named by path in shard metadata); refused by default.
        self.allow_external = allow_external
        self.requested_fields = None if fields is None else list(fields)
        self.backend_options = options
        #: Reading faults pages of a file mapping into this process (RSS grows with
        #: what is read): declared from the class and the read mode, never by opening
        #: a file; a backend that learns otherwise when it opens (a file it reads
        #: without its map) sets it then.
        self.touches_mapped_pages = self.maps_files and self.read_mode != "pread"
        self._handle: PerProcess[HandleT] = PerProcess()
        self._length: int | None = None
        self._schema: Schema | None = None
        self.bytes_read = 0
        self.reopens = 0
        self._advised: AccessPattern | None = None

    # ----------------------------------------------------------------- handles
    @property
    def handle(self) -> HandleT:
        """The open handle of this process, opened on first use after a fork or pickle."""
        return self._handle.get(self._open_handle)

    def _open_handle(self) -> HandleT:
        self._advised = None  # hints were given to another handle (or process)
        return self._open()

    @property
    def is_open(self) -> bool:
        return self._handle.current() is not None

    def close(self) -> None:
        """Close this process's handle; safe to call twice, reopens lazily on next read."""
        handle = self._handle.take()
        if handle is not None:
            self._close(handle)
        self._advised = None

    def __enter__(self) -> ShardReader[HandleT]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # never raise from a finalizer
            self.close()

    # ----------------------------------------------------------------- reading
    def __len__(self) -> int:
        if self._length is None:
            self.handle  # noqa: B018 - opening reads the length and schema
        assert self._length is not None
        return self._length

    @property
    def schema(self) -> Schema:
        """Schema of the selected fields."""
        if self._schema is None:
            self.handle  # noqa: B018
        assert self._schema is not None
        return self._schema

    @classmethod
    def budget_options(cls, max_rss: int, shard_count: int, field_count: int) -> dict[str, Any]:
        """Options that keep reading under a budget of ``max_rss`` bytes for a process
        reading ``shard_count`` shards of ``field_count`` fields each (options a user
        gives win). None by default: the budget's release calls suffice."""
        return {}

    def read(self, index: int) -> Sample:
        """One sample by local index (already validated by the caller)."""
        columns = self.read_many(np.array([index], dtype=np.int64))
        return columns_to_samples(columns, 1)[0]

    @abstractmethod
    def read_many(self, indices: np.ndarray) -> Columns:
        """The samples at local ``indices`` (any order, repeats allowed) as columns,
        read in one transaction, selection or gather."""

    def read_into(self, indices: np.ndarray, out: Mapping[str, np.ndarray]) -> Columns:
        """`read_many` with the fixed fields named in ``out`` written into its
        arrays (``len(indices)`` rows each, the field's dtype and shape), for callers
        that own the memory (shared memory in DataLoader workers). This default copies;
        backends that can gather straight into ``out`` override it."""
        columns = self.read_many(indices)
        for name, target in out.items():
            target[...] = columns[name]
            columns[name] = target
        return columns

    def files(self) -> list[str]:
        """The local files that hold this shard's data (for checksums and cache hints)."""
        return [self.path]

    def value_ranges(self, indices: np.ndarray) -> ValueRanges | None:
        """Where the values of samples ``indices`` lie in the local files, per file, for
        ``verify="first-read"``; None where the backend cannot tell cheaply (then the
        whole shard is checked on its first read)."""
        return None

    def byte_ranges(self, start: int, stop: int) -> list[FileRange]:
        """The local file ranges that hold samples ``[start, stop)``, for readahead hints.

        Empty where the backend cannot tell (remote stores, variable-length HDF5
        fields, LMDB environments without shardio's offsets table): no hint there."""
        return []

    # ------------------------------------------------------------------ memory
    def release_memory(
        self, kind: ReleaseKind = "advise", *, may_close: bool = True
    ) -> ReleaseResult:
        """Drop what reading has made resident: mapped pages (``advise``), or every
        handle (``reopen``), or the handles of cache-holding backends (``reopen-caches``).

        ``may_close=False`` (another thread reads through this reader now): mapped
        pages are dropped where there are any, and nothing is closed."""
        if not self.is_open:
            return ReleaseResult()
        if kind == "advise" and self.maps_files:
            dropped = self._drop_pages()
            if dropped is not None:
                return dropped
        elif kind == "reopen-caches" and not self.holds_caches:
            return ReleaseResult()
        if not may_close:
            return ReleaseResult()
        self.close()
        self.reopens += 1
        return ReleaseResult(reopens=1)

    def _drop_pages(self) -> ReleaseResult | None:
        """madvise(MADV_DONTNEED) on this reader's mappings; None where it has none
        now (then a release closes the reader). Backends that map files override it."""
        return None

    def hint_access(self, pattern: AccessPattern) -> None:
        """Tell the backend how it is read, once per pattern change and open handle."""
        if pattern != self._advised:
            self.advise(pattern)
            self._advised = pattern

    def advise(self, pattern: AccessPattern) -> None:
        """Apply an access-pattern hint (a no-op where the backend has no use for one)."""

    # ------------------------------------------------------------------- hooks
    @abstractmethod
    def _open(self) -> HandleT:
        """Open the backend and set ``self._length`` and ``self._schema``."""

    @abstractmethod
    def _close(self, handle: HandleT) -> None:
        """Close a handle this process opened."""

    def _select(self, schema: Schema) -> Schema:
        return schema.select(self.requested_fields, where=self.path)


class ShardFileWriter(ABC):
    """Writes one shard of one backend at ``path``; the caller renames it when done."""

    format: ClassVar[str]
    options: ClassVar[frozenset[str]] = frozenset()
    #: Top-level modules of the backend's library: their errors while writing may stand
    #: for a full disk (LMDB reports a short write as EIO).
    libraries: ClassVar[tuple[str, ...]] = ()
    #: The compressor a conversion uses when none is asked for (``"none"`` turns it off).
    default_compressor: ClassVar[str | None] = None
    #: Bytes per chunk of a fixed field (the ``chunk_bytes=`` option's default) where
    #: the backend stores fields in chunks of rows; None where it does not.
    chunk_bytes: ClassVar[int | None] = None

    @classmethod
    def compression_options(cls, name: str, level: int | None) -> dict[str, Any]:
        """Writer options for compressor ``name`` (at ``level``, or the default), checked
        now rather than in a worker; raises for a compressor the backend lacks."""
        raise InvalidOptionError(
            f"{cls.format} stores samples uncompressed and takes no compressor, but got "
            f"compressor={name!r}; pick an output format that compresses"
        )

    @classmethod
    def conversion_options(cls, max_shard_rows: int) -> dict[str, Any]:
        """Options a conversion writes shards of at most ``max_shard_rows`` samples with
        (options given win). None by default."""
        return {}

    @classmethod
    def chunk_rows(cls, options: Mapping[str, Any], row_nbytes: int) -> int | None:
        """Rows per chunk of a fixed field of ``row_nbytes`` bytes written with
        ``options``; None where the backend does not chunk."""
        if cls.chunk_bytes is None:
            return None
        return max(1, int(options.get("chunk_bytes", cls.chunk_bytes)) // max(1, row_nbytes))

    def __init__(self, path: str, schema: Schema, **options: Any) -> None:
        _check_options(options, self.options, f"when writing {self.format} (writing {path})")
        check_field_names(schema.names, f"writing {path}")
        check_field_dtypes(schema, f"writing {path}")
        self.path = path
        self.schema = schema
        self.count = 0

    @abstractmethod
    def append(self, columns: Columns, count: int) -> None:
        """Append ``count`` samples given as validated columns."""

    @abstractmethod
    def close(self) -> None:
        """Finish the shard: flush, write metadata, release handles."""

    def abort(self) -> None:
        """Stop without finishing; the caller removes the partial output."""
        with contextlib.suppress(Exception):  # the partial shard is discarded anyway
            self.close()


# ------------------------------------------------------------------- columns
def coalesce_ranges(
    path: str, offsets: np.ndarray, lengths: np.ndarray, gap: int = 0
) -> list[FileRange]:
    """Ranges of one file in file order, merged where at most ``gap`` bytes apart.

    A small ``gap`` turns values separated by page headers (LMDB, HDF5 chunks) into
    one range: reading a few bytes more is cheaper than one more hint."""
    keep = lengths > 0
    offsets, lengths = offsets[keep].astype(np.int64), lengths[keep].astype(np.int64)
    if not len(offsets):
        return []
    order = np.argsort(offsets, kind="stable")
    offsets = offsets[order]
    ends = np.maximum.accumulate(offsets + lengths[order])
    breaks = np.flatnonzero(offsets[1:] > ends[:-1] + gap) + 1
    firsts = np.concatenate(([0], breaks))
    lasts = np.concatenate((breaks, [len(offsets)])) - 1
    return [
        (path, int(offsets[a]), int(ends[b] - offsets[a]))
        for a, b in zip(firsts.tolist(), lasts.tolist(), strict=True)
    ]


def sorted_rows(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The distinct rows of ``indices`` in ascending order (how HDF5 and Zarr select
    them), and the positions that put them back in the order asked (None where
    ``indices`` are already distinct and ascending)."""
    unique, inverse = np.unique(indices, return_inverse=True)
    if len(unique) == len(indices) and np.array_equal(unique, indices):
        return unique, None
    return unique, inverse


def put_rows(data: np.ndarray, order: np.ndarray | None, out: np.ndarray | None) -> np.ndarray:
    """Rows ``order`` of ``data`` (all of them for ``None``), gathered straight into
    ``out`` where the caller gave an array, not into a new one copied again."""
    if out is None:
        return data if order is None else data[order]
    if order is None:
        out[...] = data
    elif out.dtype == data.dtype and out.flags.c_contiguous:
        np.take(data, order, axis=0, out=out, mode="clip")  # "raise" buffers the output
    else:
        out[...] = data[order]  # another byte order: converted as copied
    return out


def columns_to_samples(columns: Mapping[str, Any], count: int) -> list[Sample]:
    """Split columns into ``count`` per-sample dicts (array rows are views).

    A scalar field's value is a numpy scalar (``np.int64(5)``), as numpy's and h5py's
    own indexing give, so code that builds tensors from lists of them
    (``torch.tensor([s["label"] for s in samples])``) works; other array fields are
    row views."""
    names = list(columns)
    values = [columns[n] for n in names]
    return [{n: v[i] for n, v in zip(names, values, strict=True)} for i in range(count)]


def samples_to_columns(samples: Sequence[Mapping[str, Any]], schema: Schema) -> Columns:
    """Stack per-sample dicts into columns following ``schema``."""
    columns: Columns = {}
    for field in schema:
        values = [s[field.name] for s in samples]
        if field.variable:
            columns[field.name] = values
        elif values:
            columns[field.name] = np.stack([np.asarray(v, dtype=field.dtype) for v in values])
        else:
            columns[field.name] = np.empty((0, *field.shape), dtype=field.dtype)
    return columns


def concat_columns(parts: Sequence[Mapping[str, Any]]) -> Columns:
    """Columns of several batches joined in order."""
    columns: Columns = {}
    for name, first in parts[0].items():
        if isinstance(first, np.ndarray):
            columns[name] = np.concatenate([part[name] for part in parts])
        else:
            columns[name] = [value for part in parts for value in part[name]]
    return columns


def take_columns(columns: Mapping[str, Any], order: np.ndarray) -> Columns:
    """Columns reordered (and possibly repeated) by positions ``order``."""
    result: Columns = {}
    for name, column in columns.items():
        if isinstance(column, np.ndarray):
            result[name] = column[order]
        else:
            result[name] = [column[i] for i in order]
    return result
