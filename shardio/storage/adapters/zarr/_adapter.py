"""Zarr v3 backend (zarr-python 3).

Any Zarr group reads as a dataset: its arrays that share the first axis become
fields, named by their path in the group. shardio-written shards are groups with
one array per fixed-size field; a variable-length field is two arrays,
``<name>.data`` (values concatenated) and ``<name>.offsets`` (N+1 int64, in
elements). The group's ``shardio`` attribute holds the schema and count.
Remote URLs (``s3://``, ``gs://``, ...) are read through fsspec.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.storage

from shardio.core.errors import (
    DatasetNotFoundError,
    FieldNotFoundError,
    FieldsChosenWarning,
    InvalidOptionError,
    ManifestError,
    RemoteReadError,
    SchemaError,
    ShardCorruptError,
    UnsupportedFeatureError,
)
from shardio.core.safeopen import read_bounded
from shardio.core.schema import Field, Schema
from shardio.core.warn import warn_user
from shardio.memory import FileRange

from ...cf import CFFields
from ...remote import is_remote, remote_errors, storage_options_for, tune
from .._array_choice import (
    Choice,
    axis_reason,
    choose,
    chosen_line,
    is_anndata,
    left_out_line,
    together,
)
from .._sparse import SparseRows
from ..base import Columns, ShardFileWriter, ShardReader, put_rows, sorted_rows
from ..source import Skipped
from ._bounds import MAX_CHUNK_BYTES, BoundedStore, chunk_nbytes

__all__ = ["ZarrReader", "ZarrWriter", "ATTR", "make_compressors"]

ATTR = "shardio"
# Gathering a variable field's values in one selection is worth it until the index
# array itself grows large; past this many elements values are read range by range.
_MAX_GATHER_ELEMENTS = 8 * 1024 * 1024


@dataclass
class _Column:
    field: Field
    data: Any  # zarr.Array
    offsets: Any | None = None
    raw: _RawChunks | None = None

    def __post_init__(self) -> None:
        if self.offsets is None:
            self.raw = _RawChunks.of(self.data)


@dataclass
class _Group:
    group: Any
    columns: dict[str, _Column]


def _arrays(column: _Column) -> list[Any]:
    """The Zarr arrays behind a column (a sparse matrix's three), to bound."""
    found: list[Any] = []
    for part in (column.data, column.offsets):
        if isinstance(part, SparseRows):
            found += [part.data, part.indices, part.indptr]
        elif part is not None:
            found.append(part)
    return found


def _store(path: str, options: dict[str, Any]) -> Any:
    """What ``zarr.open`` reads: a local path, or for a URL a store with shardio's
    remote defaults whose faults raise `RemoteReadError` naming the URL."""
    if not is_remote(path):
        local = path.removeprefix("file://")
        if not os.path.isdir(local):
            return local  # zarr says what is wrong
        return BoundedStore(zarr.storage.LocalStore(local, read_only=True))
    given = options.get("storage_options")
    with remote_errors(path):
        store = zarr.storage.FsspecStore.from_url(
            path, storage_options=storage_options_for(path, given), read_only=True
        )
    tune(store.fs, path)
    return BoundedStore(_RemoteStore(store, path), where=path)


class _RemoteStore(zarr.storage.WrapperStore[Any]):
    """An fsspec store whose reads raise `RemoteReadError` on a network fault."""

    def __init__(self, store: Any, url: str) -> None:
        super().__init__(store)
        self.url = url

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        with remote_errors(f"{self.url.rstrip('/')}/{key}"):
            return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        with remote_errors(self.url):
            return await self._store.get_partial_values(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        with remote_errors(f"{self.url.rstrip('/')}/{key}"):
            return bool(await self._store.exists(key))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return self._listed(self._store.list_dir(prefix))

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._listed(self._store.list_prefix(prefix))

    def list(self) -> AsyncIterator[str]:
        return self._listed(self._store.list())

    async def _listed(self, items: AsyncIterator[str]) -> AsyncIterator[str]:
        with remote_errors(self.url):
            async for item in items:
                yield item


def _foreign_fields(
    path: str, group: Any, wanted: list[str] | None, dim: str | None = None
) -> list[tuple[Field, Any]]:
    """The fields of a Zarr group shardio did not write, chosen by the rule HDF5 files
    follow (`_array_choice`): a first dimension xarray names, AnnData's cells, else
    the largest set of arrays sharing a first axis."""
    # Sorted: zarr lists members in the order its concurrent store listing finishes,
    # which differs between opens (and so between processes).
    members = sorted(group.members(max_depth=None), key=lambda item: item[0])
    sparse = _sparse_matrices(members)
    arrays: dict[str, Any] = {
        name: node
        for name, node in members
        if isinstance(node, zarr.Array) and name.rpartition("/")[0] not in sparse
    }
    arrays = dict(sorted({**arrays, **sparse}.items()))
    if wanted is not None:
        missing = [n for n in wanted if n not in arrays]
        if missing:
            raise FieldNotFoundError(
                f"{path}: no array {missing[0]!r}; arrays are {sorted(arrays)}"
            )
        chosen = {n: arrays[n] for n in wanted}
        lengths = {n: a.shape[0] if a.ndim else 0 for n, a in chosen.items()}
        if len(set(lengths.values())) > 1:
            listing = ", ".join(f"{n!r}: {length}" for n, length in lengths.items())
            raise SchemaError(
                f"{path}: the arrays asked for disagree on their first axis ({listing}); "
                "pick arrays of one length with fields= (--fields)"
            )
    else:
        chosen = _choose_arrays(path, group, arrays, dim)
    result = []
    for name, array in chosen.items():
        dtype = np.dtype(array.dtype)
        if dtype.hasobject or dtype.kind in "TU":
            if array.ndim != 1:
                raise UnsupportedFeatureError(f"{path}: array {name!r} of strings must be 1-D")
            result.append((Field(name, np.dtype(np.uint8), (), "bytes"), array))
        elif array.ndim == 0:
            raise SchemaError(f"{path}: array {name!r} is a scalar; a field needs a first axis")
        else:
            result.append((Field(name, dtype, array.shape[1:], "array"), array))
    return result


def _sparse_matrices(members: list[tuple[str, Any]]) -> dict[str, SparseRows]:
    """CSR matrices stored as groups (AnnData's sparse X), each read as dense rows."""
    found = {}
    for name, node in members:
        if isinstance(node, zarr.Group) and node.attrs.get("encoding-type") == "csr_matrix":
            try:
                found[name] = SparseRows(node)
            except (KeyError, TypeError, ValueError):
                continue  # left as the arrays it holds
    return found


def _choose_arrays(
    path: str, group: Any, arrays: dict[str, Any], dim: str | None
) -> dict[str, Any]:
    encoding = group.attrs.get("encoding-type")
    layout = "anndata" if is_anndata(encoding, (n for n, _ in group.members())) else "zarr"
    candidates = []
    skipped = []
    for name, array in arrays.items():
        if array.ndim == 0:
            skipped.append(Skipped(name, "is a scalar, with no first axis to read samples along"))
            continue
        dtype = np.dtype(array.dtype)
        if (dtype.hasobject or dtype.kind in "TU") and array.ndim != 1:
            skipped.append(Skipped(name, "holds strings in more than one dimension"))
            continue
        axis = "" if isinstance(array, SparseRows) else _first_dimension(array)
        candidates.append(Choice(name, name, int(array.shape[0]), axis))
    if not candidates:
        listing = "; ".join(str(s) for s in skipped) or "it holds no arrays"
        raise SchemaError(
            f"{path} holds no array with a first axis to read samples from ({listing})"
        )
    picked, others = choose(path, candidates, dim, layout)
    left = [Skipped(c.name, axis_reason(c, picked[0], layout)) for c in others] + skipped
    if left:
        for line in (
            chosen_line(path, picked, layout),
            left_out_line(path, left, together(others) or [s.name for s in left]),
        ):
            warn_user(line, FieldsChosenWarning)
    return {c.name: arrays[c.name] for c in picked}


def _attributes(array: Any) -> dict[str, Any]:
    """An array's attributes, with the fill value xarray keeps in Zarr v2 metadata."""
    if isinstance(array, SparseRows):
        return {}
    attrs = dict(array.attrs)
    fill = getattr(array.metadata, "fill_value", None)
    if "_FillValue" not in attrs and array.metadata.zarr_format == 2 and fill is not None:
        attrs["_FillValue"] = fill
    return attrs


def _first_dimension(array: Any) -> str:
    """The name xarray gives an array's first dimension (Zarr v3 `dimension_names`,
    or the `_ARRAY_DIMENSIONS` attribute it writes to Zarr v2), else ""."""
    names = getattr(array.metadata, "dimension_names", None)
    if not names:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
    if isinstance(names, (list, tuple)) and names and isinstance(names[0], str):
        return names[0]
    return ""


class ZarrReader(ShardReader[_Group]):
    """Reads a shardio Zarr shard or any Zarr v3 group."""

    format = "zarr"
    remote = True
    holds_caches = True
    options = frozenset({"storage_options", "decode_cf", "dim"})
    _cf: CFFields | None = None

    @classmethod
    def descriptors_per_shard(cls, schema: Schema) -> int:
        return 1  # chunk files are open only while read

    def _open(self) -> _Group:
        group = self._open_node()
        store = group.group.store
        for column in group.columns.values():
            for array in _arrays(column):
                declared = chunk_nbytes(array)
                if declared > MAX_CHUNK_BYTES:
                    raise ShardCorruptError(
                        f"{self.path}: array {array.path!r} declares chunks of {declared} "
                        f"bytes ({tuple(array.chunks)} of {array.dtype}), more than the "
                        f"{MAX_CHUNK_BYTES} shardio reads: corrupt, or rechunk it"
                    )
                if isinstance(store, BoundedStore):
                    store.bound(array)
        local = isinstance(store, BoundedStore) and store.local  # its files can be counted
        if local and group.group.attrs.get(ATTR) is None:
            _check_declared_rows(self.path, self._length or 0, group.columns)
        return group

    def _open_node(self) -> _Group:
        try:
            node = zarr.open(_store(self.path, self.backend_options), mode="r")
        except FileNotFoundError:
            raise DatasetNotFoundError(f"no Zarr group or array at {self.path}") from None
        except RemoteReadError:
            raise
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise ShardCorruptError(f"cannot open Zarr store {self.path}: {exc}") from exc
        if isinstance(node, zarr.Array):
            name = self.path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr") or "data"
            columns = {name: _Column(Field(name, np.dtype(node.dtype), node.shape[1:]), node)}
            schema = Schema(tuple(c.field for c in columns.values())).select(
                self.requested_fields, where=self.path
            )
            self._length = node.shape[0]
            self._schema = schema
            return _Group(node, columns)
        info = node.attrs.get(ATTR)
        if info is not None:
            return self._open_shardio(node, info)
        dim = self.backend_options.get("dim")
        fields = _foreign_fields(self.path, node, self.requested_fields, dim)
        schema = Schema(tuple(f for f, _ in fields))
        if self.backend_options.get("decode_cf", False):
            arrays = {f.name: a for f, a in fields}
            self._cf = CFFields(schema, lambda n: _attributes(arrays[n]))
            schema = self._cf.schema
        self._schema = schema
        self._length = fields[0][1].shape[0]
        return _Group(node, {f.name: _Column(f, a) for f, a in fields})

    def _open_shardio(self, group: Any, info: Any) -> _Group:
        try:
            full = Schema.from_json(info["schema"])
            count = int(info["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{self.path}: malformed '{ATTR}' attribute: {exc}") from exc
        schema = self._select(full)
        columns = {}
        for fld in schema:
            try:
                if fld.variable:
                    columns[fld.name] = _Column(
                        fld, group[f"{fld.name}.data"], group[f"{fld.name}.offsets"]
                    )
                else:
                    columns[fld.name] = _Column(fld, group[fld.name])
            except KeyError:
                raise ShardCorruptError(
                    f"{self.path}: the arrays of field {fld.name!r} are missing"
                ) from None
        for column in columns.values():
            rows = column.data.shape[0] if column.offsets is None else column.offsets.shape[0] - 1
            if rows < count:
                raise ShardCorruptError(
                    f"{self.path}: field {column.field.name!r} has {rows} rows, expected {count}"
                )
        stored = info.get("stored_chunks")
        if isinstance(stored, dict):
            for name, expected in stored.items():
                _check_chunks_present(self.path, group, name, expected)
        self._length = count
        self._schema = schema
        return _Group(group, columns)

    def _close(self, handle: _Group) -> None:
        handle.columns.clear()

    def files(self) -> list[str]:
        if is_remote(self.path):
            return []
        root = self.path.removeprefix("file://")
        return sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names)

    def byte_ranges(self, start: int, stop: int) -> list[FileRange]:
        if stop <= start:
            return []
        ranges: list[FileRange] = []
        for column in self.handle.columns.values():
            if column.offsets is None:
                ranges += _stored_files(column.data, start, stop)
                continue
            ranges += _stored_files(column.offsets, start, stop + 1)
            first, last = (int(x) for x in column.offsets.get_coordinate_selection([start, stop]))
            if last > first:
                ranges += _stored_files(column.data, first, last)
        return ranges

    def read_many(self, indices: np.ndarray) -> Columns:
        return self.read_into(indices, {})

    def read_into(self, indices: np.ndarray, out: Mapping[str, np.ndarray]) -> Columns:
        handle = self.handle
        unique, order = sorted_rows(indices)
        targets = self._cf.raw_out(out) if self._cf else out
        columns: Columns = {}
        fixed = [(n, c) for n, c in handle.columns.items() if c.offsets is None]
        gathered = dict(
            zip(
                [name for name, _ in fixed],
                _gather_many([(column.data, unique, column.raw) for _, column in fixed]),
                strict=True,
            )
        )
        for name, column in handle.columns.items():
            if column.offsets is not None:
                values = self._read_variable(column, unique)
                columns[name] = values if order is None else [values[i] for i in order]
                continue
            data = gathered[name]
            if _stored_as_bytes(column.field) and data.dtype == np.uint8:
                data = data.view(column.field.dtype).reshape(len(unique), *column.field.shape)
            elif column.field.kind == "array" and data.dtype != column.field.dtype:
                data = data.astype(column.field.dtype)  # zarr hands back native byte order
            if column.field.kind == "bytes":  # a foreign array of objects
                values = [v if isinstance(v, bytes) else str(v).encode() for v in data]
                self.bytes_read += sum(len(v) for v in values)
                columns[name] = values if order is None else [values[i] for i in order]
            else:
                self.bytes_read += data.nbytes
                columns[name] = put_rows(data, order, targets.get(name))
        return self._cf.into(columns, out) if self._cf else columns

    def _read_variable(self, column: _Column, unique: np.ndarray) -> list[Any]:
        offsets = column.offsets
        first, after = _gather_many([(offsets, unique, None), (offsets, unique + 1, None)])
        starts = first.astype(np.int64)
        ends = after.astype(np.int64)
        lengths = ends - starts
        total = int(lengths.sum())
        if 0 < total <= _MAX_GATHER_ELEMENTS:
            positions = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
            positions += np.arange(total)
            flat = column.data.get_orthogonal_selection((positions,))
            pieces = np.split(flat, np.cumsum(lengths)[:-1])
        else:
            pieces = [
                column.data[s:e] if e > s else np.empty(0, column.field.dtype)
                for s, e in zip(starts, ends, strict=True)
            ]
        self.bytes_read += total * column.field.dtype.itemsize
        if column.field.kind == "bytes":
            return [p.tobytes() for p in pieces]
        return [np.ascontiguousarray(p) for p in pieces]


class _RawChunks:
    """Reads an uncompressed local array's chunk files directly.

    zarr-python 3 spends 0.3-2 ms of per-call overhead on every chunk it reads, which
    dominates random access; where a chunk file simply holds the chunk's values (one
    bytes codec, no compressor, filter or sharding, on a local store) shardio reads
    the file itself.
    """

    def __init__(self, array: Any, root: str) -> None:
        self.array = array
        self.root = os.path.join(root, array.path)
        endian = getattr(array.serializer, "endian", None)
        dtype = np.dtype(array.dtype)
        if endian is not None:
            dtype = dtype.newbyteorder(
                "<" if str(getattr(endian, "value", endian)) == "little" else ">"
            )
        self.dtype = dtype
        self.chunks = tuple(array.chunks)
        self.fill = array.fill_value

    @classmethod
    def of(cls, array: Any) -> _RawChunks | None:
        try:
            return cls._of(array)
        except (AttributeError, TypeError, ValueError):  # zarr v2 metadata, exotic stores
            return None

    @classmethod
    def _of(cls, array: Any) -> _RawChunks | None:
        root = getattr(array.store_path.store, "root", None)
        if (
            root is None
            or type(array.serializer).__name__ != "BytesCodec"
            or array.compressors
            or array.filters
            or array.shards is not None
            or array.order != "C"
            or tuple(array.chunks[1:]) != tuple(array.shape[1:])
            or np.dtype(array.dtype).hasobject
        ):
            return None
        return cls(array, str(root))

    def read(self, chunk: int) -> np.ndarray:
        key = self.array.metadata.encode_chunk_key((chunk,) + (0,) * (len(self.chunks) - 1))
        limit = math.prod(self.chunks) * self.dtype.itemsize
        try:
            data = read_bounded(os.path.join(self.root, key), limit, "chunk of this array")
        except FileNotFoundError:  # never written: the fill value
            return np.full(self.chunks, self.fill, dtype=self.dtype)
        return np.frombuffer(data, dtype=self.dtype).reshape(self.chunks)


def _check_declared_rows(path: str, rows: int, columns: Mapping[str, _Column]) -> None:
    """Refuse a foreign group declaring far more rows than its files can hold (Zarr
    leaves chunks of fill values unwritten, but not 8192 values per stored byte)."""
    values = sum(rows * math.prod(int(n) for n in c.data.shape[1:]) for c in columns.values())
    stored = sum(os.path.getsize(f) for f in _walk_files(path))
    if values > 8192 * (stored + 4096):
        raise ShardCorruptError(
            f"{path} declares {rows} rows ({values} values), which its {stored} bytes of "
            "files cannot hold: corrupt, or not written"
        )


def _walk_files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]


def _stored_files(array: Any, first: int, last: int) -> list[FileRange]:
    """The whole stored objects (chunk or shard files) holding rows ``[first, last)`` of
    an array in a local store; empty for other stores."""
    if isinstance(array, SparseRows):
        return []  # where a cell's values lie is known only after reading indptr
    root = getattr(array.store_path.store, "root", None)
    if root is None or 0 in array.shape:
        return []
    grid = array.shards or array.chunks  # a sharded array stores one object per shard
    rows = grid[0]
    others = [range(-(-size // step)) for size, step in zip(array.shape[1:], grid[1:], strict=True)]
    found: list[FileRange] = []
    for chunk in range(first // rows, (last - 1) // rows + 1):
        for rest in itertools.product(*others):
            key = array.metadata.encode_chunk_key((chunk, *rest))
            path = os.path.join(str(root), array.path, key)
            try:
                size = os.path.getsize(path)
            except OSError:  # never written: read as the fill value
                continue
            found.append((path, 0, size))
    return found


def _stored_chunk_count(array: Any) -> int:
    return len(_stored_files(array, 0, array.shape[0])) if array.shape[0] else 0


def _check_chunks_present(path: str, group: Any, name: str, expected: Any) -> None:
    """As many chunk files as the writer stored: a missing one would otherwise read
    back as fill values, silently."""
    try:
        array = group[name]
    except KeyError:
        raise ShardCorruptError(f"{path}: array {name!r} is missing") from None
    if getattr(array.store_path.store, "root", None) is None:
        return
    found = _stored_chunk_count(array)
    if found != expected:
        raise ShardCorruptError(
            f"{path}: array {name!r} has {found} chunk files, but {expected!r} were written; "
            "a missing one would read as fill values"
        )


def _gather_many(wanted: list[tuple[Any, np.ndarray, _RawChunks | None]]) -> list[np.ndarray]:
    """Rows ``unique`` (sorted, distinct) of each ``(array, unique, raw)``, reading each
    chunk once: through ``raw`` where the chunk files can be read directly, and what
    goes through zarr in one trip to its event loop, every chunk of every array at once.

    NOTE: a trip costs about 1 ms (zarr 3 runs each read on its loop's thread and
    waits for it): reading a sample's six fields one after another took 6-11 ms."""
    found: list[np.ndarray | None] = []
    # (its place in found, array, unique, spans, and where each span's rows start and
    # end in unique; none for a run, which is its one span whole)
    through_zarr: list[
        tuple[int, Any, np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]
    ] = []
    for array, unique, raw in wanted:
        if isinstance(array, SparseRows):
            found.append(array[unique])
            continue
        if len(unique) == 0:
            found.append(np.asarray(array[0:0]))
            continue
        rows = array.chunks[0]
        groups = unique // rows
        starts = np.flatnonzero(np.diff(groups, prepend=-1)).tolist()
        ends = [*starts[1:], len(unique)]
        if raw is not None:
            out = np.empty((len(unique), *array.shape[1:]), dtype=raw.dtype)
            for start, end in zip(starts, ends, strict=True):
                chunk = int(groups[start])
                out[start:end] = raw.read(chunk)[unique[start:end] - chunk * rows]
            found.append(out)
            continue
        first, last = int(unique[0]), int(unique[-1])
        if last - first + 1 == len(unique):  # a run: one slice, taken as it comes
            spans, parts = [(first, last + 1)], []
        else:  # one slice per chunk touched
            parts = list(zip(starts, ends, strict=True))
            spans = [(int(unique[s]), int(unique[e - 1]) + 1) for s, e in parts]
        through_zarr.append((len(found), array, unique, spans, parts))
        found.append(None)
    blocks = _fetch_concurrently([(array, spans) for _, array, _, spans, _ in through_zarr])
    for (at, _, unique, spans, parts), fetched in zip(through_zarr, blocks, strict=True):
        if not parts:
            found[at] = fetched[0]
            continue
        found[at] = np.concatenate(
            [
                block[unique[s:e] - low]
                for block, (low, _), (s, e) in zip(fetched, spans, parts, strict=True)
            ]
        )
    assert all(rows is not None for rows in found)
    return found  # type: ignore[return-value]  # every None was filled just above


def _fetch_concurrently(
    wanted: list[tuple[Any, list[tuple[int, int]]]],
) -> list[list[np.ndarray]]:
    """Slices ``[low, high)`` of each array (``(array, spans)``), all in one trip to
    zarr's event loop."""
    if not wanted:
        return []
    try:
        from zarr.core.sync import sync
    except ImportError:  # pragma: no cover - a zarr without its sync helper
        return [[np.asarray(array[low:high]) for low, high in spans] for array, spans in wanted]

    async def fetch() -> list[Any]:
        return await asyncio.gather(
            *(
                array.async_array.getitem((slice(low, high),))
                for array, spans in wanted
                for low, high in spans
            )
        )

    blocks = iter(sync(fetch()))
    return [[np.asarray(next(blocks)) for _ in spans] for _, spans in wanted]


def _stored_as_bytes(fld: Field) -> bool:
    """Structured, fixed-length bytes and string dtypes have no stable Zarr v3
    specification (zarr-python warns that other readers may not read them)."""
    return fld.dtype.fields is not None or fld.dtype.kind in "SUV"


def _stored_layout(fld: Field) -> tuple[tuple[int, ...], Any]:
    """Per-row shape and dtype of a fixed field's array.

    Dtypes without a stable Zarr v3 specification are stored as raw bytes (a uint8
    row per sample); the schema restores the dtype on read.
    """
    if _stored_as_bytes(fld):
        return (fld.sample_nbytes,), np.uint8
    return fld.shape, fld.dtype


def make_compressors(name: str | None, level: int | None = None) -> Any:
    """Zarr v3 compressor codecs for ``name`` (``zstd``, ``blosc``, ``gzip`` or None)."""
    if name is None or name == "none":
        return None
    if name == "zstd":
        return [zarr.codecs.ZstdCodec(level=3 if level is None else level)]
    if name == "blosc":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=5 if level is None else level)]
    if name == "gzip":
        return [zarr.codecs.GzipCodec(level=5 if level is None else level)]
    raise InvalidOptionError(
        f"compressor should be one of 'zstd', 'blosc', 'gzip' or None, but got compressor={name!r}"
    )


def _chunk_encoder(array: Any) -> Any:
    """A function encoding one chunk (a C-order array) as zarr-python reads it back for
    ``array``, or None when its codecs are not the plain ones shardio creates.

    NOTE: the codecs are read back from the array's own metadata: bytes (little
    endian), then at most one of zstd (the numcodecs implementation zarr-python calls,
    so chunks are byte for byte zarr-python's) or gzip (written with a zero timestamp:
    gzip headers otherwise carry the time of writing, and the same data would give
    different checksums on every run). Anything else goes through zarr-python.
    """
    import gzip

    import numcodecs

    codecs = list(array.metadata.codecs)
    if not codecs or not isinstance(codecs[0], zarr.codecs.BytesCodec):
        return None
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    if endian not in (None, "little"):
        return None
    rest = codecs[1:]
    if not rest:
        return lambda chunk: chunk
    if len(rest) > 1:
        return None
    codec = rest[0]
    if isinstance(codec, zarr.codecs.ZstdCodec):
        return numcodecs.Zstd(level=codec.level, checksum=codec.checksum).encode
    if isinstance(codec, zarr.codecs.GzipCodec):
        level = codec.level
        return lambda chunk: gzip.compress(chunk.tobytes(), compresslevel=level, mtime=0)
    return None


class _ChunkAppender:
    """Appends rows to a local Zarr array by writing whole chunks' files directly.

    zarr-python pays about a millisecond of Python per chunk on top of compression;
    with small chunks (good for random reads) that dominates writing. Chunks are
    encoded here, in a few threads (the compressors release the GIL), and stored
    under the array's chunk keys; the last one is padded with the fill value, as
    zarr-python stores edge chunks.
    """

    def __init__(self, array: Any, directory: str, encode: Any, pool: Any) -> None:
        self.array = array
        self.directory = directory
        self.encode = encode
        self.pool = pool
        self.rows = int(array.chunks[0])
        self.row_shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.written = 0  # rows stored in whole chunks
        self.futures: list[Any] = []

    def add(self, block: np.ndarray) -> None:
        if not len(block):
            return
        self.pending.append(block)
        self.pending_rows += len(block)
        full = self.pending_rows // self.rows
        if not full:
            return
        rows = self._take_pending()
        for k in range(full):
            self._submit(rows[k * self.rows : (k + 1) * self.rows])
        rest = rows[full * self.rows :]
        self.pending = [rest] if len(rest) else []
        self.pending_rows = len(rest)
        self._collect(wait_all=False)

    def _take_pending(self) -> np.ndarray:
        return np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]

    def _submit(self, chunk: np.ndarray) -> None:
        number = self.written // self.rows
        self.futures.append(self.pool.submit(self._store, number, chunk))
        self.written += self.rows

    def _store(self, number: int, chunk: np.ndarray) -> None:
        key = self.array.metadata.encode_chunk_key((number,) + (0,) * len(self.row_shape))
        path = os.path.join(self.directory, *key.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = np.ascontiguousarray(chunk, dtype=self.dtype.newbyteorder("<"))
        with open(path, "wb") as handle:
            handle.write(self.encode(data))

    def _collect(self, wait_all: bool) -> None:
        """Raise the first failure of a chunk write; bound the chunks in flight."""
        running = []
        for future in self.futures:
            if future.done():
                future.result()
            else:
                running.append(future)
        self.futures = running
        limit = 0 if wait_all else 64
        while len(self.futures) > limit:
            self.futures.pop(0).result()

    def finish(self) -> None:
        """Store the last, padded chunk and set the array's length."""
        total = self.written + self.pending_rows
        if self.pending_rows:
            padded = np.full((self.rows, *self.row_shape), self.array.fill_value, self.dtype)
            padded[: self.pending_rows] = self._take_pending()
            self._submit(padded)
            self.pending, self.pending_rows = [], 0
        self._collect(wait_all=True)
        self.array.resize((total, *self.row_shape))


class ZarrWriter(ShardFileWriter):
    """Writes a shardio Zarr v3 group.

    On a local store with plain codecs (none, zstd, gzip) chunks are written directly
    (see `_ChunkAppender`): zstd and uncompressed chunks are the files
    zarr-python writes, and every chunk is the same bytes on every run.
    """

    format = "zarr"
    libraries = ("zarr", "numcodecs")
    #: ``max_chunk_rows`` caps the rows of a chunk: Zarr stores a partial last chunk at
    #: full size, so a shard shorter than one chunk would cost a whole chunk on disk.
    options = frozenset({"compressor", "compression_level", "chunk_bytes", "max_chunk_rows"})
    default_compressor = "zstd"
    chunk_bytes = 256 * 1024

    @classmethod
    def compression_options(cls, name: str, level: int | None) -> dict[str, Any]:
        make_compressors(name, level)
        return {"compressor": name} | ({} if level is None else {"compression_level": level})

    @classmethod
    def chunk_rows(cls, options: Mapping[str, Any], row_nbytes: int) -> int | None:
        rows = super().chunk_rows(options, row_nbytes)
        cap = options.get("max_chunk_rows")
        return rows if rows is None or cap is None else min(rows, max(1, int(cap)))

    @classmethod
    def conversion_options(cls, max_shard_rows: int) -> dict[str, Any]:
        """Chunks no longer than a shard (see ``max_chunk_rows``)."""
        return {"max_chunk_rows": max(1, max_shard_rows)}

    def __init__(self, path: str, schema: Schema, **options: Any) -> None:
        super().__init__(path, schema, **options)
        from concurrent.futures import ThreadPoolExecutor

        self._compressors = make_compressors(
            options.get("compressor"), options.get("compression_level")
        )
        chunk_bytes = int(options.get("chunk_bytes", self.chunk_bytes))
        self._group: Any = zarr.open_group(path, mode="w-")
        self._local = isinstance(self._group.store, zarr.storage.LocalStore)
        self._pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
        self._arrays: dict[str, Any] = {}
        self._direct: dict[str, _ChunkAppender] = {}
        self._ends: dict[str, int] = {}
        for fld in schema:
            if fld.variable:
                rows = max(1, chunk_bytes // fld.dtype.itemsize)
                self._create(f"{fld.name}.data", (), fld.dtype, rows)
                self._create(f"{fld.name}.offsets", (), np.dtype("<i8"), 8192)
                self._append(f"{fld.name}.offsets", np.zeros(1, dtype="<i8"))
                self._ends[fld.name] = 0
            else:
                shape, dtype = _stored_layout(fld)
                rows = self.chunk_rows(options, fld.sample_nbytes)
                assert rows is not None  # chunk_bytes is set
                self._create(fld.name, shape, dtype, rows)

    def _create(self, name: str, shape: tuple[int, ...], dtype: Any, rows: int) -> None:
        array = self._group.create_array(
            name,
            shape=(0, *shape),
            chunks=(rows, *shape),
            dtype=dtype,
            compressors=self._compressors,
        )
        self._arrays[name] = array
        encode = _chunk_encoder(array) if self._local and 0 not in shape else None
        if encode is not None:
            directory = os.path.join(self.path, *name.split("/"))
            self._direct[name] = _ChunkAppender(array, directory, encode, self._pool)

    def _append(self, name: str, rows: np.ndarray) -> None:
        appender = self._direct.get(name)
        if appender is not None:
            appender.add(rows)
        elif len(rows):
            self._arrays[name].append(rows, axis=0)

    def append(self, columns: Columns, count: int) -> None:
        for fld in self.schema:
            column = columns[fld.name]
            if not fld.variable:
                array = np.ascontiguousarray(column, dtype=fld.dtype)
                if _stored_as_bytes(fld):
                    array = array.reshape(count, -1).view(np.uint8)
                self._append(fld.name, array)
                continue
            pieces = [
                np.frombuffer(v, np.uint8) if isinstance(v, bytes) else np.asarray(v, fld.dtype)
                for v in column
            ]
            lengths = np.array([p.size for p in pieces], dtype=np.int64)
            flat = np.concatenate(pieces) if pieces else np.empty(0, fld.dtype)
            self._append(f"{fld.name}.data", flat.astype(fld.dtype, copy=False))
            ends = self._ends[fld.name] + np.cumsum(lengths)
            self._append(f"{fld.name}.offsets", ends)
            if count:
                self._ends[fld.name] = int(ends[-1])
        self.count += count

    def close(self) -> None:
        if self._group is None:
            return
        try:
            for appender in self._direct.values():
                appender.finish()
        finally:
            self._pool.shutdown(wait=True)
        info: dict[str, Any] = {"version": 1, "count": self.count, "schema": self.schema.to_json()}
        if self._local:
            info["stored_chunks"] = {
                name: _stored_chunk_count(array) for name, array in self._arrays.items()
            }
        self._group.attrs[ATTR] = info
        self._group = None

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._group = None  # the caller removes the partial shard
