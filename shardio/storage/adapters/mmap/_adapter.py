"""Raw mmap backend: shardio's own flat layout, read through ``mmap``.

A shard is a directory::

    shard-00000.mmap/
        shardio-mmap.json     {"format": "shardio-mmap", "version": 1, "count": N,
                               "schema": [...], "files": {field: {...}}}
        000.bin               fixed-size field: N rows of the field's dtype and shape, C order
        001.data, 001.offsets variable field: concatenated values, and N+1 little-endian
                              int64 offsets counted in elements (bytes for a bytes field)

Reads gather rows with one numpy fancy-index per field, which copies them out of
the mapping, so no array handed to a caller pins the mapping.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from shardio.core.config import parse_size
from shardio.core.errors import InvalidOptionError, ManifestError, ShardCorruptError
from shardio.core.jsonio import read_json
from shardio.core.schema import Field, Schema
from shardio.core.timevalues import as_stored
from shardio.memory import AccessPattern, FileRange, ReleaseResult

from ...integrity import ValueRanges
from ..base import Columns, ShardFileWriter, ShardReader, is_run, raise_if_truncated
from ..positioned import pread_into, pread_rows

__all__ = ["MmapReader", "MmapWriter", "META_NAME"]

META_NAME = "shardio-mmap.json"
_FORMAT = "shardio-mmap"
_VERSION = 1
_OFFSET_DTYPE = np.dtype("<i8")
_MAX_FILE_BYTES = 2**50
_ADVICE = {
    "random": getattr(mmap, "MADV_RANDOM", None),
    "sequential": getattr(mmap, "MADV_SEQUENTIAL", None),
    "normal": getattr(mmap, "MADV_NORMAL", None),
}


@dataclass
class _MappedField:
    field: Field
    path: str  # the data file
    data: np.ndarray | None  # the mapped values, or None when read with pread
    offsets: np.ndarray | None = None
    fd: int | None = None  # the data file, when read with pread
    offsets_path: str = ""


@dataclass
class _Mapped:
    fields: dict[str, _MappedField]
    maps: list[mmap.mmap] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int, str]] = field(default_factory=list)  # fd, bytes mapped, path


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


def _open_fd(path: str, expected: int, fds: list[int]) -> int:
    _check_size(path, expected)
    fd = os.open(path, os.O_RDONLY)
    fds.append(fd)
    return fd


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


def _map_file(path: str, dtype: np.dtype, expected: int, mapped: _Mapped) -> np.ndarray:
    """Map ``path`` read-only as a 1-D array; refuse a file shorter than ``expected`` bytes.

    The descriptor stays open so that reads can check the file was not truncated
    since (see `_check_unchanged`)."""
    _check_size(path, expected)
    if expected == 0:
        return np.empty(0, dtype=dtype)
    fd = os.open(path, os.O_RDONLY)
    mapped.fds.append(fd)
    mapped.maps.append(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
    mapped.sizes.append((fd, expected, path))
    return np.frombuffer(mapped.maps[-1], dtype=dtype, count=expected // dtype.itemsize)


def _check_unchanged(mapped: _Mapped) -> None:
    """Raise before reading a mapping whose file was truncated after it was mapped."""
    for fd, expected, path in mapped.sizes:
        raise_if_truncated(path, os.fstat(fd).st_size, expected)


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
        mapped = _Mapped(fields={})
        try:
            for fld in schema:
                entry = files.get(fld.name)
                if not isinstance(entry, dict) or "data" not in entry:
                    raise ManifestError(f"{self.path}/{META_NAME}: no files for field {fld.name!r}")
                data_path = self._member(entry, "data", fld.name)
                if fld.variable:
                    offsets_path = self._member(entry, "offsets", fld.name)
                    offsets = _map_file(
                        offsets_path,
                        _OFFSET_DTYPE,
                        (count + 1) * _OFFSET_DTYPE.itemsize,
                        mapped,
                    )
                    size = _checked_offsets(offsets, count, fld, data_path)
                    if pread:
                        fd = _open_fd(data_path, size, mapped.fds)
                        mapped.fields[fld.name] = _MappedField(
                            fld, data_path, None, offsets, fd, offsets_path
                        )
                    else:
                        data = _map_file(data_path, fld.dtype, size, mapped)
                        mapped.fields[fld.name] = _MappedField(
                            fld, data_path, data, offsets, None, offsets_path
                        )
                elif pread and _in_pages(count * fld.sample_nbytes) > map_below:
                    fd = _open_fd(data_path, count * fld.sample_nbytes, mapped.fds)
                    mapped.fields[fld.name] = _MappedField(fld, data_path, None, None, fd)
                else:
                    flat = _map_file(data_path, fld.dtype, count * fld.sample_nbytes, mapped)
                    mapped.fields[fld.name] = _MappedField(
                        fld, data_path, flat.reshape(count, *fld.shape)
                    )
        except BaseException:
            self._close(mapped)
            raise
        self._length = count
        self._schema = schema
        return mapped

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
        for mapping in handle.maps:
            # NOTE: an open that failed half way may still hold views of a mapping in
            # its traceback; that mapping closes once they are gone.
            with contextlib.suppress(BufferError):
                mapping.close()
        handle.maps.clear()
        handle.sizes.clear()
        for fd in handle.fds:
            os.close(fd)
        handle.fds.clear()

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
        handle = self.handle
        _check_unchanged(handle)
        for name, mapped in handle.fields.items():
            if mapped.offsets is None:
                target = out.get(name)
                if target is None or (
                    target.dtype == mapped.field.dtype and target.flags.c_contiguous
                ):
                    column = self._read_fixed(mapped, indices, target)
                else:  # another byte order or layout: converted as copied
                    target[...] = self._read_fixed(mapped, indices)
                    column = target
                nbytes += column.nbytes
                columns[name] = column
                continue
            starts = mapped.offsets[indices]
            ends = mapped.offsets[indices + 1]
            data = mapped.data
            if data is None:
                values = self._pread_variable(mapped, starts, ends)
            elif mapped.field.kind == "bytes":
                values = [data[s:e].tobytes() for s, e in zip(starts, ends, strict=True)]
            else:
                values = [data[s:e].copy() for s, e in zip(starts, ends, strict=True)]
            nbytes += int((ends - starts).sum()) * mapped.field.dtype.itemsize
            columns[name] = values
        self.bytes_read += nbytes
        return columns

    def _read_fixed(
        self, mapped: _MappedField, indices: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        if mapped.data is not None:
            if out is None:
                return mapped.data[indices]  # one gather, copied out of the mapping
            # mode="clip" (indices are checked by the caller): "raise" buffers the output.
            return np.take(mapped.data, indices, axis=0, out=out, mode="clip")
        assert mapped.fd is not None
        fld = mapped.field
        count, size = len(indices), fld.sample_nbytes
        if out is None:
            out = np.empty((count, *fld.shape), dtype=fld.dtype)
        if count == 0 or size == 0:
            return out
        if is_run(indices):
            pread_into(mapped.fd, out, int(indices[0]) * size, self.path)  # one read
            return out
        offsets = (indices.astype(np.int64, copy=False) * size).tolist()
        pread_rows(mapped.fd, mapped.path, out.reshape(-1).view(np.uint8).data, size, offsets)
        return out

    def _pread_variable(
        self, mapped: _MappedField, starts: np.ndarray, ends: np.ndarray
    ) -> list[Any]:
        assert mapped.fd is not None
        itemsize = mapped.field.dtype.itemsize
        values: list[Any] = []
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            value = np.empty(end - start, dtype=mapped.field.dtype)
            if end > start:
                pread_into(mapped.fd, value, start * itemsize, self.path)
            values.append(value.tobytes() if mapped.field.kind == "bytes" else value)
        return values

    # ------------------------------------------------------------------ memory
    def _drop_pages(self) -> ReleaseResult | None:
        """``madvise(MADV_DONTNEED)`` on every mapping: RSS drops, the page cache stays."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return None  # nothing to advise: a release closes the reader
        result = ReleaseResult()
        for mapping in self.handle.maps:
            # NOTE: safe on a read-only shared file mapping: dropped pages are simply
            # faulted back in from the page cache (or the file) on the next touch.
            mapping.madvise(mmap.MADV_DONTNEED)
            result.advise_calls += 1
            result.advised_bytes += len(mapping)
        return result

    def advise(self, pattern: AccessPattern) -> None:
        advice = _ADVICE.get(pattern)
        if advice is None:
            return
        for mapping in self.handle.maps:
            mapping.madvise(advice)


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
