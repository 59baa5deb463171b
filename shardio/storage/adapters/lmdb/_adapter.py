"""LMDB backend (py-lmdb).

shardio-written environments hold one value per sample under an 8-byte big-endian
key (the sample's index), plus a ``__shardio__`` key with the schema and count. A
value is: one little-endian uint64 length per variable field, then every fixed
field's bytes in schema order, then every variable field's bytes.

Foreign environments (written by other tools) are read with ``decode=`` (value
bytes -> sample dict), in the order of ``keys=`` or of the database's sorted keys.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lmdb
import numpy as np
import xxhash

from shardio.core.errors import InvalidOptionError, ManifestError, SchemaError, ShardCorruptError
from shardio.core.perprocess import ForkSafeLock, PerProcess
from shardio.core.schema import Sample, Schema
from shardio.memory import (
    AccessPattern,
    FileRange,
    ReleaseResult,
    advise_range,
    find_mappings,
    madvise_supported,
)

from ...integrity import ValueRanges
from ..base import (
    Columns,
    ShardFileWriter,
    ShardReader,
    coalesce_ranges,
    raise_if_truncated,
    samples_to_columns,
)
from ..positioned import PositionedFile

__all__ = ["LMDBReader", "LMDBWriter", "META_KEY", "encode_key"]

META_KEY = b"__shardio__"
#: Sidecar in the environment's directory: each sample's (offset, length) in data.mdb.
OFFSETS_NAME = "shardio-offsets.npy"
#: Values this close in data.mdb (page headers, keys between them) are hinted as one range.
_HINT_GAP = 64 * 1024
_LENGTH = np.dtype("<u8")


def encode_key(index: int) -> bytes:
    return index.to_bytes(8, "big")


def _data_file(path: str) -> tuple[str, bool]:
    """(data file, subdir flag) of an environment given as a directory or a file."""
    if os.path.isdir(path):
        return os.path.join(path, "data.mdb"), True
    return path, False


@dataclass
class _Layout:
    """Byte positions of the selected fields inside a shardio value."""

    header: int  # bytes of the variable-length header
    fixed: int  # bytes of all fixed fields together
    fixed_fields: list[tuple[str, int, int]]  # (name, offset in fixed block, nbytes)
    variable_fields: list[tuple[str, int, bool]]  # (name, position in header, is bytes)
    variable_dtypes: dict[str, np.dtype]
    #: (dtype, shape) of each of ``fixed_fields``, looked up once, not per read.
    fixed_types: list[tuple[np.dtype, tuple[int, ...]]]
    #: The selected fixed fields lie side by side in a value, in the order selected:
    #: one row each of one positioned read.
    fixed_adjacent: bool

    @classmethod
    def of(cls, full: Schema, selected: Schema) -> _Layout:
        variable = [f for f in full if f.variable]
        fixed_offsets: dict[str, int] = {}
        offset = 0
        for fld in full:
            if not fld.variable:
                fixed_offsets[fld.name] = offset
                offset += fld.sample_nbytes
        positions = {f.name: k for k, f in enumerate(variable)}
        fixed_fields = [
            (f.name, fixed_offsets[f.name], f.sample_nbytes) for f in selected if not f.variable
        ]
        return cls(
            header=_LENGTH.itemsize * len(variable),
            fixed=offset,
            fixed_fields=fixed_fields,
            variable_fields=[
                (f.name, positions[f.name], f.kind == "bytes") for f in selected if f.variable
            ],
            variable_dtypes={f.name: f.dtype for f in selected if f.variable},
            fixed_types=[(f.dtype, f.shape) for f in selected if not f.variable],
            fixed_adjacent=all(a[1] + a[2] == b[1] for a, b in itertools.pairwise(fixed_fields)),
        )


class _EnvPool:
    """Read-only environments shared by every reader of one process.

    py-lmdb refuses to open one environment twice in a process, while users open the
    same file twice (train and validation splits, a notebook cell run again, a
    pickled copy): readers share a reference-counted handle, keyed by the data
    file's identity (device, inode), so two paths to one file share it too.

    NOTE: a forked child inherits the parent's open environments, and py-lmdb's
    registry of them, which makes the child's own open fail. The child closes the
    inherited environments before opening any: they are read-only and opened
    without a lock file, so closing one only unmaps the child's copy of the map and
    closes its copies of the descriptors; the parent's are untouched.
    """

    def __init__(self) -> None:
        # Reentrant: a reader collected while an environment opens releases its own.
        self._lock = ForkSafeLock(reentrant=True)
        self._by_process: PerProcess[dict[tuple[int, int], tuple[lmdb.Environment, int]]]
        self._by_process = PerProcess()

    @property
    def _envs(self) -> dict[tuple[int, int], tuple[lmdb.Environment, int]]:
        """This process's environments (inherited ones closed first)."""
        return self._by_process.get(dict, on_inherited=_close_inherited)

    def acquire(self, path: str, readahead: bool) -> lmdb.Environment:
        """The environment at ``path``; the first opener's ``readahead`` applies to all."""
        data_file, subdir = _data_file(path)
        stat = os.stat(data_file)
        key = (stat.st_dev, stat.st_ino)
        with self._lock:
            if key in self._envs:
                env, count = self._envs[key]
                self._envs[key] = (env, count + 1)
                return env
            # lock=False: read-only readers need no lock file and no reader-table slot,
            # so any number of DataLoader workers can open the environment.
            env = lmdb.open(
                path,
                subdir=subdir,
                readonly=True,
                lock=False,
                readahead=readahead,
                max_readers=1,
                max_dbs=0,
            )
            self._envs[key] = (env, 1)
            return env

    def release(self, env: lmdb.Environment) -> None:
        with self._lock:
            for key, (held, count) in list(self._envs.items()):
                if held is env:
                    if count > 1:
                        self._envs[key] = (held, count - 1)
                    else:
                        del self._envs[key]
                        env.close()
                    return


