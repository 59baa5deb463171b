"""Raw mmap backend: shardio's own flat layout, read through ``mmap``.

A shard is a directory::

    shard-00000.mmap/
        shardio-mmap.json     {"format": "shardio-mmap", "version": 1, "count": N,
                               "schema": [...], "files": {field: {...}}}
        000.bin               fixed-size field: N rows of the field's dtype and shape, C order
        001.data, 001.offsets variable field: concatenated values, and N+1 little-endian
                              int64 offsets counted in elements (bytes for a bytes field)

Each file is a `PositionedFile` (the positioned-read layer, mapped or read with
pread); this module knows the format only: the file names, the offsets tables, and
each field's dtype and shape. A batch's fixed fields are one `take_rows` each, copied
out of the mapping (or read with pread), so no array handed to a caller pins it.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from shardio.core.config import parse_size
from shardio.core.errors import InvalidOptionError, ManifestError, ShardCorruptError
from shardio.core.jsonio import read_json
from shardio.core.schema import Field, Schema
from shardio.core.timevalues import as_stored
from shardio.memory import AccessPattern, FileRange, ReleaseResult

from ...integrity import ValueRanges
from ..base import Columns, ShardFileWriter, ShardReader
from ..positioned import PositionedFile, ReadMode

__all__ = ["MmapReader", "MmapWriter", "META_NAME"]

META_NAME = "shardio-mmap.json"
_FORMAT = "shardio-mmap"
_VERSION = 1
_OFFSET_DTYPE = np.dtype("<i8")
_MAX_FILE_BYTES = 2**50


@dataclass
class _FieldFiles:
    """One field's files, each a `PositionedFile`, and what the format says of them."""

    field: Field
    file: PositionedFile  # the data file
    #: The values as a flat array over the map (None in pread mode, or an empty file).
    data: np.ndarray | None
    offsets: np.ndarray | None = None  # a variable field's N+1 offsets, mapped
    offsets_file: PositionedFile | None = None

    @property
    def path(self) -> str:
        return self.file.path

    @property
    def offsets_path(self) -> str:
        return "" if self.offsets_file is None else self.offsets_file.path

    @property
    def fd(self) -> int | None:
        """The data file's descriptor where values are read with pread, else None."""
        return None if self.data is not None else self.file.fd


@dataclass
class _Mapped:
    fields: dict[str, _FieldFiles]
    #: Every file opened, in the order opened (some may belong to no field yet).
    files: list[PositionedFile]


def _check_size(path: str, expected: int) -> None:
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ShardCorruptError(f"shard file {path} is missing") from None
    if size < expected:
        # NOTE: reading a mapping past the end of a truncated file raises SIGBUS and
        # kills the process, so sizes are checked before anything is mapped.
        raise ShardCorruptError(
            f"shard file {path} is truncated: {size} bytes, expected {expected}"
        )


def _checked_offsets(offsets: np.ndarray, count: int, fld: Field, data_path: str) -> int:
    """Bytes of a variable field's data file, after checking its offsets: they start at
    0 and never decrease (else values would come back with wrong lengths)."""
    if not count:
        return 0
    if int(offsets[0]) != 0 or bool((np.diff(offsets) < 0).any()):
        raise ShardCorruptError(
            f"{data_path}: the offsets of field {fld.name!r} are damaged "
            "(they should start at 0 and never decrease)"
        )
    last = int(offsets[-1])
    if last > _MAX_FILE_BYTES // max(1, fld.dtype.itemsize):
        raise ShardCorruptError(f"{data_path}: field {fld.name!r} claims {last} values")
    return last * fld.dtype.itemsize


def _open_file(path: str, expected: int, mode: ReadMode, opened: _Mapped) -> PositionedFile:
    """``path`` as a `PositionedFile`; refuse a file shorter than ``expected`` bytes."""
    _check_size(path, expected)
    file = PositionedFile(path, mode)
    opened.files.append(file)
    return file


