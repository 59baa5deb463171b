"""The hand-written loops a user would write without shardio, one per backend.

Each reads one sample at a time with the backend's own library, exactly as a
``Dataset.__getitem__`` written by hand would: ``txn.get`` (py-lmdb), ``ds[i]``
(h5py), ``arr[i]`` (zarr-python) and ``np.memmap[i]`` (raw shards), and returns the
same field -> value dicts as shardio, so the benchmark compares like with like.
The only help they get is the dataset's shard list (a sharded dataset needs it) and
the schema, to decode shardio's LMDB values; the global -> shard mapping is done
once per loop with numpy, outside the per-sample work.

Two forms: `RawReader.read` is one ``__getitem__`` (an LMDB transaction per
call, as such a method opens), `RawReader.read_loop` is the tight loop over a
list of indices (one transaction per shard for the whole loop: the best case).
Handles open lazily per process, so a `RawReader` can go to DataLoader workers.
"""

from __future__ import annotations

import contextlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from shardio.core.errors import UnsupportedFeatureError
from shardio.core.perprocess import PerProcess
from shardio.core.schema import Field, Sample, Schema
from shardio.storage.remote import is_remote

__all__ = ["RAW_LOOPS", "RawReader", "raw_reader"]

_LENGTH = np.dtype("<u8")