def _close_inherited(envs: dict[tuple[int, int], tuple[lmdb.Environment, int]]) -> None:
    for env, _ in envs.values():
        with contextlib.suppress(lmdb.Error):
            env.close()


_POOL = _EnvPool()


def _rows(given: np.ndarray | None, dtype: np.dtype, count: int, size: int) -> np.ndarray:
    """``given`` as (count, size) bytes when it can take a field's bytes as they are
    stored (same dtype, C order), else a new array."""
    if (
        given is not None
        and given.dtype == dtype
        and given.flags.c_contiguous
        and given.flags.writeable
        and given.nbytes == count * size
    ):
        return given.reshape(-1).view(np.uint8).reshape(count, size)
    return np.empty((count, size), dtype=np.uint8)


@dataclass
class _Target:
    """Output rows of one fixed field, and where its bytes sit inside a value."""

    offset: int  # within the fixed block
    size: int
    rows: np.ndarray  # (count, size) uint8


@dataclass
class _Env:
    env: lmdb.Environment
    layout: _Layout | None  # None for a foreign environment
    keys: list[bytes] | None
    decode: Callable[[bytes], Sample] | None
    data_file: str = ""
    offsets: np.ndarray | None = None  # (N, 2): offset and length of each value in data.mdb
    values: PositionedFile | None = None  # data.mdb, read at those offsets (map or pread)
    # Without ``values``: the data file, to notice a truncation before a read through
    # LMDB's map (``values`` guards its own map).
    guard_fd: int | None = None
    mapped_size: int = 0

    def check_unchanged(self) -> None:
        """Raise before a mapped read of a data file truncated since it was opened."""
        if self.values is not None:
            self.values.check_size()  # a no-op in pread mode
        elif self.guard_fd is not None:
            raise_if_truncated(self.data_file, os.fstat(self.guard_fd).st_size, self.mapped_size)

    def mapped(self) -> list[Any]:
        """This process's mappings of the data file, looked up now.

        NOTE: py-lmdb reports map_addr as 0, so the map is found by path, and never
        remembered: another reader's map of the same file can be closed at any time,
        and memory mapped later at its addresses (a large malloc) would be zeroed by a
        madvise(MADV_DONTNEED) aimed at the old map."""
        return find_mappings(self.data_file) if madvise_supported() else []


