"""Conversion's source for HDF5 files: the HDF5 backend's discovery and reads."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shardio.core.perprocess import PerProcess
from shardio.core.schema import Field, Schema

from ...cf import CFFields
from ..base import Columns
from ..source import Source, native_dtype, to_field
from ._adapter import open_hdf5, vlen_reads_unswapped
from ._discovery import FieldSpec, discover, open_spec, own_layout
from ._filters import load_filters

__all__ = ["HDF5Source"]

_CHUNK_CACHE_BYTES = 32 * 1024 * 1024


class HDF5Source(Source):
    """Any HDF5 file, on the fields `discover` finds (the same
    `HDF5Reader` reads), in native byte order.

    Conversion reads HDF5 through this source rather than the reader: it reports what
    it left out (`skipped`), refuses unsupported datasets unless
    ``skip_unsupported``, and reads whole row ranges with one HDF5 selection.
    """

    options = frozenset({"storage_options", "group", "dim", "decode_cf"})

    def __init__(
        self,
        path: str,
        *,
        fields: Sequence[str] | None = None,
        split_compound: bool = False,
        skip_unsupported: bool = False,
        storage_options: dict[str, Any] | None = None,
        group: str | None = None,
        dim: str | None = None,
        decode_cf: bool = False,
    ) -> None:
        self.path = path
        self.split_compound = split_compound
        self.group = group
        self.storage_options = dict(storage_options or {})
        self._handle: PerProcess[_Open] = PerProcess()
        file = self._open_file()
        try:
            found = own_layout(file, path, fields, group, dim) or discover(
                file,
                path,
                fields=fields,
                group=group,
                dim=dim,
                split_compound=split_compound,
                skip_unsupported=skip_unsupported,
            )
            self._chunk_rows = _chunk_rows(file, found.specs)
            notes = _byte_order_notes(file, found.specs)
            attributes = {s.field.name: _attributes(file, s) for s in found.specs if decode_cf}
        finally:
            file.close()
        self._specs = tuple(
            replace(
                s,
                field=Field(s.field.name, native_dtype(s.field.dtype), s.field.shape, s.field.kind),
            )
            for s in found.specs
        )
        self.schema = Schema(tuple(s.field for s in self._specs))
        self._cf = CFFields(self.schema, lambda n: attributes.get(n, {})) if decode_cf else None
        if self._cf:
            self.schema = self._cf.schema
        self.num_samples = found.num_samples
        self.skipped = found.skipped
        self.notes = tuple(notes) + ((found.chosen,) if found.chosen else ())

    # ---------------------------------------------------------------- handles
    def _open_file(self) -> Any:
        cache = {"rdcc_nbytes": _CHUNK_CACHE_BYTES, "rdcc_w0": 1.0}
        return open_hdf5(self.path, self.storage_options, **cache)

    @property
    def _open(self) -> _Open:
        return self._handle.get(self._open_datasets)

    def _open_datasets(self) -> _Open:
        opened = _Open(self._open_file())
        plain = {s.dataset: opened.file[s.dataset] for s in self._specs if not s.sparse}
        load_filters(plain.values(), self.path)
        return opened

    def close(self) -> None:
        opened = self._handle.take()
        if opened is not None:
            opened.datasets.clear()
            with contextlib.suppress(Exception):
                opened.file.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ---------------------------------------------------------------- reading
    @property
    def chunk_rows(self) -> int | None:
        return self._chunk_rows

    def _dataset(self, spec: FieldSpec) -> Any:
        handle = self._open
        dataset = handle.datasets.get(spec.dataset)
        if dataset is None:
            dataset = handle.datasets[spec.dataset] = open_spec(handle.file, spec)
        return dataset

    def read_range(self, start: int, stop: int) -> Columns:
        return self._columns(slice(start, stop), stop - start)

    def read_many(self, indices: np.ndarray) -> Columns:
        return self._columns(np.asarray(indices, dtype=np.int64), len(indices))

    def _columns(self, selection: slice | np.ndarray, count: int) -> Columns:
        blocks: dict[str, Any] = {}
        columns: Columns = {}
        for spec in self._specs:
            block = blocks.get(spec.dataset)
            if block is None:
                dataset = self._dataset(spec)
                block = dataset[0:0] if count == 0 else dataset[selection]
                blocks[spec.dataset] = block
            value = block if spec.member is None else block[spec.member]
            if spec.foreign_vlen is not None and vlen_reads_unswapped():
                value = [np.asarray(v).view(spec.foreign_vlen) for v in value]
            columns[spec.field.name] = to_field(value, spec.field, count)
        return self._cf(columns) if self._cf else columns


@dataclass
class _Open:
    file: Any  # h5py.File
    datasets: dict[str, Any] = field(default_factory=dict)


def _attributes(file: Any, spec: FieldSpec) -> dict[str, Any]:
    if spec.sparse or spec.member is not None:
        return {}
    try:
        return dict(file[spec.dataset].attrs)
    except (KeyError, OSError, TypeError, ValueError, RuntimeError):
        return {}


def _chunk_rows(file: Any, specs: Sequence[FieldSpec]) -> int | None:
    largest = max(specs, key=lambda s: s.field.sample_nbytes)
    chunks = open_spec(file, largest).chunks
    return int(chunks[0]) if chunks else None


def _byte_order_notes(file: Any, specs: Sequence[FieldSpec]) -> list[str]:
    notes = []
    for spec in specs:
        stored = spec.foreign_vlen if spec.foreign_vlen is not None else spec.field.dtype
        if spec.field.kind != "bytes" and not stored.isnative:
            notes.append(
                f"{spec.field.name!r} is stored as {stored} in the source; "
                f"it is written in native byte order as {native_dtype(stored)}"
            )
    return notes
