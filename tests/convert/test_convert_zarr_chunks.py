"""Zarr shards written chunk by chunk (the fast path conversion relies on) hold exactly
the files zarr-python writes for the same data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from shardio import Field, Schema
from shardio.storage.adapters.zarr._adapter import ZarrWriter, make_compressors


def chunk_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


@pytest.mark.parametrize("compressor", [None, "zstd", "gzip"])
@pytest.mark.parametrize(
    ("dtype", "shape"), [("<f4", (3, 5)), ("u1", (700,)), ("<i8", ()), (">f8", (2,))]
)
def test_chunks_match_zarr_python(tmp_path, compressor, dtype, shape) -> None:
    rng = np.random.default_rng(3)
    data = (rng.standard_normal((103, *shape)) * 100).astype(dtype)
    schema = Schema((Field("x", np.dtype(dtype), shape),))
    writer = ZarrWriter(str(tmp_path / "direct"), schema, compressor=compressor, chunk_bytes=700)
    for start in range(0, 103, 17):  # appends that do not line up with chunks
        writer.append({"x": data[start : start + 17]}, len(data[start : start + 17]))
    writer.close()
    direct = zarr.open_group(str(tmp_path / "direct"), mode="r")["x"]
    np.testing.assert_array_equal(direct[:], data)
    reference = zarr.open_group(str(tmp_path / "reference"), mode="w").create_array(
        "x", shape=data.shape, chunks=direct.chunks, dtype=dtype,
        compressors=make_compressors(compressor),
    )  # fmt: skip
    reference[:] = data
    ours, theirs = chunk_files(tmp_path / "direct" / "x"), chunk_files(tmp_path / "reference" / "x")
    assert ours.keys() == theirs.keys() and len(ours) == -(-103 // direct.chunks[0])
    for key in ours:
        if compressor == "gzip":  # zarr-python's gzip headers carry the time of writing
            assert ours[key][4:8] == b"\0\0\0\0", key
            assert ours[key][10:] == theirs[key][10:], key  # the same deflate stream
        else:
            assert ours[key] == theirs[key], key


@pytest.mark.parametrize("compressor", [None, "gzip"])
def test_variable_fields_and_reruns_give_the_same_bytes(tmp_path, compressor) -> None:
    schema = Schema(
        (Field("b", np.dtype("u1"), (), "bytes"), Field("r", np.dtype("<i4"), (), "ragged"))
    )
    blobs = [bytes(range(i % 50)) for i in range(300)]
    ragged = [np.arange(i % 7, dtype="<i4") for i in range(300)]
    for run in ("one", "two"):
        writer = ZarrWriter(str(tmp_path / run), schema, compressor=compressor, chunk_bytes=256)
        for start in range(0, 300, 64):
            writer.append({"b": blobs[start : start + 64], "r": ragged[start : start + 64]},
                          len(blobs[start : start + 64]))  # fmt: skip
        writer.close()
    assert chunk_files(tmp_path / "one") == chunk_files(tmp_path / "two")
    from shardio.storage.adapters.zarr._adapter import ZarrReader

    reader = ZarrReader(str(tmp_path / "one"))
    got = reader.read_many(np.arange(300))
    assert got["b"] == blobs
    assert all(np.array_equal(a, b) for a, b in zip(got["r"], ragged, strict=True))


def test_abort_leaves_no_thread_behind(tmp_path) -> None:
    import threading

    before = threading.active_count()
    schema = Schema((Field("x", np.dtype("u1"), (1000,)),))
    writer = ZarrWriter(str(tmp_path / "z"), schema, compressor="zstd")
    writer.append({"x": np.zeros((2000, 1000), np.uint8)}, 2000)
    writer.abort()
    assert threading.active_count() <= before
    assert os.path.isdir(tmp_path / "z")  # the caller removes the partial shard
