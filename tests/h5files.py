"""HDF5 files as other tools write them, built with h5py alone, and the values each
field must convert to (computed with numpy, never read back through shardio)."""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

N = 50
COMPOUND = np.dtype([("x", "<i4"), ("y", ">f4"), ("v", "<f4", (2,))])


def rich_columns(n: int = N) -> dict[str, Any]:
    """Expected output columns of :func:`write_rich` (native byte order, text as UTF-8)."""
    rng = np.random.default_rng(7)
    records = np.zeros(n, COMPOUND)
    records["x"] = np.arange(n)
    records["y"] = rng.standard_normal(n)
    records["v"] = rng.standard_normal((n, 2))
    return {
        "images": rng.integers(0, 255, size=(n, 4, 4), dtype=np.uint8),
        "group/labels": (np.arange(n, dtype=np.int32) * 7) % 11,
        "group/sub/values": rng.standard_normal((n, 3)),
        "records": records,
        "names": [f"échantillon-{i}" * (i % 4) for i in range(n)],
        "blobs": [bytes(rng.integers(1, 256, size=i % 9, dtype=np.uint8)) for i in range(n)],
        "seqs": [np.arange(i % 6, dtype=np.int16) - 3 for i in range(n)],
        "fixed_str": np.array([f"s{i}".encode() for i in range(n)], dtype="S8"),
        "bools": np.arange(n) % 3 == 0,
        "ext": rng.standard_normal((n, 2)).astype(np.float32),
    }


def write_rich(directory: str, n: int = N) -> tuple[str, dict[str, Any]]:
    """A file with nested groups, gzip/lzf/shuffle chunks, a compound type, big-endian
    data, variable-length strings, bytes and arrays, a scalar, an empty dataspace, soft
    links (one an alias, one dangling) and an external link into a second file."""
    columns = rich_columns(n)
    other = os.path.join(directory, "other.h5")
    with h5py.File(other, "w") as file:
        file.create_dataset("extra", data=columns["ext"])
    path = os.path.join(directory, "rich.h5")
    with h5py.File(path, "w") as file:
        file.create_dataset(
            "images", data=columns["images"], chunks=(8, 4, 4), compression="gzip", shuffle=True
        )
        group = file.create_group("group")
        group.create_dataset("labels", data=columns["group/labels"])
        group.create_group("sub").create_dataset(
            "values",
            data=columns["group/sub/values"].astype(">f8"),
            chunks=(10, 3),
            compression="lzf",
        )
        file.create_dataset("records", data=columns["records"])
        names = file.create_dataset("names", (n,), dtype=h5py.string_dtype("utf-8"))
        names[:] = columns["names"]
        blobs = file.create_dataset("blobs", (n,), dtype=h5py.string_dtype("ascii"))
        blobs[:] = columns["blobs"]
        seqs = file.create_dataset("seqs", (n,), dtype=h5py.vlen_dtype(np.dtype(">i2")))
        for i, value in enumerate(columns["seqs"]):
            seqs[i] = value
        file.create_dataset("fixed_str", data=columns["fixed_str"])
        file.create_dataset("bools", data=columns["bools"])
        file["scalar"] = 3.5
        file.create_dataset("nothing", data=h5py.Empty("f4"))
        file["alias"] = h5py.SoftLink("/group/labels")
        file["dangling"] = h5py.SoftLink("/no/such/dataset")
        file["ext"] = h5py.ExternalLink("other.h5", "/extra")
    expected = dict(columns)
    expected["names"] = [s.encode() for s in columns["names"]]
    return path, expected


SKIPPED = {"alias", "dangling", "scalar", "nothing"}


def write_plain(path: str, n: int = 400, row_bytes: int = 256, chunks: bool = True) -> np.ndarray:
    """One uint8 dataset 'x' of ``n`` rows of ``row_bytes`` and an int64 'label'."""
    data = (np.arange(n * row_bytes, dtype=np.int64) % 251).astype(np.uint8).reshape(n, -1)
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=data, chunks=(min(16, n), row_bytes) if chunks else None)
        file.create_dataset("label", data=np.arange(n, dtype=np.int64))
    return data


def write_int128(file: h5py.File, name: str, n: int) -> None:
    """A dataset of 16-byte integers, an HDF5 type numpy has no dtype for."""
    tid = h5py.h5t.STD_I64LE.copy()
    tid.set_size(16)
    space = h5py.h5s.create_simple((n,))
    h5py.h5d.create(file.id, name.encode(), tid, space)
