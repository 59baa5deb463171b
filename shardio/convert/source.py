"""Conversion sources: any readable dataset as a schema, a length and row ranges.

A backend may provide a source of its own (HDF5 does: files written by other tools
hold nested groups, links, compound types, filters from plugins, which its source
reports and refuses clearly); every other input (Zarr, LMDB, raw shards, shardio
datasets) is read through `DatasetReader`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from shardio.core.errors import InvalidOptionError, ShardCorruptError, ShardioError
from shardio.core.schema import Field, Schema
from shardio.storage.adapters.base import Columns
from shardio.storage.adapters.registry import SHARDED, detect_format, source_class
from shardio.storage.adapters.source import Skipped, Source, native_dtype, path_signature, to_field
from shardio.storage.reader import DatasetReader

__all__ = [
    "ReaderSource",
    "Skipped",
    "Source",
    "native_dtype",
    "open_source",
    "path_signature",
]


class ReaderSource(Source):
    """Any dataset `DatasetReader` reads: Zarr, LMDB, raw, sharded."""

    def __init__(
        self,
        path: str,
        *,
        fields: Sequence[str] | None = None,
        format: str | None = None,
        split_compound: bool = False,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.split_compound = split_compound
        self._reader = DatasetReader(path, fields=fields, format=format, **(options or {}))
        self.num_samples = len(self._reader)
        self._specs: list[tuple[Field, str, str | None]] = []  # (field, source field, member)
        notes = []
        for fld in self._reader.schema:
            if fld.kind == "array" and fld.dtype.fields is not None and split_compound:
                assert fld.dtype.names is not None
                for member in fld.dtype.names:
                    sub = fld.dtype.fields[member][0]
                    base, inner = sub.subdtype if sub.subdtype is not None else (sub, ())
                    out = Field(f"{fld.name}/{member}", native_dtype(base), fld.shape + inner)
                    self._specs.append((out, fld.name, member))
            else:
                out = Field(fld.name, native_dtype(fld.dtype), fld.shape, fld.kind)
                self._specs.append((out, fld.name, None))
            if not fld.dtype.isnative:
                notes.append(
                    f"{fld.name!r} is stored as {fld.dtype} in the source; "
                    "it is written in native byte order"
                )
        self.schema = Schema(tuple(f for f, _, _ in self._specs))
        self.notes = tuple(notes)

    def read_range(self, start: int, stop: int) -> Columns:
        return self.read_many(np.arange(start, stop, dtype=np.int64))

    def read_many(self, indices: np.ndarray) -> Columns:
        raw = self._reader.read_many(np.asarray(indices, dtype=np.int64))
        count = len(indices)
        columns: Columns = {}
        for fld, name, member in self._specs:
            value = raw[name] if member is None else raw[name][member]
            if fld.kind == "bytes":
                columns[fld.name] = value
            else:
                columns[fld.name] = to_field(value, fld, count)
        return columns

    def close(self) -> None:
        self._reader.close()


def open_source(
    path: str | os.PathLike[str],
    *,
    fields: Sequence[str] | str | None = None,
    format: str | None = None,
    split_compound: bool = False,
    skip_unsupported: bool = False,
    options: dict[str, Any] | None = None,
) -> Source:
    """The `Source` that reads ``path`` (format detected unless given).

    ``options`` go to the backend's reader (``decode=`` for a foreign LMDB,
    ``storage_options=`` for a remote URL, ...).
    """
    location = os.fspath(path)
    if isinstance(fields, str):
        fields = [fields]
    if fields is not None:
        fields = list(fields)
        if not fields:
            raise InvalidOptionError("fields should name at least one field, but got fields=[]")
    fmt = format if format is not None else detect_format(location)
    own = None if fmt == SHARDED else source_class(fmt, location)
    if own is not None and set(options or {}) <= own.options:
        return own(
            location,
            fields=fields,
            split_compound=split_compound,
            skip_unsupported=skip_unsupported,
            **(options or {}),
        )
    try:
        return ReaderSource(
            location,
            fields=fields,
            format=None if fmt == SHARDED else fmt,
            split_compound=split_compound,
            options=options,
        )
    except ShardioError:
        raise
    except OSError as exc:
        raise ShardCorruptError(f"cannot read {location}: {exc}") from exc
