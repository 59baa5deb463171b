"""HDF5 backend (h5py).

Any HDF5 file reads as a dataset: its datasets that share the first axis become
fields, named by their path inside the file (``fields=`` picks some). shardio-written
shards hold one HDF5 dataset per field plus the schema in the root's attributes.
Variable-length fields are HDF5 variable-length types (bytes, strings, 1-D arrays).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from shardio.core.config import MAX_EXPANSION
from shardio.core.errors import (
    DatasetNotFoundError,
    FieldsChosenWarning,
    InvalidOptionError,
    RemoteReadError,
    ShardCorruptError,
    UnknownFormatError,
    UnsupportedFeatureError,
)
from shardio.core.safeopen import MAX_CHUNK_BYTES
from shardio.core.schema import Field, Schema
from shardio.core.timevalues import TIME_KINDS, as_stored, stored_dtype
from shardio.core.warn import warn_user
from shardio.memory import FileRange, ReleaseResult

from ...cf import CFFields
from ...integrity import ValueRanges
from ...minc import hdf5_minc
from ...remote import is_remote, open_remote
from ..base import (
    Columns,
    ShardFileWriter,
    ShardReader,
    coalesce_ranges,
    put_rows,
    sorted_rows,
)
from ..positioned import PositionedFile
from ._bounds import DeflateBound
from ._discovery import (
    COUNT_ATTR,
    SCHEMA_ATTR,
    Discovery,
    SparseRows,
    discover,
    open_spec,
    own_layout,
)
from ._filters import load_filters

__all__ = [
    "open_hdf5",
    "vlen_reads_unswapped",
    "HDF5Reader",
    "HDF5Writer",
    "SCHEMA_ATTR",
]

#: Chunks this close in the file (B-tree nodes between them) are hinted as one range.
_HINT_GAP = 64 * 1024


@dataclass
class _RowTable:
    """Where each row of an unfiltered dataset lies in the file."""

    rows: int  # rows per chunk (all rows, for a contiguous dataset)
    row_bytes: int
    offsets: np.ndarray  # byte offset of each chunk in the file; -1 where unallocated

    def spans(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """File offsets and lengths of rows ``[start, stop)``, one span per chunk."""
        chunks = np.arange(start // self.rows, (stop - 1) // self.rows + 1, dtype=np.int64)
        first = np.maximum(start, chunks * self.rows)
        last = np.minimum(stop, (chunks + 1) * self.rows)
        base = self.offsets[chunks]
        allocated = base >= 0  # unallocated chunks read as fill values: nothing to read
        offsets = base + (first - chunks * self.rows) * self.row_bytes
        return offsets[allocated], ((last - first) * self.row_bytes)[allocated]

    def positions(self, rows: np.ndarray) -> np.ndarray | None:
        starts = self.offsets[rows // self.rows]
        if (starts < 0).any():
            return None
        return starts + (rows % self.rows) * self.row_bytes

    @classmethod
    def contiguous(cls, dataset: h5py.Dataset) -> _RowTable | None:
        """The table of a contiguous dataset, whatever its dtype (one "chunk" of all rows)."""
        offset = dataset.id.get_offset()  # None until a contiguous dataset is written
        if offset is None or not dataset.shape:
            return None
        return cls(max(1, dataset.shape[0]), _row_bytes(dataset), np.array([offset]))

    @classmethod
    def of(cls, dataset: h5py.Dataset) -> _RowTable | None:
        """The table of a dataset whose stored bytes are its values, else None."""
        if dataset.id.get_create_plist().get_nfilters() or dataset.dtype.kind not in "biuf":
            return None
        if dataset.chunks is None:
            return cls.contiguous(dataset)
        if tuple(dataset.chunks[1:]) != tuple(dataset.shape[1:]) or not hasattr(
            dataset.id, "chunk_iter"
        ):
            return None
        rows = dataset.chunks[0]
        chunk_count = -(-dataset.shape[0] // rows)
        if chunk_count > _MAX_CHUNKS_PER_FILE_BYTE * max(1, dataset.file.id.get_filesize()):
            return None  # mostly unallocated: h5py reads it, the table would not fit
        offsets = np.full(chunk_count, -1, dtype=np.int64)

        def record(info: Any) -> None:
            offsets[info.chunk_offset[0] // rows] = info.byte_offset

        dataset.id.chunk_iter(record)
        return cls(rows, _row_bytes(dataset), offsets)


@dataclass
class _ChunkExtents:
    """Where each stored chunk of a chunked dataset lies in the file, filters or not
    (a compressed chunk's bytes are not its rows, but they are what a read fetches)."""

    rows: int  # rows per chunk
    first_rows: np.ndarray  # first row of each stored chunk, ascending
    offsets: np.ndarray
    sizes: np.ndarray

    def spans(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """File offsets and sizes of the chunks holding rows ``[start, stop)``."""
        lo = int(np.searchsorted(self.first_rows, start - self.rows + 1, side="left"))
        hi = int(np.searchsorted(self.first_rows, stop - 1, side="right"))
        return self.offsets[lo:hi], self.sizes[lo:hi]

    @classmethod
    def of(cls, dataset: h5py.Dataset) -> _ChunkExtents | None:
        if dataset.chunks is None or not hasattr(dataset.id, "chunk_iter"):
            return None
        found: list[tuple[int, int, int]] = []

        def record(info: Any) -> None:
            found.append((info.chunk_offset[0], info.byte_offset, info.size))

        dataset.id.chunk_iter(record)
        table = np.array(sorted(found), dtype=np.int64).reshape(-1, 3)
        return cls(int(dataset.chunks[0]), table[:, 0], table[:, 1], table[:, 2])


def _hint_source(dataset: h5py.Dataset) -> _RowTable | _ChunkExtents | None:
    """What tells readahead where a fixed field's rows lie, for any dtype and filter."""
    if dataset.chunks is not None:
        return _ChunkExtents.of(dataset)
    return _RowTable.contiguous(dataset)


def _check_contained(path: str, file: h5py.File, name: str, dataset: Any) -> None:
    """Refuse a field whose values live in other files: external storage, a virtual
    dataset, or an external link (reading them reads files the user did not name)."""
    parts = (
        [dataset.data, dataset.indices, dataset.indptr]
        if isinstance(dataset, SparseRows)
        else [dataset]
    )
    for part in parts:
        if part.file.filename != file.filename:
            where = f"an external link to {part.file.filename}"
        elif part.is_virtual:
            where = "a virtual dataset (its values come from other files)"
        elif part.id.get_create_plist().get_external_count():
            where = "stored in external files"
        else:
            continue
        raise UnsupportedFeatureError(
            f"{path}: dataset {name!r} is {where}; shardio reads only the file it is given "
            "unless allow_external=True"
        )


def _check_claimed_rows(path: str, file: h5py.File, length: int, schema: Schema) -> None:
    """Refuse a file whose datasets declare far more rows than it can hold: a tiny
    file with a 10^13-row dataset of fill values would make every sampler allocate
    an order of that length."""
    row = max(1, min(f.sample_nbytes or 1 for f in schema))
    if length * row > max(1, file.id.get_filesize()) * MAX_EXPANSION:
        raise ShardCorruptError(
            f"{path}: its datasets declare {length} rows of at least {row} bytes, far more "
            f"than its {file.id.get_filesize()} bytes can hold (mostly never written)"
        )


#: A row table costs 8 bytes per chunk; beyond this many chunks per stored byte of the
#: file (a tiny file declaring a huge sparse dataset) the table is not built.
_MAX_CHUNKS_PER_FILE_BYTE = 1


def _row_bytes(dataset: h5py.Dataset) -> int:
    return int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize


@dataclass
class _File:
    file: h5py.File
    datasets: dict[str, h5py.Dataset | SparseRows]
    raw_chunks: dict[str, bool]  # per field: chunks hold plain values (see _gather)
    members: dict[str, str] = field(default_factory=dict)  # field -> compound member it reads
    tables: dict[str, _RowTable | None] = field(default_factory=dict)
    rows_file: PositionedFile | None = None  # the file, read at table positions
    hints: dict[str, _RowTable | _ChunkExtents | None] | None = None  # built on first use
    deflate: dict[str, DeflateBound | None] = field(default_factory=dict)  # per field


def open_hdf5(path: str, storage_options: dict[str, Any] | None = None, **cache: Any) -> h5py.File:
    """``path`` (a local file or an fsspec URL) opened read-only with chunk-cache
    settings ``cache``; a missing file is DatasetNotFoundError, one HDF5 cannot open
    ShardCorruptError."""
    try:
        if is_remote(path):
            # Faults while h5py reads raise RemoteReadError from the file object itself.
            return h5py.File(open_remote(path, storage_options), "r", **cache)
        return _open_local(path.removeprefix("file://"), cache)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"HDF5 file {path} does not exist") from None
    except RemoteReadError:
        raise
    except OSError as exc:
        _raise_if_other_format(path)
        raise ShardCorruptError(f"cannot open HDF5 file {path}: {exc}") from exc


def _raise_if_other_format(path: str) -> None:
    """A healthy file of another format (a netCDF3 `.nc`) is named as such, not corrupt."""
    from ..registry import is_remote, signature_format  # the registry names this module

    found = None if is_remote(path) else signature_format(path.removeprefix("file://"))
    if found is not None and found != "hdf5":
        raise UnknownFormatError(
            f"{path} is a {found} file, not HDF5: read it with format={found!r} "
            f"(--format {found}), or leave format= out to detect it"
        )


# h5py's `locking=` values, HDF5's default first: the user's own `h5py.File(path)` uses
# it, and HDF5 refuses a second open of a file in one process (or in a worker forked
# from it) whose locking flags differ ("file locking flag values don't match").
_LOCKINGS: tuple[bool | str | None, ...] = (None, False, True, "best-effort")


def _open_local(path: str, cache: dict[str, Any]) -> h5py.File:
    """``path`` opened read-only with the locking flags of whoever has it open already.

    NOTE: shardio opened files with `locking=False` once, which made any later default
    `h5py.File(path)` in the process (or in a forked worker) fail. HDF5's default
    (`best-effort` since 1.14: lock where the filesystem supports it) is tried first;
    a file already open with other flags is opened with those, and one that a writer
    holds locked is read without a lock, as before."""
    error: OSError | None = None
    for locking in _LOCKINGS:
        try:
            return h5py.File(path, "r", locking=locking, **cache)
        except OSError as exc:
            message = str(exc)
            if "flag values don't match" in message:
                error = exc
                continue
            if locking is None and "unable to lock file" in message.lower():
                return h5py.File(path, "r", locking=False, **cache)
            raise
    assert error is not None
    raise error


@functools.lru_cache(maxsize=1)
def vlen_reads_unswapped() -> bool:
    """Whether h5py hands back variable-length arrays of a non-native element type
    with the file's bytes labelled as native (h5py 3.x does: big-endian int16 1
    reads as 256). Tested once on an in-memory file, so a fixed h5py is not undone."""
    foreign = np.dtype(">i2") if sys.byteorder == "little" else np.dtype("<i2")
    with h5py.File(
        # one name per thread: Loader threads may probe at once, and HDF5 refuses a
        # second "w" open of a name open in the process
        f"shardio-vlen-probe-{os.getpid()}-{threading.get_ident()}",
        "w",
        driver="core",
        backing_store=False,
    ) as file:
        dataset = file.create_dataset("v", (1,), dtype=h5py.vlen_dtype(foreign))
        dataset[0] = np.array([1], dtype=foreign)
        value = np.asarray(dataset[0])
    return bool(value.dtype.isnative and value[0] != 1)


def _announce(found: Discovery) -> None:
    """Say which datasets a file without a shardio schema is read on, and which not
    (a warning each, shown once per process)."""
    for line in (found.chosen, found.left_out):
        if line:
            warn_user(line, FieldsChosenWarning)


class HDF5Reader(ShardReader[_File]):
    """Reads a shardio HDF5 shard or any HDF5 file.

    A file without a shardio schema is read on the fields
    `discover` finds: ``group=`` reads the
    datasets under one group (named relative to it), ``dim=`` those along one netCDF
    dimension, ``split_compound=True`` reads each member of a compound dataset as a
    field. Each dataset left out is named in a `FieldsChosenWarning`.
    """

    format = "hdf5"
    remote = True
    holds_caches = True
    maps_files = True
    #: Unfiltered datasets (contiguous, or chunked by whole rows) are read at their
    #: rows' positions in the file, found once when opened, bypassing a per-chunk
    #: HDF5 call: through shardio's own map of the file, or with read_mode="pread"
    #: with pread (no page mapped: the mode under a memory budget).
    options = frozenset(
        {
            "rdcc_nbytes",
            "rdcc_nslots",
            "storage_options",
            "read_mode",
            "group",
            "dim",
            "split_compound",
            "decode_cf",
        }
    )
    _cf: CFFields | None = None

    @classmethod
    def descriptors_per_shard(cls, schema: Schema) -> int:
        return 2  # the file, and the descriptor pread mode keeps

    @classmethod
    def budget_options(cls, max_rss: int, shard_count: int, field_count: int) -> dict[str, Any]:
        """pread instead of shardio's map of the file; HDF5's chunk caches, one per
        dataset in every open file, get 1/8 of each one's share of the budget (at
        least 64 KiB, at most 16 MiB)."""
        share = max_rss // (max(1, shard_count) * max(1, field_count))
        cache = min(max(share // 8, 64 * 1024), 16 * 1024 * 1024)
        return {"read_mode": "pread", "rdcc_nbytes": cache}

    def _open(self) -> _File:
        file = self._open_file()
        try:
            group, dim = self.backend_options.get("group"), self.backend_options.get("dim")
            own = own_layout(file, self.path, self.requested_fields, group, dim)
            found = own or discover(
                file,
                self.path,
                fields=self.requested_fields,
                group=group,
                dim=dim,
                split_compound=bool(self.backend_options.get("split_compound", False)),
            )
            if own is None:
                _announce(found)
            schema, length = found.schema, found.num_samples
            specs = {s.field.name: s for s in found.specs}
            datasets: dict[str, h5py.Dataset | SparseRows] = {}
            for fld in schema:
                spec = specs[fld.name]
                dataset = open_spec(file, spec) if spec.dataset in file else None
                if not isinstance(dataset, (h5py.Dataset, SparseRows)):
                    raise ShardCorruptError(f"{self.path}: dataset {fld.name!r} is missing")
                if not self.allow_external:
                    _check_contained(self.path, file, fld.name, dataset)
                datasets[fld.name] = dataset
            if own is not None:
                plain = [d for d in datasets.values() if isinstance(d, h5py.Dataset)]
                load_filters(plain, self.path)
            _check_claimed_rows(self.path, file, length, schema)
            _check_chunk_sizes(self.path, datasets)
            for name, dataset in datasets.items():
                if dataset.shape[0] < length:
                    raise ShardCorruptError(
                        f"{self.path}: dataset {name!r} has {dataset.shape[0]} rows, "
                        f"expected {length}"
                    )
        except BaseException:
            file.close()
            raise
        if self.backend_options.get("decode_cf", False):
            # NOTE: decoded fields keep their names and shapes; only their dtype changes,
            # and the reads below take dtypes from the datasets, not from the schema.
            self._cf = CFFields(
                schema, lambda n: _attributes(datasets[n]), hdf5_minc(file, datasets), self.path
            )
            schema = self._cf.schema
        self._length = length
        self._schema = schema
        opened = _File(
            file,
            datasets,
            {n: isinstance(d, h5py.Dataset) and _reads_raw_chunks(d) for n, d in datasets.items()},
            {n: s.member for n, s in specs.items() if s.member is not None},
        )
        opened.deflate = {
            n: DeflateBound.of(self.path, n, d)
            for n, d in datasets.items()
            if isinstance(d, h5py.Dataset)
        }
        if not is_remote(self.path):
            self._locate_rows(opened)
        # Only rows read at their file positions through shardio's map touch mapped
        # pages; HDF5's own reads copy into its buffers.
        self.touches_mapped_pages = opened.rows_file is not None and opened.rows_file.mapped
        return opened

    def _locate_rows(self, opened: _File) -> None:
        opened.tables = {
            f.name: _RowTable.of(dataset)
            if not f.variable and isinstance(dataset := opened.datasets[f.name], h5py.Dataset)
            else None
            for f in self.schema
        }
        if not any(opened.tables.values()):
            return
        pread = self.read_mode == "pread"
        local = self.path.removeprefix("file://")
        opened.rows_file = PositionedFile(local, "pread" if pread else "map")

    def _open_file(self) -> h5py.File:
        cache = {
            k: v for k, v in self.backend_options.items() if k in ("rdcc_nbytes", "rdcc_nslots")
        }
        return open_hdf5(self.path, self.backend_options.get("storage_options"), **cache)

    def _close(self, handle: _File) -> None:
        handle.datasets.clear()
        if handle.rows_file is not None:
            handle.rows_file.close()
        handle.file.close()

    def value_ranges(self, indices: np.ndarray) -> ValueRanges | None:
        handle = self.handle
        ranges = []
        for fld in self.schema:
            table = handle.tables.get(fld.name)
            positions = None if table is None else table.positions(indices)
            if table is None or positions is None:
                return None  # stored through HDF5's own layout: the whole file is checked
            ranges.append((self.path, positions, np.full(len(indices), table.row_bytes)))
        return ranges

    def byte_ranges(self, start: int, stop: int) -> list[FileRange]:
        if stop <= start or is_remote(self.path):
            return []
        handle = self.handle
        if handle.hints is None:  # chunk_iter over every chunk: only for readers that hint
            handle.hints = {
                f.name: handle.tables.get(f.name) or _hint_source(dataset)
                for f in self.schema
                if not f.variable and isinstance(dataset := handle.datasets[f.name], h5py.Dataset)
            }
        spans = [source.spans(start, stop) for source in handle.hints.values() if source]
        if not spans:
            return []
        offsets = np.concatenate([o for o, _ in spans])
        lengths = np.concatenate([n for _, n in spans])
        return coalesce_ranges(self.path.removeprefix("file://"), offsets, lengths, _HINT_GAP)

    def _drop_pages(self) -> ReleaseResult | None:
        """madvise(MADV_DONTNEED) on shardio's map of the file; else reopen."""
        rows_file = self.handle.rows_file
        return None if rows_file is None else rows_file.drop_pages()

    def read_many(self, indices: np.ndarray) -> Columns:
        return self.read_into(indices, {})

    def read_into(self, indices: np.ndarray, out: Mapping[str, np.ndarray]) -> Columns:
        handle = self.handle
        unique, order = sorted_rows(indices)
        targets = self._cf.raw_out(out) if self._cf else out
        columns: Columns = {}
        tables: dict[str, np.ndarray] = {}  # a table's rows, read once for all its columns
        decoded = self._cf.decoders if self._cf else {}
        for fld in self.schema:
            # Rows at their file positions where the table serves them (one positioned
            # read), else through h5py.
            table = handle.tables.get(fld.name)
            positions = None if table is None else table.positions(unique)
            if positions is not None:
                assert handle.rows_file is not None  # a table is only made with the file
                data = np.empty((len(unique), *fld.shape), dtype=handle.datasets[fld.name].dtype)
                handle.rows_file.read_rows(positions, [data])
            else:
                dataset = handle.datasets[fld.name]
                cached = tables.get(dataset.name)
                if cached is not None:
                    data = cached
                else:
                    bound = handle.deflate.get(fld.name)
                    if bound is not None:
                        bound.check(unique)
                    data = _gather(dataset, unique, handle.raw_chunks[fld.name])
                    if fld.name in handle.members:
                        tables[dataset.name] = data
            if fld.name in handle.members:
                data = np.ascontiguousarray(data[handle.members[fld.name]])
            if fld.dtype.kind in TIME_KINDS and fld.name not in decoded and not fld.variable:
                data = data.view(fld.dtype)  # stored as int64 units (shardio.core.timevalues)
            if fld.variable:
                relabel = fld.kind == "ragged" and not fld.dtype.isnative and vlen_reads_unswapped()
                values = [
                    bytes(v)
                    if fld.kind == "bytes"
                    else (
                        np.asarray(v).view(fld.dtype)
                        if relabel or (fld.dtype.kind in TIME_KINDS and fld.name not in decoded)
                        else np.asarray(v, fld.dtype)
                    )
                    for v in _as_bytes(data, fld)
                ]
                self.bytes_read += sum(len(v) if isinstance(v, bytes) else v.nbytes for v in values)
                columns[fld.name] = values if order is None else [values[i] for i in order]
            else:
                self.bytes_read += data.nbytes
                columns[fld.name] = put_rows(data, order, targets.get(fld.name))
        return self._cf.into(columns, out) if self._cf else columns


def _attributes(dataset: h5py.Dataset | SparseRows) -> dict[str, Any]:
    """A dataset's attributes (none for a sparse matrix), for CF decoding."""
    if not isinstance(dataset, h5py.Dataset):
        return {}
    try:
        return dict(dataset.attrs)
    except (OSError, TypeError, ValueError, RuntimeError):
        return {}


def _as_bytes(data: np.ndarray, fld: Field) -> list[Any]:
    if fld.kind != "bytes":
        return list(data)
    return [
        v.encode() if isinstance(v, str) else (v.tobytes() if isinstance(v, np.ndarray) else v)
        for v in data
    ]


def _check_chunk_sizes(path: str, datasets: Mapping[str, Any]) -> None:
    """Refuse chunks declared larger than `MAX_CHUNK_BYTES`: HDF5 allocates a whole
    chunk to read one row of it."""
    for name, dataset in datasets.items():
        chunks = getattr(dataset, "chunks", None)
        if chunks is None:
            continue
        declared = math.prod(int(c) for c in chunks) * dataset.dtype.itemsize
        if declared > MAX_CHUNK_BYTES:
            raise ShardCorruptError(
                f"{path}: dataset {name!r} declares chunks of {declared} bytes ({chunks} of "
                f"{dataset.dtype}), more than the {MAX_CHUNK_BYTES} shardio reads: corrupt, "
                "or rechunk it (h5repack -l CHUNK=...)"
            )


def _reads_raw_chunks(dataset: h5py.Dataset) -> bool:
    """True when a chunk's stored bytes are its values: chunked, no filters, whole rows."""
    return (
        dataset.chunks is not None
        and dataset.id.get_create_plist().get_nfilters() == 0
        and tuple(dataset.chunks[1:]) == tuple(dataset.shape[1:])
        and dataset.dtype.kind in "biuf"
        and dataset.dtype.fields is None
    )


def _gather(dataset: h5py.Dataset | SparseRows, unique: np.ndarray, raw: bool) -> np.ndarray:
    """Rows ``unique`` (sorted, distinct) of ``dataset``, reading each chunk once.

    h5py's own fancy indexing (``dataset[list]``) builds one hyperslab per row and can
    take a second for 256 rows, so rows are read chunk by chunk instead: the raw chunk
    bytes where they are the values, else one slice per chunk touched.
    """
    if isinstance(dataset, SparseRows):
        return dataset[unique]
    if len(unique) == 0:
        return dataset[0:0]
    first, last = int(unique[0]), int(unique[-1])
    if last - first + 1 == len(unique):
        return dataset[first : last + 1]
    # h5py properties cost an HDF5 call each: read them once, not per chunk.
    chunks, dtype, shape = dataset.chunks, dataset.dtype, dataset.shape
    rows = chunks[0] if chunks is not None else 1
    groups = unique // rows
    starts = np.flatnonzero(np.diff(groups, prepend=-1))
    ends = np.append(starts[1:], len(unique))
    out = np.empty((len(unique), *shape[1:]), dtype=dtype)
    trailing = (0,) * (len(shape) - 1)
    read_chunk = dataset.id.read_direct_chunk
    if raw:
        # Chunks are read into memory we own: straight into the output row where a
        # chunk is one row, else into one reused buffer.
        out_rows = out.reshape(len(unique), -1).view(np.uint8)
        scratch = np.empty(int(np.prod(chunks)) * dtype.itemsize, dtype=np.uint8)
        block = scratch.view(dtype).reshape(chunks)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        wanted = unique[start:end]
        if raw:
            base = int(groups[start]) * rows
            try:
                if rows == 1:
                    read_chunk((base, *trailing), out=out_rows[start])
                    continue
                read_chunk((base, *trailing), out=scratch)
            except RemoteReadError:  # a network fault, not an unallocated chunk
                raise
            except (KeyError, RuntimeError, OSError, ValueError):  # unallocated: fill values
                out[start:end] = dataset[wanted[0] : wanted[-1] + 1][wanted - wanted[0]]
                continue
            out[start:end] = block[wanted - base]
        else:
            low = int(wanted[0])
            out[start:end] = dataset[low : int(wanted[-1]) + 1][wanted - low]
    return out


class HDF5Writer(ShardFileWriter):
    """Writes a shardio HDF5 shard: one resizable, chunked dataset per field.

    ``in_memory=True`` builds the file in memory and writes its image with plain
    Python I/O on close. NOTE: when a write fails inside the HDF5 library (a full
    disk), the library is left in a state that segfaults at interpreter exit; with
    the file built in memory, a full disk is an ordinary ``OSError`` and the process
    survives. It costs about twice the shard's size in memory while closing.
    """

    format = "hdf5"
    libraries = ("h5py",)
    options = frozenset({"compression", "compression_opts", "shuffle", "chunk_bytes", "in_memory"})
    chunk_bytes = 64 * 1024

    @classmethod
    def compression_options(cls, name: str, level: int | None) -> dict[str, Any]:
        if name not in ("gzip", "lzf"):
            raise InvalidOptionError(
                f"hdf5 output supports compressor 'gzip' or 'lzf', but got compressor={name!r}"
            )
        if name == "lzf":
            if level is not None:
                raise InvalidOptionError("the lzf compressor has no level; pass compressor='lzf'")
            return {"compression": "lzf"}
        return {"compression": "gzip", "compression_opts": 4 if level is None else level}

    @classmethod
    def conversion_options(cls, max_shard_rows: int) -> dict[str, Any]:
        """Shards built in memory: see the class's NOTE on a full disk."""
        return {"in_memory": True}

    def __init__(self, path: str, schema: Schema, **options: Any) -> None:
        super().__init__(path, schema, **options)
        self._in_memory = bool(options.get("in_memory", False))
        if self._in_memory:
            self._file = h5py.File(path, "w", driver="core", backing_store=False)
        else:
            self._file = h5py.File(path, "w", locking=False)
        chunk_bytes = int(options.get("chunk_bytes", self.chunk_bytes))
        filters = {
            k: options[k] for k in ("compression", "compression_opts", "shuffle") if k in options
        }
        self._datasets: dict[str, h5py.Dataset] = {}
        for fld in schema:
            if fld.variable:
                dtype = h5py.vlen_dtype(stored_dtype(fld.dtype))
                rows = max(1, chunk_bytes // 1024)
                shape: tuple[int, ...] = ()
            else:
                if 0 in fld.shape:  # HDF5 chunks need every dimension >= 1
                    self._file.close()
                    raise UnsupportedFeatureError(
                        f"field {fld.name!r} has shape {fld.shape}, which holds no values: "
                        "HDF5 cannot store it (chunks need every dimension >= 1); drop the "
                        "field, or write format='mmap', 'lmdb' or 'zarr'"
                    )
                dtype = stored_dtype(fld.dtype)  # HDF5 has no dates: int64 units
                fixed_rows = self.chunk_rows(options, fld.sample_nbytes)
                assert fixed_rows is not None  # chunk_bytes is set
                rows = fixed_rows
                shape = fld.shape
            self._datasets[fld.name] = self._file.create_dataset(
                fld.name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                chunks=(rows, *shape),
                dtype=dtype,
                **filters,
            )

    def append(self, columns: Columns, count: int) -> None:
        start, stop = self.count, self.count + count
        for fld in self.schema:
            dataset = self._datasets[fld.name]
            dataset.resize(stop, axis=0)
            column = columns[fld.name]
            if fld.variable:
                # NOTE: slice assignment of an object array makes h5py broadcast values
                # of one length as a 2-D array ("Can't broadcast"); write_direct of a
                # vlen-typed array writes them as they are.
                values = np.empty(count, dtype=dataset.dtype)
                for i, value in enumerate(column):
                    values[i] = (
                        np.frombuffer(value, np.uint8)
                        if isinstance(value, bytes)
                        else as_stored(np.asarray(value, fld.dtype))
                    )
                if count:
                    dataset.write_direct(values, dest_sel=np.s_[start:stop])
            else:
                dataset[start:stop] = as_stored(np.asarray(column, fld.dtype))
        self.count = stop

    def close(self) -> None:
        if not self._file:
            return
        self._file.attrs[SCHEMA_ATTR] = json.dumps(self.schema.to_json())
        self._file.attrs[COUNT_ATTR] = self.count
        self._file.flush()
        image = self._file.id.get_file_image() if self._in_memory else None
        self._file.close()
        if image is not None:
            with open(self.path, "wb") as handle:
                handle.write(image)
                handle.flush()
                os.fsync(handle.fileno())

    def abort(self) -> None:
        if self._in_memory and self._file:
            self._file.close()  # nothing reached the disk
            return
        super().abort()