class RawReader(ABC):
    """Per-sample reads of a dataset's shards with the backend library alone."""

    backend: ClassVar[str]
    #: What the loop calls, for reports.
    call: ClassVar[str]

    def __init__(
        self, shard_paths: Sequence[str], shard_lengths: Sequence[int], schema: Schema
    ) -> None:
        self.shard_paths = list(shard_paths)
        self.shard_lengths = [int(n) for n in shard_lengths]
        self.schema = schema
        self._starts = np.concatenate(([0], np.cumsum(self.shard_lengths)))
        self._handles: PerProcess[dict[int, Any]] = PerProcess()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def handle(self, shard: int) -> Any:
        handles = self._handles.get(dict)
        handle = handles.get(shard)
        if handle is None:
            handle = handles[shard] = self._open(self.shard_paths[shard])
        return handle

    def locate(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, local index) of each global index."""
        positions = np.asarray(indices, dtype=np.int64)
        shards = np.searchsorted(self._starts, positions, side="right") - 1
        return shards, positions - self._starts[shards]

    def read(self, index: int) -> Sample:
        """One sample, as a hand-written ``__getitem__`` reads it."""
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._read(self.handle(shard), int(index - self._starts[shard]))

    def read_loop(self, indices: Sequence[int] | np.ndarray) -> list[Sample]:
        """The samples at ``indices``, one library call (per field) at a time."""
        shards, local = self.locate(indices)
        read = self._read
        handle = self.handle
        return [read(handle(s), i) for s, i in zip(shards.tolist(), local.tolist(), strict=True)]

    def close(self) -> None:
        for handle in (self._handles.take() or {}).values():
            self._close(handle)

    @abstractmethod
    def _open(self, path: str) -> Any: ...

    @abstractmethod
    def _read(self, handle: Any, index: int) -> Sample: ...

    def _close(self, handle: Any) -> None:
        close = getattr(handle, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------- LMDB
class _LMDBDecoder:
    """Splits a shardio LMDB value (documented in shardio.storage.adapters.lmdb._adapter) into
    fields."""

    def __init__(self, schema: Schema) -> None:
        variable = [f for f in schema if f.variable]
        self.header = _LENGTH.itemsize * len(variable)
        self.fixed: list[tuple[str, np.dtype, tuple[int, ...], int, int]] = []
        offset = self.header
        for fld in schema:
            if not fld.variable:
                count = int(np.prod(fld.shape, dtype=np.int64))
                self.fixed.append((fld.name, fld.dtype, fld.shape, offset, count))
                offset += fld.sample_nbytes
        self.fixed_end = offset
        self.variable = [(f.name, f.kind == "bytes", f.dtype) for f in variable]

    def __call__(self, value: bytes) -> Sample:
        # .copy(): arrays over the immutable value bytes would be read-only, which torch
        # warns about; shardio hands out writable arrays too.
        sample: Sample = {
            name: np.frombuffer(value, dtype, count, offset).reshape(shape).copy()
            for name, dtype, shape, offset, count in self.fixed
        }
        if self.variable:
            lengths = np.frombuffer(value, _LENGTH, len(self.variable)).tolist()
            start = self.fixed_end
            for (name, is_bytes, dtype), length in zip(self.variable, lengths, strict=True):
                piece = value[start : start + length]
                sample[name] = piece if is_bytes else np.frombuffer(piece, dtype).copy()
                start += length
        return sample


class RawLMDB(RawReader):
    backend = "lmdb"
    call = "txn.get(key)"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._decode = _LMDBDecoder(self.schema)

    def _open(self, path: str) -> Any:
        import lmdb

        return lmdb.open(path, subdir=os.path.isdir(path), readonly=True, lock=False)

    def _read(self, handle: Any, index: int) -> Sample:
        with handle.begin() as txn:
            return self._decode(txn.get(index.to_bytes(8, "big")))

    def read_loop(self, indices: Sequence[int] | np.ndarray) -> list[Sample]:
        shards, local = self.locate(indices)
        txns: dict[int, Any] = {}
        decode = self._decode
        samples = []
        try:
            for shard, index in zip(shards.tolist(), local.tolist(), strict=True):
                txn = txns.get(shard)
                if txn is None:
                    txn = txns[shard] = self.handle(shard).begin()
                samples.append(decode(txn.get(index.to_bytes(8, "big"))))
        finally:
            for txn in txns.values():
                txn.abort()
        return samples


# --------------------------------------------------------------------- HDF5
class RawHDF5(RawReader):
    backend = "hdf5"
    call = "h5ds[i]"

    def _open(self, path: str) -> Any:
        import h5py

        with contextlib.suppress(ImportError):
            import hdf5plugin  # noqa: F401  (its filters, as a user's own loop would load them)
        file = h5py.File(path, "r")
        return file, [(f, file[f.name]) for f in self.schema]

    def _read(self, handle: Any, index: int) -> Sample:
        return {f.name: _value(f, ds[index]) for f, ds in handle[1]}

    def _close(self, handle: Any) -> None:
        handle[0].close()


# --------------------------------------------------------------------- Zarr
class RawZarr(RawReader):
    backend = "zarr"
    call = "zarr_array[i]"

    def _open(self, path: str) -> Any:
        import zarr

        node = zarr.open(path, mode="r")
        if isinstance(node, zarr.Array):
            return [(fld, node, None) for fld in self.schema]
        columns: list[tuple[Field, Any, Any]] = []
        for fld in self.schema:
            if fld.variable and f"{fld.name}.offsets" in node:  # shardio's layout
                columns.append((fld, node[f"{fld.name}.data"], node[f"{fld.name}.offsets"]))
            else:
                columns.append((fld, node[fld.name], None))
        return columns

    def _read(self, handle: Any, index: int) -> Sample:
        sample: Sample = {}
        for fld, array, offsets in handle:
            if offsets is not None:
                start, stop = offsets[index : index + 2].tolist()
                sample[fld.name] = _value(fld, array[start:stop])
                continue
            value = array[index]
            if fld.dtype.fields is not None and value.dtype == np.uint8:
                value = value.view(fld.dtype).reshape(fld.shape)  # stored as raw bytes
            sample[fld.name] = _value(fld, value)
        return sample

    def _close(self, handle: Any) -> None:
        pass


# --------------------------------------------------------------------- mmap
class RawMmap(RawReader):
    backend = "mmap"
    call = "np.memmap[i]"

    def _open(self, path: str) -> Any:
        with open(os.path.join(path, "shardio-mmap.json"), encoding="utf-8") as handle:
            meta = json.load(handle)
        count = int(meta["count"])
        columns: list[tuple[Field, Any, Any]] = []
        for fld in self.schema:
            files = meta["files"][fld.name]
            data_path = os.path.join(path, files["data"])
            if fld.variable:
                offsets = np.memmap(
                    os.path.join(path, files["offsets"]), "<i8", "r", shape=(count + 1,)
                )
                data = _memmap(data_path, fld.dtype, (int(offsets[-1]),))
                columns.append((fld, data, offsets))
            else:
                columns.append((fld, _memmap(data_path, fld.dtype, (count, *fld.shape)), None))
        return columns

    def _read(self, handle: Any, index: int) -> Sample:
        sample: Sample = {}
        for fld, data, offsets in handle:
            if offsets is None:
                sample[fld.name] = np.array(data[index])  # copy out of the mapping
            else:
                start, stop = offsets[index : index + 2].tolist()
                piece = data[start:stop]
                sample[fld.name] = piece.tobytes() if fld.kind == "bytes" else np.array(piece)
        return sample

    def _close(self, handle: Any) -> None:
        handle.clear()


def _memmap(path: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype, "r", shape=shape)


def _value(fld: Field, value: Any) -> Any:
    if fld.kind == "bytes":
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode()
        return np.asarray(value).tobytes()
    return np.asarray(value)


RAW_LOOPS: dict[str, type[RawReader]] = {
    cls.backend: cls for cls in (RawLMDB, RawHDF5, RawZarr, RawMmap)
}


def raw_reader(dataset: Any) -> RawReader:
    """The raw loop over the same shards as ``dataset`` (a ShardedDataset or DatasetReader)."""
    reader = getattr(dataset, "reader", dataset)
    cls = RAW_LOOPS.get(reader.format)
    if cls is None:
        raise UnsupportedFeatureError(f"no raw loop for the {reader.format!r} backend")
    if any(is_remote(p) for p in reader.shard_paths):
        raise UnsupportedFeatureError(
            f"the raw loop reads local files only, but {reader.path} is remote"
        )
    if reader.format == "lmdb" and reader.options.get("decode") is not None:
        raise UnsupportedFeatureError(
            f"the raw loop reads shardio-written LMDB values; {reader.path} needs decode="
        )
    return cls(reader.shard_paths, reader.shard_lengths, reader.schema)
