"""A backend in one module: a shard directory holding ``fields.txt`` (the field names,
one per line, in order) and ``<field>.npy`` for each.

docs/adapters.md shows this module as its example; tests/storage/test_registry.py checks the
page and this file say the same, registers the backend and runs the conformance
harness on it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from shardio.core.errors import SchemaError, ShardCorruptError
from shardio.core.schema import Field, Schema
from shardio.storage.adapters import Columns, ShardFileWriter, ShardReader


class NpyReader(ShardReader[dict[str, np.ndarray]]):
    """Reads a shard directory: ``fields.txt``, and ``<field>.npy`` with a row per sample."""

    format = "npy"
    maps_files = True  # np.load(mmap_mode="r"): pages read count in this process's RSS

    def _open(self) -> dict[str, np.ndarray]:
        with open(os.path.join(self.path, "fields.txt")) as listing:
            names = listing.read().split()
        arrays = {n: np.load(os.path.join(self.path, f"{n}.npy"), mmap_mode="r") for n in names}
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ShardCorruptError(f"{self.path}: its .npy files disagree on their length")
        full = Schema(tuple(Field(name, a.dtype, a.shape[1:]) for name, a in arrays.items()))
        self._schema = self._select(full)
        self._length = lengths.pop()
        return {name: arrays[name] for name in self._schema.names}

    def _close(self, handle: dict[str, np.ndarray]) -> None:
        handle.clear()  # the maps close when their arrays are gone

    def read_many(self, indices: np.ndarray) -> Columns:
        columns = {name: array[indices] for name, array in self.handle.items()}
        self.bytes_read += sum(column.nbytes for column in columns.values())
        return columns

    def files(self) -> list[str]:
        names = ["fields.txt", *(f"{name}.npy" for name in self.schema.names)]
        return [os.path.join(self.path, name) for name in names]


class NpyWriter(ShardFileWriter):
    """Writes ``fields.txt`` and a ``<field>.npy`` per fixed field when closed."""

    format = "npy"

    def __init__(self, path: str, schema: Schema, **options: Any) -> None:
        super().__init__(path, schema, **options)
        variable = [f.name for f in schema if f.variable]
        if variable:
            raise SchemaError(f"the npy backend stores fixed-size fields only, not {variable}")
        os.makedirs(path)
        self._parts: dict[str, list[np.ndarray]] = {f.name: [] for f in schema}

    def append(self, columns: Columns, count: int) -> None:
        for name, parts in self._parts.items():
            parts.append(np.array(columns[name]))
        self.count += count

    def close(self) -> None:
        for fld in self.schema:
            parts = self._parts[fld.name] or [np.empty((0, *fld.shape), fld.dtype)]
            column = np.concatenate(parts).astype(fld.dtype, copy=False)
            np.save(os.path.join(self.path, f"{fld.name}.npy"), column)
        with open(os.path.join(self.path, "fields.txt"), "w") as listing:
            listing.write("\n".join(self.schema.names) + "\n")
