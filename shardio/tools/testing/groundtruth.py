"""Ground-truth datasets written with each backend's own library, never with shardio.

Every adapter is checked against these files, so an adapter cannot pass by agreeing
with its own writer. The shardio-format files (LMDB values and offsets table, the raw
mmap layout, shardio's Zarr and HDF5 layouts, the manifest) are written here from the
documented layout (docs/format.md), byte by byte.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h5py
import lmdb
import numpy as np
import xxhash
import zarr
from zarr.dtype import VariableLengthBytes

N = 97
#: Where stored bytes of a sample lie: (file, offset, bytes, True for value bytes and
#: False for index entries such as a raw mmap field's offsets).
Location = tuple[str, int, bytes, bool]


@dataclass
class Truth:
    """What a dataset must read back as."""

    columns: dict[str, Any]
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    variable: tuple[str, ...] = ()
    #: Per sample, where its stored bytes lie: (file, offset, bytes), for the layouts
    #: whose positions the format documents (LMDB with offsets table, raw mmap).
    locations: list[list[Location]] | None = None
    #: The adapter claims readahead ranges for every sample of this truth.
    claims_ranges: bool = False

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    @property
    def count(self) -> int:
        return len(self.columns[self.names[0]])

    def sample(self, index: int) -> dict[str, Any]:
        return {name: column[index] for name, column in self.columns.items()}


def make_columns(
    n: int = N, variable: bool = True, seed: int = 0, big_endian: bool = False
) -> dict[str, Any]:
    """Columns to write: fixed fields, and (``variable``) bytes and ragged fields with
    empty values every few rows; ``big_endian`` adds a big-endian fixed and ragged field."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {
        "image": rng.standard_normal((n, 4, 5)).astype(np.float32),
        "label": np.arange(n, dtype=np.int64) * 3 - 7,
    }
    if variable:
        columns["blob"] = [
            bytes(rng.integers(0, 256, size=i % 13, dtype=np.uint8)) for i in range(n)
        ]
        columns["seq"] = [np.arange(i % 5, dtype=np.int32) * (i + 1) for i in range(n)]
    if big_endian:
        columns["wide"] = rng.standard_normal((n, 3)).astype(">f8")
        if variable:
            columns["counts"] = [
                (np.arange(i % 4, dtype=">u2") + 300 * i).astype(">u2") for i in range(n)
            ]
    return columns


def variable_names(columns: dict[str, Any]) -> tuple[str, ...]:
    return tuple(n for n, c in columns.items() if not isinstance(c, np.ndarray))


def read_back(columns: dict[str, Any]) -> dict[str, Any]:
    """What a ShardedDataset hands back for ``columns``: fixed fields in native byte
    order (torch holds no other), variable ones as stored."""
    return {
        n: c.astype(c.dtype.newbyteorder("=")) if isinstance(c, np.ndarray) else c
        for n, c in columns.items()
    }


# -------------------------------------------------------------------- HDF5
def write_hdf5(path: str, columns: dict[str, Any]) -> None:
    """A plain HDF5 file as other tools write it: nested group, vlen types."""
    with h5py.File(path, "w") as file:
        file.create_dataset("image", data=columns["image"], chunks=(8, 4, 5), compression="gzip")
        # Uncompressed and chunked: read as raw chunk bytes.
        file.create_group("meta").create_dataset("label", data=columns["label"], chunks=(8,))
        file.attrs["description"] = "written by h5py"
        if "blob" in columns:
            blob = file.create_dataset(
                "blob", (len(columns["blob"]),), dtype=h5py.vlen_dtype(np.uint8)
            )
            for i, value in enumerate(columns["blob"]):
                blob[i] = np.frombuffer(value, np.uint8)
            seq = file.create_dataset(
                "seq", (len(columns["seq"]),), dtype=h5py.vlen_dtype(np.int32)
            )
            for i, value in enumerate(columns["seq"]):
                seq[i] = value


