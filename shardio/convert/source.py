"""Conversion sources: any readable dataset as a schema, a length and row ranges.

HDF5 files get a source of their own, because files written by other tools hold
what a training reader never meets: nested groups, soft and external links,
compound types to keep or split, variable-length strings, big-endian types,
scalars, filters from plugins, object references. Every other input (Zarr, LMDB,
raw shards, shardio datasets) is read through :class:`~shardio.reader.DatasetReader`.

Every array is handed out in native byte order, so a converted dataset feeds
torch without a byte swap on every read.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import xxhash

from ..adapters._hdf5 import vlen_reads_unswapped
from ..adapters._hdf5_discovery import FieldSpec, Skipped, discover, open_spec
from ..adapters._hdf5_filters import load_filters
from ..adapters.base import Columns
from ..adapters.registry import detect_format, get_backend, is_remote
from ..errors import (
    DatasetNotFoundError,
    InvalidOptionError,
    ShardCorruptError,
    ShardioError,
)
from ..reader import DatasetReader
from ..schema import Field, Schema

__all__ = [
    "Source",
    "HDF5Source",
    "ReaderSource",
    "Skipped",
    "open_source",
    "native_dtype",
    "path_signature",
]

_CHUNK_CACHE_BYTES = 32 * 1024 * 1024
_SIGNATURE_MAX_FILES = 100_000


def native_dtype(dtype: np.dtype) -> np.dtype:
    """``dtype`` in native byte order, without h5py's metadata (enum, string info)."""
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return np.dtype((native_dtype(base), shape))
    if dtype.fields is not None:
        assert dtype.names is not None
        return np.dtype(
            {
                "names": list(dtype.names),
                "formats": [native_dtype(dtype.fields[n][0]) for n in dtype.names],
                "offsets": [int(dtype.fields[n][1]) for n in dtype.names],
                "itemsize": dtype.itemsize,
            }
        )
    plain = np.dtype(dtype.str)
    return plain if plain.isnative else plain.newbyteorder("=")