def _values(file: PositionedFile, dtype: np.dtype, nbytes: int) -> np.ndarray | None:
    """The first ``nbytes`` of a file opened in map mode as a flat array of ``dtype``
    (empty for an empty file, which is not mapped)."""
    if not nbytes:
        return np.empty(0, dtype=dtype)
    return file.array(dtype, nbytes // dtype.itemsize)


def _map_below(options: dict[str, Any], path: str) -> int:
    value = options.get("map_below", 0)
    try:
        return parse_size(value, "map_below")
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"{exc} (reading {path})") from None


def _in_pages(nbytes: int) -> int:
    """What mapping ``nbytes`` of a file can cost in RSS: whole pages."""
    return -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE


def read_meta(path: str) -> dict[str, Any]:
    meta_path = os.path.join(path, META_NAME)
    try:
        meta = read_json(meta_path)
    except FileNotFoundError:
        raise ShardCorruptError(
            f"{path} is not a shardio mmap shard: {META_NAME} is missing"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ManifestError(f"{meta_path}: expected format {_FORMAT!r}, got {meta!r:.100}")
    if meta.get("version") != _VERSION:
        raise ManifestError(
            f"{meta_path}: format version {meta.get('version')!r} is not supported "
            f"(this shardio reads version {_VERSION})"
        )
    if not isinstance(meta.get("count"), int) or meta["count"] < 0:
        raise ManifestError(f"{meta_path}: 'count' should be a non-negative integer")
    return meta


class MmapReader(ShardReader[_Mapped]):
    """Reads a raw mmap shard directory."""

    format = "mmap"
    maps_files = True
    #: read_mode="pread" copies values with pread instead of through the mapping, so
    #: reading adds no resident pages (used under a memory budget); fixed-size fields
    #: whose file is at most map_below bytes (labels, say) stay mapped even then: one
    #: syscall per row would cost more than the few pages they can ever add.
    options = frozenset({"read_mode", "map_below"})

    @classmethod
    def descriptors_per_shard(cls, schema: Schema) -> int:
        """Two per file (the descriptor kept for the truncation check, and the one
        Python's mmap duplicates for itself); a variable field has two files."""
        return 2 * sum(2 if f.variable else 1 for f in schema)

    @classmethod
    def budget_options(cls, max_rss: int, shard_count: int, field_count: int) -> dict[str, Any]:
        """pread instead of the mapping; a field whose file is at most 1/16 of its
        share of the budget (labels, say) stays mapped, since a system call per row
        would cost more than its pages."""
        share = max_rss // (max(1, shard_count) * max(1, field_count))
        return {"read_mode": "pread", "map_below": share // 16}

    def _open(self) -> _Mapped:
        pread = self.read_mode == "pread"
        map_below = _map_below(self.backend_options, self.path)
        meta = read_meta(self.path)
        count = meta["count"]
        full = Schema.from_json(meta.get("schema"))
        schema = self._select(full)
        files = meta.get("files", {})
        opened = _Mapped(fields={}, files=[])
        try:
            for fld in schema:
                entry = files.get(fld.name)
                if not isinstance(entry, dict) or "data" not in entry:
                    raise ManifestError(f"{self.path}/{META_NAME}: no files for field {fld.name!r}")
                data_path = self._member(entry, "data", fld.name)
                if fld.variable:
                    offsets_path = self._member(entry, "offsets", fld.name)
                    offsets_bytes = (count + 1) * _OFFSET_DTYPE.itemsize
                    offsets_file = _open_file(offsets_path, offsets_bytes, "map", opened)
                    offsets = offsets_file.array(_OFFSET_DTYPE, count + 1)
                    size = _checked_offsets(offsets, count, fld, data_path)
                    mode: ReadMode = "pread" if pread else "map"
                    file = _open_file(data_path, size, mode, opened)
                    data = None if pread else _values(file, fld.dtype, size)
                    opened.fields[fld.name] = _FieldFiles(fld, file, data, offsets, offsets_file)
                    continue
                size = count * fld.sample_nbytes
                mode = "pread" if pread and _in_pages(size) > map_below else "map"
                file = _open_file(data_path, size, mode, opened)
                data = _values(file, fld.dtype, size) if mode == "map" else None
                opened.fields[fld.name] = _FieldFiles(fld, file, data)
        except BaseException:
            self._close(opened)
            raise
        self._length = count
        self._schema = schema
        return opened

    def _member(self, entry: dict[str, Any], key: str, field: str) -> str:
        """The path of one file named in the shard's metadata, kept inside the shard."""
        name = entry.get(key)
        where = f"{self.path}/{META_NAME}"
        if not isinstance(name, str) or not name:
            raise ManifestError(f"{where}: field {field!r} names no {key} file")
        if not self.allow_external and (name != os.path.basename(name) or name in (".", "..")):
            raise ManifestError(
                f"{where}: field {field!r} names {key} file {name!r}, outside the shard; "
                "pass allow_external=True to read it anyway"
            )
        return os.path.join(self.path, name)

    def _close(self, handle: _Mapped) -> None:
        handle.fields.clear()  # drop the arrays that export each mapping's buffer
        for file in handle.files:
            # NOTE: an open that failed half way may still hold views of a mapping in
            # its traceback; that mapping closes once they are gone.
            with contextlib.suppress(BufferError):
                file.close()
        handle.files.clear()

    def files(self) -> list[str]:
        meta = read_meta(self.path)
        names = [META_NAME]
        for entry in meta.get("files", {}).values():
            names.extend(entry[k] for k in ("data", "offsets") if k in entry)
        return [os.path.join(self.path, n) for n in names]

    def value_ranges(self, indices: np.ndarray) -> ValueRanges:
        ranges: list[tuple[str, np.ndarray, np.ndarray]] = []
        rows = indices.astype(np.int64, copy=False)
        for mapped in self.handle.fields.values():
            if mapped.offsets is None:
                size = mapped.field.sample_nbytes
                ranges.append((mapped.path, rows * size, np.full(len(rows), size)))
                continue
            itemsize = mapped.field.dtype.itemsize
            starts, ends = mapped.offsets[rows], mapped.offsets[rows + 1]
            ranges.append((mapped.offsets_path, rows * 8, np.full(len(rows), 16)))
            ranges.append((mapped.path, starts * itemsize, (ends - starts) * itemsize))
        return ranges

    def byte_ranges(self, start: int, stop: int) -> list[FileRange]:
        ranges = []
        for mapped in self.handle.fields.values():
            if mapped.offsets is None:
                size = mapped.field.sample_nbytes
                ranges.append((mapped.path, start * size, (stop - start) * size))
            else:
                itemsize = mapped.field.dtype.itemsize
                first, last = (int(x) for x in mapped.offsets[[start, stop]])
                ranges.append((mapped.path, first * itemsize, (last - first) * itemsize))
        return [r for r in ranges if r[2] > 0]

    def read_many(self, indices: np.ndarray) -> Columns:
        return self.read_into(indices, {})

    def read_into(self, indices: np.ndarray, out: Mapping[str, np.ndarray]) -> Columns:
        columns: Columns = {}
        nbytes = 0
        for name, files in self.handle.fields.items():
            fld = files.field
            if files.offsets is None:
                target = out.get(name)
                if target is not None and target.dtype == fld.dtype and target.flags.c_contiguous:
                    column = target
                else:
                    column = np.empty((len(indices), *fld.shape), fld.dtype)
                files.file.take_rows(indices, column)
                if target is not None and column is not target:  # another byte order or
                    target[...] = column  # layout: converted as copied
                    column = target
                nbytes += column.nbytes
                columns[name] = column
                continue
            assert files.offsets_file is not None
            files.offsets_file.check_size()
            starts = files.offsets[indices]
            ends = files.offsets[indices + 1]
            data = files.data
            if data is None:
                values = self._pread_variable(files, starts, ends)
            else:
                files.file.check_size()
                if fld.kind == "bytes":
                    values = [data[s:e].tobytes() for s, e in zip(starts, ends, strict=True)]
                else:
                    values = [data[s:e].copy() for s, e in zip(starts, ends, strict=True)]
            nbytes += int((ends - starts).sum()) * fld.dtype.itemsize
            columns[name] = values
        self.bytes_read += nbytes
        return columns

    @staticmethod
    def _pread_variable(files: _FieldFiles, starts: np.ndarray, ends: np.ndarray) -> list[Any]:
        fld = files.field
        itemsize = fld.dtype.itemsize
        values: list[Any] = []
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            value = files.file.read_at(start * itemsize, np.empty(end - start, dtype=fld.dtype))
            values.append(value.tobytes() if fld.kind == "bytes" else value)
        return values

    # ------------------------------------------------------------------ memory
    def _drop_pages(self) -> ReleaseResult | None:
        """``madvise(MADV_DONTNEED)`` on every mapping: RSS drops, the page cache stays."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return None  # nothing to advise: a release closes the reader
        result = ReleaseResult()
        for file in self.handle.files:
            dropped = file.drop_pages()
            if dropped is not None:
                result += dropped
        return result

    def advise(self, pattern: AccessPattern) -> None:
        for file in self.handle.files:
            file.advise(pattern)


class MmapWriter(ShardFileWriter):
    """Writes a raw mmap shard directory by appending to one file per field."""

    format = "mmap"

    def __init__(self, path: str, schema: Schema, **options: Any) -> None:
        super().__init__(path, schema, **options)
        os.makedirs(path)
        self._files: dict[str, dict[str, str]] = {}
        self._data: dict[str, BinaryIO] = {}
        self._offsets: dict[str, list[np.ndarray]] = {}
        self._ends: dict[str, int] = {}
        for number, fld in enumerate(schema):
            if fld.variable:
                names = {"data": f"{number:03d}.data", "offsets": f"{number:03d}.offsets"}
                self._offsets[fld.name] = [np.zeros(1, dtype=_OFFSET_DTYPE)]
                self._ends[fld.name] = 0
            else:
                names = {"data": f"{number:03d}.bin"}
            self._files[fld.name] = names
            self._data[fld.name] = open(os.path.join(path, names["data"]), "wb")  # noqa: SIM115

    def append(self, columns: Columns, count: int) -> None:
        for fld in self.schema:
            out = self._data[fld.name]
            column = columns[fld.name]
            if not fld.variable:
                # no copy; dates and durations as their int64 bytes (a buffer has no M/m)
                out.write(as_stored(np.ascontiguousarray(column, dtype=fld.dtype)).data)
                continue
            lengths = np.empty(count, dtype=np.int64)
            for i, value in enumerate(column):
                if isinstance(value, bytes):
                    out.write(value)
                    lengths[i] = len(value)
                else:
                    out.write(np.ascontiguousarray(value, fld.dtype).tobytes())
                    lengths[i] = np.size(value)
            ends = self._ends[fld.name] + np.cumsum(lengths)
            self._offsets[fld.name].append(ends.astype(_OFFSET_DTYPE))
            self._ends[fld.name] = int(ends[-1]) if count else self._ends[fld.name]
        self.count += count

    def close(self) -> None:
        if not self._data:
            return
        for handle in self._data.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self._data.clear()
        for name, parts in self._offsets.items():
            path = os.path.join(self.path, self._files[name]["offsets"])
            with open(path, "wb") as handle:
                handle.write(np.concatenate(parts).astype(_OFFSET_DTYPE).tobytes())
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "count": self.count,
            "schema": self.schema.to_json(),
            "files": self._files,
        }
        with open(os.path.join(self.path, META_NAME), "w", encoding="utf-8") as meta_file:
            json.dump(meta, meta_file, indent=1)