class LMDBReader(ShardReader[_Env]):
    """Reads an LMDB environment, shardio-written or foreign (with ``decode=``)."""

    format = "lmdb"
    maps_files = True

    @classmethod
    def descriptors_per_shard(cls, schema: Schema) -> int:
        return 4  # the environment's, the guard's, and a mapping's (with its duplicate)

    #: shardio-written values are read at the positions the writer recorded
    #: (OFFSETS_NAME), without a B-tree walk per value: from shardio's own map of
    #: data.mdb, or with read_mode="pread" with pread, which maps no page at all
    #: (the mode under a memory budget).
    options = frozenset({"decode", "keys", "readahead", "read_mode"})

    @classmethod
    def budget_options(cls, max_rss: int, shard_count: int, field_count: int) -> dict[str, Any]:
        """pread instead of the environment's map: no page of data.mdb is mapped."""
        return {"read_mode": "pread"}

    #: Opening an environment with lmdb.open() and its default lock=True creates it.
    transient_files = frozenset({"lock.mdb"})

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        decode = self.backend_options.get("decode")
        if decode is not None and not callable(decode):
            raise InvalidOptionError(
                f"decode should be a callable (value bytes -> sample dict), but got {decode!r}"
            )
        keys = self.backend_options.get("keys")
        if keys is not None:
            if isinstance(keys, (str, bytes)):
                raise InvalidOptionError("keys should be a list of keys, but got a single key")
            self.backend_options["keys"] = [
                k.encode() if isinstance(k, str) else bytes(k) for k in keys
            ]

    def files(self) -> list[str]:
        data_file, subdir = _data_file(self.path)
        offsets = os.path.join(self.path, OFFSETS_NAME)
        return [data_file, offsets] if subdir and os.path.exists(offsets) else [data_file]

    def _open(self) -> _Env:
        data_file, _ = _data_file(self.path)
        if not os.path.exists(data_file):
            raise ShardCorruptError(
                f"{self.path} is not an LMDB environment: {data_file} is missing"
            )
        readahead = bool(self.backend_options.get("readahead", True))
        try:
            env = _POOL.acquire(self.path, readahead)
        except lmdb.Error as exc:
            raise ShardCorruptError(f"cannot open LMDB environment {self.path}: {exc}") from exc
        try:
            self._check_size(env, data_file)
            with env.begin() as txn:
                meta = txn.get(META_KEY)
                opened = (
                    self._open_shardio(env, meta)
                    if meta is not None
                    else self._open_foreign(env, txn)
                )
            opened.data_file = data_file
            if opened.layout:
                opened.offsets = self._load_offsets(env)
            if opened.offsets is not None:
                pread = self.read_mode == "pread"
                opened.values = PositionedFile(data_file, "pread" if pread else "map")
            else:  # values are read through LMDB's map: guarded through a descriptor
                opened.guard_fd = os.open(data_file, os.O_RDONLY)
                opened.mapped_size = os.fstat(opened.guard_fd).st_size
            # Values found through the B-tree are read through LMDB's map, whatever
            # read_mode says.
            self.touches_mapped_pages = opened.values is None or opened.values.mapped
            return opened
        except BaseException:
            _POOL.release(env)
            raise

    def _check_size(self, env: lmdb.Environment, data_file: str) -> None:
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = os.path.getsize(data_file)
        if size < needed:
            raise ShardCorruptError(
                f"LMDB file {data_file} is truncated: {size} bytes, but its pages need {needed}"
            )

    def _open_shardio(self, env: lmdb.Environment, meta: bytes) -> _Env:
        if self.backend_options.get("decode") is not None:
            raise InvalidOptionError(
                f"{self.path} was written by shardio and needs no decode=; drop the option"
            )
        try:
            info = json.loads(meta)
            full = Schema.from_json(info["schema"])
            count = int(info["count"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{self.path}: malformed {META_KEY.decode()} entry: {exc}") from exc
        selected = self._select(full)
        self._length = count
        self._schema = selected
        return _Env(env, _Layout.of(full, selected), None, None)

    def _open_foreign(self, env: lmdb.Environment, txn: lmdb.Transaction) -> _Env:
        decode = self.backend_options.get("decode")
        if decode is None:
            raise SchemaError(
                f"{self.path} is an LMDB environment not written by shardio; pass decode= "
                "(a callable: value bytes -> dict of field -> array or bytes) to read it"
            )
        keys: list[bytes] | None = self.backend_options.get("keys")
        if keys is None:
            keys = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
        if not keys:
            raise SchemaError(f"{self.path}: the LMDB environment holds no keys to read")
        first = txn.get(keys[0])
        if first is None:
            raise ShardCorruptError(f"{self.path}: key {keys[0]!r} is not in the database")
        schema = self._select(Schema.infer(decode(bytes(first))))
        self._length = len(keys)
        self._schema = schema
        return _Env(env, None, keys, decode)

    def value_ranges(self, indices: np.ndarray) -> ValueRanges | None:
        handle = self.handle
        if handle.offsets is None:
            return None  # values found through the B-tree: the whole shard is checked
        positions = handle.offsets[indices]
        return [(handle.data_file, positions[:, 0], positions[:, 1])]

    def byte_ranges(self, start: int, stop: int) -> list[FileRange]:
        handle = self.handle
        if handle.offsets is None or stop <= start:
            return []
        part = handle.offsets[start:stop]
        return coalesce_ranges(handle.data_file, part[:, 0], part[:, 1], gap=_HINT_GAP)

    def _load_offsets(self, env: lmdb.Environment) -> np.ndarray | None:
        """The writer's table of value positions, if present and still true of the file."""
        path = os.path.join(self.path, OFFSETS_NAME)
        if not os.path.exists(path):
            return None
        try:
            # Mapped first: a damaged header claiming a huge shape fails here instead of
            # allocating what it claims.
            table = np.load(path, mmap_mode="r", allow_pickle=False)
            if table.shape != (len(self), 2) or table.dtype.kind not in "iu":
                return None
            end = table.offset + table.nbytes
            offsets = np.array(table, dtype=np.int64)
            del table
            with open(path, "rb") as handle:
                handle.seek(end)
                trailer = handle.read()
        except (OSError, ValueError):
            return None
        # The writer appends the table's digest (tables written before it have none).
        if trailer and trailer != xxhash.xxh3_64_digest(offsets.tobytes()):
            return None  # damaged: values are found through LMDB's own B-tree
        size = os.path.getsize(_data_file(self.path)[0])
        if len(offsets) and (
            (offsets < 0).any() or bool((offsets[:, 0] + offsets[:, 1] > size).any())
        ):
            return None  # stale or damaged: values are found through LMDB's own B-tree
        # NOTE: a copied or compacted environment moves values; a stale table would
        # return wrong bytes silently, so the first and last values are compared.
        with env.begin() as txn, open(_data_file(self.path)[0], "rb") as handle:
            for index in sorted({0, len(self) - 1}) if len(self) else []:
                offset, length = (int(x) for x in offsets[index])
                handle.seek(offset)
                if handle.read(length) != txn.get(encode_key(index)):
                    return None
        return offsets

    def _close(self, handle: _Env) -> None:
        if handle.guard_fd is not None:
            os.close(handle.guard_fd)
            handle.guard_fd = None
        if handle.values is not None:
            handle.values.close()
        _POOL.release(handle.env)

    def _drop_pages(self) -> ReleaseResult | None:
        """madvise(MADV_DONTNEED) on the environment's map.

        NOTE: safe because the environment is open read-only: a dropped page is
        re-read from the page cache on its next touch, and nothing is lost.
        """
        mappings = self._advise_mappings("dontneed")
        if not mappings:
            return None  # nothing to advise: a release closes the reader
        return ReleaseResult(
            advise_calls=len(mappings), advised_bytes=sum(m.length for m in mappings)
        )

    def advise(self, pattern: AccessPattern) -> None:
        self._advise_mappings(pattern)

    def _advise_mappings(self, advice: str) -> list[Any]:
        """madvise every mapping of data.mdb, found now (see ``_Env.mapped``); returns
        those advised. A map closed between the lookup and its madvise (by another
        thread) fails with ENOMEM and is skipped."""
        advised = []
        for mapping in self.handle.mapped():
            try:
                advise_range(mapping.start, mapping.length, advice)
            except OSError:
                continue
            advised.append(mapping)
        return advised

    def read_many(self, indices: np.ndarray) -> Columns:
        return self.read_into(indices, {})

    def read_into(self, indices: np.ndarray, out: Mapping[str, np.ndarray]) -> Columns:
        handle = self.handle
        if handle.values is None:  # `PositionedFile.read_rows` checks its own map
            handle.check_unchanged()
        if handle.layout is None:  # foreign values are decoded, then copied
            decoded = self._read_foreign(handle, indices)
            for name, array in out.items():
                array[...] = decoded[name]
                decoded[name] = array
            return decoded
        layout = handle.layout
        count = len(indices)
        # Each selected fixed field's bytes go straight into its own output rows: the
        # caller's array where it gave one of the field's dtype, else a new one.
        targets = [
            _Target(offset, size, _rows(out.get(name), dtype, count, size))
            for (name, offset, size), (dtype, _) in zip(
                layout.fixed_fields, layout.fixed_types, strict=True
            )
        ]
        variable: dict[str, list[Any]] = {name: [] for name, _, _ in layout.variable_fields}
        if handle.offsets is not None:
            self.bytes_read += self._read_by_offsets(handle, indices, targets, variable)
        else:
            self.bytes_read += self._read_through_map(handle, indices, targets, variable)
        columns: Columns = dict(variable)
        for (name, _, _), (dtype, shape), target in zip(
            layout.fixed_fields, layout.fixed_types, targets, strict=True
        ):
            rows = target.rows.view(dtype).reshape(count, *shape)
            given = out.get(name)
            if given is not None:
                if not np.may_share_memory(given, target.rows):
                    given[...] = rows  # another dtype or layout: converted as copied
                rows = given
            columns[name] = rows
        if not variable:  # fixed fields only: already in the schema's order
            return columns
        return {name: columns[name] for name in self.schema.names}

    def _read_through_map(
        self,
        handle: _Env,
        indices: np.ndarray,
        targets: list[_Target],
        variable: dict[str, list[Any]],
    ) -> int:
        """One read transaction; each value copied out of LMDB's map."""
        assert handle.layout is not None
        header = handle.layout.header
        nbytes = 0
        with handle.env.begin(buffers=True) as txn:
            get = txn.get
            for row, index in enumerate(indices.tolist()):
                value = get(encode_key(index))
                if value is None:
                    raise ShardCorruptError(f"{self.path}: sample {index} is missing")
                nbytes += len(value)
                for target in targets:
                    start = header + target.offset
                    target.rows[row] = value[start : start + target.size]
                if variable:
                    self._split_variable(value, handle.layout, variable)
        return nbytes

    def _read_by_offsets(
        self,
        handle: _Env,
        indices: np.ndarray,
        targets: list[_Target],
        variable: dict[str, list[Any]],
    ) -> int:
        """Copy each value from its recorded position, without walking LMDB's B-tree:
        from shardio's own map of data.mdb, or with pread (no page mapped at all, the
        read mode under a memory budget)."""
        assert handle.offsets is not None and handle.layout is not None
        layout = handle.layout
        positions = handle.offsets[indices]
        values = handle.values
        assert values is not None
        # Fields stored side by side are one row each of the positioned-read layer's.
        if layout.fixed_adjacent and not variable:
            if targets:
                first = layout.header + targets[0].offset
                values.read_rows(positions[:, 0] + first, [t.rows for t in targets])
            return int(positions[:, 1].sum())
        view = values.view
        if view is not None:
            values.check_size()
            for row, (offset, length) in enumerate(positions.tolist()):
                for target in targets:
                    start = offset + layout.header + target.offset
                    target.rows[row] = view[start : start + target.size]
                if variable:
                    self._split_variable(view[offset : offset + length].data, layout, variable)
            return int(positions[:, 1].sum())
        fd = values.fd
        for row, (offset, length) in enumerate(positions.tolist()):
            value = os.pread(fd, length, offset)
            if len(value) != length:
                raise ShardCorruptError(f"{self.path}: data.mdb ends inside sample {indices[row]}")
            for target in targets:
                start = layout.header + target.offset
                target.rows[row] = np.frombuffer(value, np.uint8, target.size, start)
            self._split_variable(memoryview(value), layout, variable)
        return int(positions[:, 1].sum())

    @staticmethod
    def _split_variable(value: memoryview, layout: _Layout, out: dict[str, list[Any]]) -> None:
        count = layout.header // _LENGTH.itemsize
        lengths = np.frombuffer(value, dtype=_LENGTH, count=count)
        starts = layout.header + layout.fixed + np.concatenate(([0], np.cumsum(lengths)))
        for name, position, is_bytes in layout.variable_fields:
            piece = value[int(starts[position]) : int(starts[position + 1])]
            if is_bytes:
                out[name].append(bytes(piece))
            else:
                out[name].append(np.frombuffer(piece, dtype=layout.variable_dtypes[name]).copy())

    def _read_foreign(self, handle: _Env, indices: np.ndarray) -> Columns:
        assert handle.keys is not None and handle.decode is not None
        samples = []
        with handle.env.begin() as txn:
            for index in indices.tolist():
                key = handle.keys[index]
                value = txn.get(key)
                if value is None:
                    raise ShardCorruptError(f"{self.path}: key {key!r} is not in the database")
                self.bytes_read += len(value)
                samples.append(handle.decode(value))
        try:
            return samples_to_columns(samples, self.schema)
        except KeyError as exc:
            raise SchemaError(
                f"{self.path}: decode= returned a sample without field {exc.args[0]!r}"
            ) from None


class LMDBWriter(ShardFileWriter):
    """Writes a shardio LMDB environment (a directory holding ``data.mdb``)."""

    format = "lmdb"
    libraries = ("lmdb",)
    options = frozenset({"map_size"})

    def __init__(self, path: str, schema: Schema, **options: Any) -> None:
        super().__init__(path, schema, **options)
        self._map_size = int(options.get("map_size", 1 << 30))
        # NOTE: meminit=True (LMDB zeroes unused page space). With meminit=False pages
        # carry leftover heap memory into the file: shards would differ byte for byte
        # between runs (breaking reproducible checksums) and leak process memory.
        self._env: lmdb.Environment | None = lmdb.open(
            path,
            map_size=self._map_size,
            subdir=True,
            sync=False,
            metasync=False,
            readahead=False,
            meminit=True,
            max_dbs=0,
        )
        self._fixed = [f for f in schema if not f.variable]
        self._variable = [f for f in schema if f.variable]

    def _encode(self, columns: Columns, count: int) -> list[bytes]:
        parts = [
            np.ascontiguousarray(columns[f.name], dtype=f.dtype).reshape(count, -1).view(np.uint8)
            for f in self._fixed
        ]
        fixed = np.concatenate(parts, axis=1) if parts else np.empty((count, 0), np.uint8)
        if not self._variable:
            return [row.tobytes() for row in fixed]
        values = []
        for row in range(count):
            pieces = []
            for fld in self._variable:
                value = columns[fld.name][row]
                pieces.append(
                    value
                    if isinstance(value, bytes)
                    else np.ascontiguousarray(value, fld.dtype).tobytes()
                )
            header = np.array([len(p) for p in pieces], dtype=_LENGTH).tobytes()
            values.append(b"".join((header, fixed[row].tobytes(), *pieces)))
        return values

    def append(self, columns: Columns, count: int) -> None:
        assert self._env is not None
        items = [
            (encode_key(self.count + i), v) for i, v in enumerate(self._encode(columns, count))
        ]
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    txn.cursor().putmulti(items, append=True)
                break
            except lmdb.MapFullError:
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)
        self.count += count

    def close(self) -> None:
        if self._env is None:
            return
        env, self._env = self._env, None
        meta = json.dumps({"version": 1, "count": self.count, "schema": self.schema.to_json()})
        with env.begin(write=True) as txn:
            txn.put(META_KEY, meta.encode())
        env.sync(True)
        env.close()
        lock = os.path.join(self.path, "lock.mdb")
        if os.path.exists(lock):
            os.remove(lock)  # readers open with lock=False; a stale lock file is noise
        write_offsets(self.path, self.count)


def write_offsets(path: str, count: int) -> bool:
    """Record where each value of a finished environment lies in data.mdb.

    Readers under a memory budget pread values there instead of faulting LMDB's map
    into the process. Returns False where the positions cannot be learned (no /proc).
    """
    if not madvise_supported():
        return False
    data_file = os.path.join(path, "data.mdb")
    env = lmdb.open(path, subdir=True, readonly=True, lock=False, max_dbs=0)
    try:
        mappings = find_mappings(data_file)
        # NOTE: LMDB maps data.mdb whole, from offset 0, in one read-only mapping, so
        # a value's address minus the map's start is its offset in the file.
        if len(mappings) != 1 or mappings[0].offset != 0:
            return False
        base = mappings[0].start
        offsets = np.empty((count, 2), dtype=np.int64)
        with env.begin(buffers=True) as txn:
            for index in range(count):
                value = txn.get(encode_key(index))
                if value is None:
                    raise ShardCorruptError(f"{path}: sample {index} was not written")
                offsets[index] = (np.frombuffer(value, np.uint8).ctypes.data - base, len(value))
    finally:
        env.close()
    temporary = os.path.join(path, f".{OFFSETS_NAME}.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, offsets)
        handle.write(xxhash.xxh3_64_digest(offsets.tobytes()))  # checked by readers
    os.replace(temporary, os.path.join(path, OFFSETS_NAME))
    return True