def path_signature(path: str) -> str | None:
    """A digest of the sizes and modification times of the files under ``path``.

    Resuming compares it to tell a source changed since the interrupted run.
    ``None`` for remote URLs, whose listing would cost a round trip per object.
    """
    if is_remote(path):
        return None
    local = path.removeprefix("file://")
    digest = xxhash.xxh3_64()
    if os.path.isfile(local):
        files = [local]
    else:
        files = []
        for directory, _, names in os.walk(local):
            files.extend(os.path.join(directory, n) for n in names)
            if len(files) > _SIGNATURE_MAX_FILES:
                break
        files.sort()
    for name in files:
        try:
            stat = os.stat(name)
        except OSError:
            continue
        relative = os.path.relpath(name, local) if name != local else ""
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class Source(ABC):
    """Rows of a dataset as columns following :attr:`schema`; picklable without handles."""

    path: str
    schema: Schema
    num_samples: int
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()
    split_compound: bool = False
    #: The HDF5 group whose datasets are the fields (named relative to it), if any.
    group: str | None = None

    @abstractmethod
    def read(self, start: int, stop: int) -> Columns:
        """Samples ``start`` to ``stop`` (exclusive) as validated columns."""

    @abstractmethod
    def read_rows(self, indices: np.ndarray) -> Columns:
        """Samples at sorted, distinct ``indices`` as validated columns."""

    @property
    def chunk_rows(self) -> int | None:
        """Rows per storage chunk of the largest field, to align reads with; None if none."""
        return None

    def signature(self) -> str | None:
        return path_signature(self.path)

    @abstractmethod
    def close(self) -> None:
        """Release this process's handles; reading reopens them."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------ HDF5
class HDF5Source(Source):
    """Any HDF5 file, on the fields the HDF5 backend's discovery finds (the same a
    reader of the file sees), in native byte order."""

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
    ) -> None:
        self.path = path
        self.split_compound = split_compound
        self.group = group
        self.storage_options = dict(storage_options or {})
        self._pid: int | None = None
        self._handle: _Open | None = None
        file = self._open_file()
        try:
            found = discover(
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
        self.num_samples = found.num_samples
        self.skipped = found.skipped
        self.notes = tuple(notes) + ((found.chosen,) if found.chosen else ())

    # ---------------------------------------------------------------- handles
    def _open_file(self) -> Any:
        import h5py

        cache = {"rdcc_nbytes": _CHUNK_CACHE_BYTES, "rdcc_w0": 1.0}
        try:
            if is_remote(self.path):
                import fsspec

                remote = fsspec.open(self.path, "rb", **self.storage_options).open()
                return h5py.File(remote, "r", **cache)
            return h5py.File(self.path.removeprefix("file://"), "r", locking=False, **cache)
        except FileNotFoundError:
            raise DatasetNotFoundError(f"HDF5 file {self.path} does not exist") from None
        except OSError as exc:
            raise ShardCorruptError(f"cannot open HDF5 file {self.path}: {exc}") from exc

    @property
    def _open(self) -> _Open:
        if self._handle is None or self._pid != os.getpid():
            # NOTE: a handle inherited through fork is dropped, never closed: closing
            # would act on HDF5 library state shared with the parent.
            self._handle = _Open(self._open_file())
            self._pid = os.getpid()
            load_filters(
                {
                    s.dataset: self._handle.file[s.dataset] for s in self._specs if not s.sparse
                }.values(),
                self.path,
            )
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.datasets.clear()
            with contextlib.suppress(Exception):
                self._handle.file.close()
        self._handle = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

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

    def read(self, start: int, stop: int) -> Columns:
        return self._columns(slice(start, stop), stop - start)

    def read_rows(self, indices: np.ndarray) -> Columns:
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
            columns[spec.field.name] = _to_field(value, spec.field, count)
        return columns


@dataclass
class _Open:
    file: Any  # h5py.File
    datasets: dict[str, Any] = field(default_factory=dict)


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


def _to_field(value: Any, fld: Field, count: int) -> Any:
    if fld.kind == "bytes":
        return [
            v if isinstance(v, bytes) else (v.encode() if isinstance(v, str) else bytes(v))
            for v in value
        ]
    if fld.kind == "ragged":
        return [np.ascontiguousarray(v, dtype=fld.dtype).reshape(-1) for v in value]
    array = np.ascontiguousarray(value, dtype=fld.dtype)
    return array.reshape(count, *fld.shape)


# ---------------------------------------------------------------- other formats
class ReaderSource(Source):
    """Any dataset :class:`~shardio.reader.DatasetReader` reads: Zarr, LMDB, raw, sharded."""

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

    def read(self, start: int, stop: int) -> Columns:
        return self.read_rows(np.arange(start, stop, dtype=np.int64))

    def read_rows(self, indices: np.ndarray) -> Columns:
        raw = self._reader.read_many(np.asarray(indices, dtype=np.int64))
        count = len(indices)
        columns: Columns = {}
        for fld, name, member in self._specs:
            value = raw[name] if member is None else raw[name][member]
            if fld.kind == "bytes":
                columns[fld.name] = value
            else:
                columns[fld.name] = _to_field(value, fld, count)
        return columns

    def close(self) -> None:
        self._reader.close()


# ------------------------------------------------------------------------ open
def open_source(
    path: str | os.PathLike[str],
    *,
    fields: Sequence[str] | str | None = None,
    format: str | None = None,
    split_compound: bool = False,
    skip_unsupported: bool = False,
    options: dict[str, Any] | None = None,
) -> Source:
    """The :class:`Source` that reads ``path`` (format detected unless given).

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
    if fmt != "shardio":
        get_backend(fmt)
    if fmt == "hdf5" and set(options or {}) <= {"storage_options", "group", "dim"}:
        return HDF5Source(
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
            format=None if fmt == "shardio" else fmt,
            split_compound=split_compound,
            options=options,
        )
    except ShardioError:
        raise
    except OSError as exc:
        raise ShardCorruptError(f"cannot read {location}: {exc}") from exc
