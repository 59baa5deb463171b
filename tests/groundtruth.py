"""Ground-truth datasets written with each backend's own library, never with shardio.

Every adapter is checked against these files, so an adapter cannot pass by agreeing
with its own writer. The shardio-format files (LMDB values, raw mmap layout, the
manifest) are written here from the documented layout, byte by byte.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import lmdb
import numpy as np
import xxhash
import zarr

N = 97


@dataclass
class Truth:
    """What a dataset must read back as."""

    columns: dict[str, Any]
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    variable: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def sample(self, index: int) -> dict[str, Any]:
        return {name: column[index] for name, column in self.columns.items()}


def make_columns(n: int = N, variable: bool = True, seed: int = 0) -> dict[str, Any]:
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
    return columns


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
    return Truth(renamed, path, variable=("blob", "seq"))


# -------------------------------------------------------------------- Zarr
def zarr_truth(directory: str) -> Truth:
    columns = make_columns(variable=False)
    path = os.path.join(directory, "plain.zarr")
    group = zarr.open_group(path, mode="w")
    # One array uncompressed (read as chunk files), one with zarr's default codecs.
    group.create_array("image", data=columns["image"], chunks=(10, 4, 5), compressors=None)
    group.create_group("meta").create_array("label", data=columns["label"], chunks=(16,))
    return Truth({"image": columns["image"], "meta/label": columns["label"]}, path)


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
    path: str, columns: dict[str, Any], schema: list[dict[str, Any]] | None = None
) -> None:
    schema = schema or schema_json(columns)
    fixed = [f["name"] for f in schema if f["kind"] == "array"]
    variable = [f["name"] for f in schema if f["kind"] != "array"]
    n = len(next(iter(columns.values())))
    env = lmdb.open(path, map_size=1 << 26, subdir=True)
    with env.begin(write=True) as txn:
        for i in range(n):
            sample = {k: v[i] for k, v in columns.items()}
            txn.put(i.to_bytes(8, "big"), shardio_lmdb_value(sample, fixed, variable))
        txn.put(b"__shardio__", json.dumps({"version": 1, "count": n, "schema": schema}).encode())
    env.close()


def lmdb_truth(directory: str) -> Truth:
    columns = make_columns()
    path = os.path.join(directory, "written.lmdb")
    write_shardio_lmdb(path, columns)
    return Truth(columns, path, variable=("blob", "seq"))


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
) -> None:
    os.makedirs(path)
    schema = schema or schema_json(columns)
    files: dict[str, dict[str, str]] = {}
    n = len(next(iter(columns.values())))
    for number, fld in enumerate(schema):
        column = columns[fld["name"]]
        if fld["kind"] == "array":
            files[fld["name"]] = {"data": f"{number:03d}.bin"}
            column.tofile(os.path.join(path, f"{number:03d}.bin"))
            continue
        files[fld["name"]] = {"data": f"{number:03d}.data", "offsets": f"{number:03d}.offsets"}
        pieces = [np.frombuffer(v, np.uint8) if isinstance(v, bytes) else v for v in column]
        offsets = np.concatenate(([0], np.cumsum([p.size for p in pieces]))).astype("<i8")
        data = np.concatenate(pieces) if pieces else np.empty(0, np.uint8)
        data.tofile(os.path.join(path, f"{number:03d}.data"))
        offsets.tofile(os.path.join(path, f"{number:03d}.offsets"))
    meta = {"format": "shardio-mmap", "version": 1, "count": n, "schema": schema, "files": files}
    with open(os.path.join(path, "shardio-mmap.json"), "w") as handle:
        json.dump(meta, handle)


def mmap_truth(directory: str) -> Truth:
    columns = make_columns()
    path = os.path.join(directory, "raw.mmap")
    write_mmap_shard(path, columns)
    return Truth(columns, path, variable=("blob", "seq"))


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
    writer = {"mmap": write_mmap_shard, "lmdb": write_shardio_lmdb}[fmt]
    for number, (start, stop) in enumerate(bounds):
        name = f"shard-{number:05d}.{fmt}"
        part = {k: v[start:stop] for k, v in columns.items()}
        writer(os.path.join(root, name), part, schema_json(columns))
        shards.append((name, stop - start))
    write_manifest(root, fmt, columns, shards)
    return Truth(columns, root, variable=("blob", "seq"))


SOURCES = {
    "hdf5": hdf5_truth,
    "zarr": zarr_truth,
    "lmdb": lmdb_truth,
    "lmdb-foreign": foreign_lmdb_truth,
    "mmap": mmap_truth,
    "sharded-mmap": sharded_truth,
    "sharded-lmdb": lambda d: sharded_truth(d, "lmdb"),
}