def hdf5_truth(directory: str) -> Truth:
    columns = make_columns()
    path = os.path.join(directory, "plain.h5")
    write_hdf5(path, columns)
    # A variable-length uint8 dataset (how HDF5 users store encoded images) reads as a
    # ragged uint8 field: the file does not say it holds bytes.
    blobs = [np.frombuffer(v, np.uint8) for v in columns["blob"]]
    renamed = {
        "image": columns["image"],
        "meta/label": columns["label"],
        "blob": blobs,
        "seq": columns["seq"],
    }
    return Truth(renamed, path, variable=("blob", "seq"), claims_ranges=True)


# -------------------------------------------------------------------- Zarr
def zarr_truth(directory: str) -> Truth:
    columns = make_columns(variable=False)
    path = os.path.join(directory, "plain.zarr")
    group = zarr.open_group(path, mode="w")
    # One array uncompressed (read as chunk files), one with zarr's default codecs.
    group.create_array("image", data=columns["image"], chunks=(10, 4, 5), compressors=None)
    group.create_group("meta").create_array("label", data=columns["label"], chunks=(16,))
    return Truth(
        {"image": columns["image"], "meta/label": columns["label"]}, path, claims_ranges=True
    )


# -------------------------------------------------------------------- LMDB
def shardio_lmdb_value(sample: dict[str, Any], fixed: list[str], variable: list[str]) -> bytes:
    """The documented value layout: uint64 lengths of variable fields, fixed, variable."""
    pieces = [
        sample[n] if isinstance(sample[n], bytes) else np.ascontiguousarray(sample[n]).tobytes()
        for n in variable
    ]
    header = np.array([len(p) for p in pieces], dtype="<u8").tobytes()
    body = b"".join(np.ascontiguousarray(sample[n]).tobytes() for n in fixed)
    return header + body + b"".join(pieces)


def schema_json(columns: dict[str, Any]) -> list[dict[str, Any]]:
    fields = []
    for name, column in columns.items():
        if isinstance(column, np.ndarray):
            fields.append(
                {
                    "name": name,
                    "dtype": column.dtype.str,
                    "shape": list(column.shape[1:]),
                    "kind": "array",
                }
            )
        elif isinstance(column[0], bytes):
            fields.append({"name": name, "dtype": "|u1", "shape": [], "kind": "bytes"})
        else:
            fields.append(
                {"name": name, "dtype": column[0].dtype.str, "shape": [], "kind": "ragged"}
            )
    return fields


def write_shardio_lmdb(
    path: str,
    columns: dict[str, Any],
    schema: list[dict[str, Any]] | None = None,
    offsets: bool = True,
) -> list[list[Location]]:
    """A shardio LMDB environment; with ``offsets``, its offsets table too.

    Returns where each value lies in data.mdb, found by searching the file for the
    value's bytes (each value is unique): nothing here asks LMDB or shardio."""
    schema = schema or schema_json(columns)
    fixed = [f["name"] for f in schema if f["kind"] == "array"]
    variable = [f["name"] for f in schema if f["kind"] != "array"]
    n = len(next(iter(columns.values())))
    values = [
        shardio_lmdb_value({k: v[i] for k, v in columns.items()}, fixed, variable) for i in range(n)
    ]
    env = lmdb.open(path, map_size=1 << 26, subdir=True)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            # In key order, appended: no page split leaves a stale copy of a value.
            txn.put(i.to_bytes(8, "big"), value, append=True)
        meta = {"version": 1, "count": n, "schema": schema}
        txn.put(b"__shardio__", json.dumps(meta).encode(), append=True)
    env.close()
    data_file = os.path.join(path, "data.mdb")
    with open(data_file, "rb") as handle:
        content = handle.read()
    table = np.empty((n, 2), dtype=np.int64)
    for i, value in enumerate(values):
        at = content.find(value)
        if at < 0 or content.find(value, at + 1) >= 0:
            raise AssertionError(f"value {i} is not stored once, contiguously, in {data_file}")
        table[i] = (at, len(value))
    if offsets:
        # docs/format.md: an (N, 2) int64 .npy, then the XXH3-64 digest of its bytes.
        with open(os.path.join(path, "shardio-offsets.npy"), "wb") as handle:
            np.save(handle, table)
            handle.write(xxhash.xxh3_64_digest(table.tobytes()))
    return [
        [(data_file, int(at), value, True)] for (at, _), value in zip(table, values, strict=True)
    ]


def lmdb_truth(directory: str, offsets: bool = True) -> Truth:
    """A shardio LMDB environment, big-endian fields included; read by recorded offsets
    (``offsets``), or through LMDB's B-tree."""
    columns = make_columns(big_endian=True)
    path = os.path.join(directory, "written.lmdb")
    locations = write_shardio_lmdb(path, columns, offsets=offsets)
    return Truth(
        read_back(columns),
        path,
        variable=variable_names(columns),
        locations=locations if offsets else None,
        claims_ranges=offsets,
    )


def decode_npz_value(value: bytes) -> dict[str, Any]:
    """decode= for the foreign LMDB: a label in 8 bytes, then the image's float32 data."""
    return {
        "label": np.frombuffer(value, dtype="<i8", count=1)[0],
        "image": np.frombuffer(value, dtype="<f4", offset=8).reshape(4, 5),
    }


def foreign_lmdb_truth(directory: str) -> Truth:
    columns = make_columns(variable=False)
    path = os.path.join(directory, "foreign.lmdb")
    env = lmdb.open(path, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(N):
            value = (
                np.int64(columns["label"][i]).tobytes()
                + columns["image"][i].astype("<f4").tobytes()
            )
            txn.put(f"img-{i:06d}".encode(), value)
    env.close()
    truth = {"label": columns["label"], "image": columns["image"]}
    return Truth(truth, path, options={"decode": decode_npz_value})


# -------------------------------------------------------------------- raw mmap
def write_mmap_shard(
    path: str, columns: dict[str, Any], schema: list[dict[str, Any]] | None = None
) -> list[list[Location]]:
    """A raw mmap shard; returns where each sample's bytes lie in its files."""
    os.makedirs(path)
    schema = schema or schema_json(columns)
    files: dict[str, dict[str, str]] = {}
    n = len(next(iter(columns.values())))
    locations: list[list[Location]] = [[] for _ in range(n)]
    for number, fld in enumerate(schema):
        column = columns[fld["name"]]
        if fld["kind"] == "array":
            data_path = os.path.join(path, f"{number:03d}.bin")
            files[fld["name"]] = {"data": f"{number:03d}.bin"}
            column.tofile(data_path)
            size = column[0].nbytes if n else 0
            for i in range(n):
                locations[i].append((data_path, i * size, column[i].tobytes(), True))
            continue
        files[fld["name"]] = {"data": f"{number:03d}.data", "offsets": f"{number:03d}.offsets"}
        data_path = os.path.join(path, f"{number:03d}.data")
        offsets_path = os.path.join(path, f"{number:03d}.offsets")
        pieces = [np.frombuffer(v, np.uint8) if isinstance(v, bytes) else v for v in column]
        offsets = np.concatenate(([0], np.cumsum([p.size for p in pieces]))).astype("<i8")
        # np.concatenate returns native order: cast back to the field's byte order.
        dtype = np.dtype(fld["dtype"])
        data = np.concatenate(pieces).astype(dtype) if pieces else np.empty(0, dtype)
        data.tofile(data_path)
        offsets.tofile(offsets_path)
        itemsize = data.dtype.itemsize
        for i, piece in enumerate(pieces):
            # The offsets file tells where a value lies: index, not value bytes.
            locations[i].append((offsets_path, i * 8, offsets[i : i + 2].tobytes(), False))
            locations[i].append((data_path, int(offsets[i]) * itemsize, piece.tobytes(), True))
    meta = {"format": "shardio-mmap", "version": 1, "count": n, "schema": schema, "files": files}
    with open(os.path.join(path, "shardio-mmap.json"), "w") as handle:
        json.dump(meta, handle)
    return locations


def mmap_truth(directory: str) -> Truth:
    columns = make_columns(big_endian=True)
    path = os.path.join(directory, "raw.mmap")
    locations = write_mmap_shard(path, columns)
    return Truth(
        read_back(columns),
        path,
        variable=variable_names(columns),
        locations=locations,
        claims_ranges=True,
    )


# -------------------------------------------------------------------- shardio Zarr and HDF5
def _stored_values(column: list[Any], dtype: np.dtype) -> list[np.ndarray]:
    return [np.frombuffer(v, np.uint8) if isinstance(v, bytes) else v.astype(dtype) for v in column]


def write_shardio_zarr(path: str, columns: dict[str, Any]) -> None:
    """shardio's Zarr v3 layout, written with zarr: one array per fixed field,
    ``<name>.data`` and ``<name>.offsets`` (N + 1 int64) per variable one."""
    schema = schema_json(columns)
    n = len(next(iter(columns.values())))
    group = zarr.open_group(path, mode="w")
    for fld in schema:
        column = columns[fld["name"]]
        if fld["kind"] == "array":
            group.create_array(fld["name"], data=column, chunks=(16, *column.shape[1:]))
            continue
        pieces = _stored_values(column, np.dtype(fld["dtype"]))
        ends = np.cumsum([p.size for p in pieces])
        offsets = np.concatenate(([0], ends)).astype("<i8")
        group.create_array(f"{fld['name']}.offsets", data=offsets, chunks=(32,))
        data = np.concatenate(pieces)
        group.create_array(f"{fld['name']}.data", data=data, chunks=(64,), compressors=None)
    group.attrs["shardio"] = {"version": 1, "count": n, "schema": schema}


def netcdf3_truth(directory: str) -> Truth:
    """A netCDF3 64-bit offset file written by scipy: record variables along an
    unlimited dimension (netCDF3 has no int64: labels are int32), a string per row.
    Not in `SOURCES` (whose every entry each loader test reads): its conformance test
    is tests/storage/test_netcdf3.py."""
    from scipy.io import netcdf_file

    columns = make_columns(variable=False)
    columns["label"] = columns["label"].astype(np.int32)
    names = [f"s{i}".encode() * (i % 3) for i in range(N)]
    path = os.path.join(directory, "plain.nc")
    with netcdf_file(path, "w", version=2) as file:
        file.createDimension("sample", None)
        file.createDimension("y", 4)
        file.createDimension("x", 5)
        file.createDimension("chars", 6)
        file.createVariable("image", "f4", ("sample", "y", "x"))[:] = columns["image"]
        file.createVariable("label", "i4", ("sample",))[:] = columns["label"]
        chars = np.zeros((N, 6), dtype="S1")
        for i, name in enumerate(names):
            chars[i, : len(name)] = list(name.decode())
        file.createVariable("name", "c", ("sample", "chars"))[:] = chars
    columns["name"] = names
    return Truth(read_back(columns), path, variable=("name",))


def shardio_zarr_truth(directory: str) -> Truth:
    columns = make_columns(big_endian=True)
    path = os.path.join(directory, "shard.zarr")
    write_shardio_zarr(path, columns)
    return Truth(read_back(columns), path, variable=variable_names(columns), claims_ranges=True)


def write_shardio_hdf5(path: str, columns: dict[str, Any]) -> None:
    """shardio's HDF5 layout, written with h5py: one chunked dataset per field
    (variable-length types for variable fields), schema and count in root attributes."""
    schema = schema_json(columns)
    n = len(next(iter(columns.values())))
    with h5py.File(path, "w") as file:
        for fld in schema:
            column = columns[fld["name"]]
            if fld["kind"] == "array":
                file.create_dataset(fld["name"], data=column, chunks=(16, *column.shape[1:]))
                continue
            dtype = np.dtype(fld["dtype"])
            dataset = file.create_dataset(fld["name"], (n,), dtype=h5py.vlen_dtype(dtype))
            for i, value in enumerate(_stored_values(column, dtype)):
                dataset[i] = value
        file.attrs["shardio_schema"] = json.dumps(schema)
        file.attrs["shardio_count"] = n


def shardio_hdf5_truth(directory: str) -> Truth:
    columns = make_columns(big_endian=True)
    path = os.path.join(directory, "shard.h5")
    write_shardio_hdf5(path, columns)
    return Truth(read_back(columns), path, variable=variable_names(columns), claims_ranges=True)


def zarr_variable_truth(directory: str) -> Truth:
    """A foreign Zarr group with a variable-length field (zarr's own vlen-bytes)."""
    columns = make_columns(variable=False)
    path = os.path.join(directory, "vlen.zarr")
    group = zarr.open_group(path, mode="w")
    group.create_array("label", data=columns["label"], chunks=(16,))
    names = np.array([f"sample-{i}".encode() * (i % 3) for i in range(N)], dtype=object)
    array = group.create_array("name", shape=(N,), dtype=VariableLengthBytes(), chunks=(16,))
    array[:] = names
    return Truth({"label": columns["label"], "name": list(names)}, path, variable=("name",))


# -------------------------------------------------------------------- dataset directory
def _files_of(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names)


def write_manifest(
    directory: str, fmt: str, columns: dict[str, Any], shards: list[tuple[str, int]]
) -> None:
    entries = []
    for name, count in shards:
        files = _files_of(os.path.join(directory, name))
        digest = xxhash.xxh3_128()
        for f in files:
            digest.update(os.path.relpath(f, os.path.join(directory, name)).encode() + b"\0")
            with open(f, "rb") as handle:
                digest.update(handle.read())
            digest.update(b"\0")
        entries.append(
            {
                "path": name,
                "num_samples": count,
                "nbytes": sum(os.path.getsize(f) for f in files),
                "checksum": f"xxh3_128:{digest.hexdigest()}",
            }
        )
    manifest = {
        "shardio_manifest": 1,
        "format": fmt,
        "schema": schema_json(columns),
        "shards": entries,
        "metadata": {},
    }
    with open(os.path.join(directory, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)


def sharded_truth(directory: str, fmt: str = "mmap") -> Truth:
    """A dataset directory of three shards of uneven size (one empty), written by hand."""
    columns = make_columns()
    root = os.path.join(directory, f"{fmt}-set.shardio")
    os.makedirs(root)
    bounds = [(0, 40), (40, 40), (40, N)]
    shards = []
    locations: list[list[Location]] = []
    writer = {"mmap": write_mmap_shard, "lmdb": write_shardio_lmdb}[fmt]
    for number, (start, stop) in enumerate(bounds):
        name = f"shard-{number:05d}.{fmt}"
        part = {k: v[start:stop] for k, v in columns.items()}
        locations += writer(os.path.join(root, name), part, schema_json(columns))
        shards.append((name, stop - start))
    write_manifest(root, fmt, columns, shards)
    return Truth(columns, root, variable=("blob", "seq"), locations=locations, claims_ranges=True)


SOURCES: dict[str, Callable[[str], Truth]] = {
    "hdf5": hdf5_truth,
    "hdf5-shardio": shardio_hdf5_truth,
    "zarr": zarr_truth,
    "zarr-shardio": shardio_zarr_truth,
    "zarr-variable": zarr_variable_truth,
    "lmdb": lmdb_truth,
    "lmdb-btree": functools.partial(lmdb_truth, offsets=False),
    "lmdb-foreign": foreign_lmdb_truth,
    "mmap": mmap_truth,
    "sharded-mmap": sharded_truth,
    "sharded-lmdb": functools.partial(sharded_truth, fmt="lmdb"),
}
"""Every ground truth by name."""
