"""ShardWriter: round trips through every format, shard splitting, atomicity, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import shardio
from shardio import Field, Schema, ShardedDataset, ShardWriter
from shardio.tools.testing.groundtruth import make_columns

FORMATS = ["lmdb", "hdf5", "zarr", "mmap"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_batch_round_trip_in_several_shards(tmp_path, fmt: str) -> None:
    columns = make_columns(n=300)
    path = tmp_path / "out.shardio"
    with ShardWriter(path, format=fmt, shard_size="8KB") as writer:
        writer.write_batch({k: v[:120] for k, v in columns.items()})
        writer.write_batch({k: v[120:] for k, v in columns.items()})
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == fmt
    assert len(manifest["shards"]) > 3
    assert all(s["checksum"].startswith("xxh3_128:") for s in manifest["shards"])
    assert not [p for p in os.listdir(path) if p.endswith(".partial")]
    ds = ShardedDataset(path)
    assert len(ds) == 300 and sum(ds.shard_lengths) == 300
    for i in range(300):
        sample = ds[i]
        np.testing.assert_array_equal(sample["image"], columns["image"][i])
        assert sample["label"] == columns["label"][i]
        assert sample["blob"] == columns["blob"][i]
        np.testing.assert_array_equal(sample["seq"], columns["seq"][i])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("compressed", [False, True])
def test_random_batches_read_back(tmp_path, fmt: str, compressed: bool) -> None:
    """Batched reads gather rows across chunks (raw chunk reads and decoded chunks)."""
    data = np.arange(3000 * 6, dtype=np.int32).reshape(3000, 6)
    options = {}
    if compressed and fmt == "hdf5":
        options = {"compression": "gzip"}
    elif compressed and fmt == "zarr":
        options = {"compressor": "zstd"}
    with ShardWriter(tmp_path / "d", format=fmt, shard_size="40KB", **options) as writer:
        writer.write_batch({"x": data})
    ds = ShardedDataset(tmp_path / "d")
    rng = np.random.default_rng(0)
    for _ in range(5):
        batch = rng.integers(0, 3000, 300)
        np.testing.assert_array_equal(ds.read_batch(batch)["x"], data[batch])


def test_unwritten_chunks_read_as_fill_values(tmp_path) -> None:
    import h5py
    import zarr

    with h5py.File(tmp_path / "sparse.h5", "w") as file:
        dataset = file.create_dataset("x", shape=(100, 3), chunks=(10, 3), dtype="f4", fillvalue=7)
        dataset[0:10] = 1
    group = zarr.open_group(tmp_path / "sparse.zarr", mode="w")
    array = group.create_array(
        "x", shape=(100, 3), chunks=(10, 3), dtype="f4", fill_value=7, compressors=None
    )
    array[0:10] = 1
    for path in (tmp_path / "sparse.h5", tmp_path / "sparse.zarr"):
        got = ShardedDataset(path).read_batch([3, 55, 99, 0])["x"]
        np.testing.assert_array_equal(got[:, 0], [1, 7, 7, 1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_single_samples(tmp_path, fmt: str) -> None:
    path = tmp_path / "one.shardio"
    with ShardWriter(path, format=fmt) as writer:
        for i in range(1500):  # crosses the internal row buffer
            writer.write({"x": np.full(3, i, np.int32), "name": f"n{i}".encode()})
    ds = ShardedDataset(path)
    assert len(ds) == 1500
    assert ds[1234]["x"].tolist() == [1234] * 3 and ds[1234]["name"] == b"n1234"


def test_shard_size_bounds_each_shard(tmp_path) -> None:
    data = np.zeros((1000, 100), np.uint8)  # 100 bytes a sample
    with ShardWriter(tmp_path / "s", format="mmap", shard_size=2500) as writer:
        writer.write_batch({"x": data})
    assert ShardedDataset(tmp_path / "s").shard_lengths == (25,) * 40


def test_sample_larger_than_a_shard_gets_its_own(tmp_path) -> None:
    with ShardWriter(tmp_path / "s", format="mmap", shard_size=10) as writer:
        writer.write_batch({"x": np.zeros((3, 100), np.uint8)})
    assert ShardedDataset(tmp_path / "s").shard_lengths == (1, 1, 1)


def test_error_inside_with_leaves_no_manifest_and_no_partial_shard(tmp_path) -> None:
    path = tmp_path / "broken"
    with pytest.raises(RuntimeError), ShardWriter(path, format="lmdb", shard_size="4KB") as writer:
        writer.write_batch({"x": np.zeros((200, 64), np.uint8)})
        raise RuntimeError("interrupted")
    assert not (path / "manifest.json").exists()
    assert not [p for p in os.listdir(path) if "partial" in p]
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        ShardedDataset(path)


def test_existing_output_is_refused_unless_overwrite(tmp_path) -> None:
    path = tmp_path / "d"
    with ShardWriter(path) as writer:
        writer.write({"x": np.int64(1)})
    with pytest.raises(FileExistsError, match="overwrite") as info:
        ShardWriter(path)
    assert isinstance(info.value, shardio.ShardioError)
    with ShardWriter(path, overwrite=True) as writer:
        writer.write({"x": np.int64(2)})
    assert ShardedDataset(path)[0]["x"] == 2


def test_overwrite_never_deletes_foreign_files(tmp_path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(shardio.OutputExistsError, match=r"keep\.txt"):
        ShardWriter(tmp_path, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ({"x": np.zeros(4, np.float32)}, "shape"),
        ({"x": np.zeros(3, np.float32), "y": 1}, "do not match"),
        ({"x": np.array(["a", "b", "c"])}, "dtype"),
    ],
)
def test_sample_that_breaks_the_schema_is_refused(tmp_path, sample, message) -> None:
    with ShardWriter(tmp_path / "d", format="mmap") as writer:
        writer.write({"x": np.zeros(3, np.float32)})
        with pytest.raises(shardio.SchemaError, match=message):
            writer.write(sample)
    assert len(ShardedDataset(tmp_path / "d")) == 1


def test_batch_columns_must_agree_in_length(tmp_path) -> None:
    with ShardWriter(tmp_path / "d") as writer, pytest.raises(ValueError, match="differ in length"):
        writer.write_batch({"x": np.zeros(3), "y": np.zeros(4)})
        writer.write({"x": 1.0, "y": 1.0})


def test_explicit_schema_with_a_ragged_field(tmp_path) -> None:
    schema = Schema((Field("tokens", np.int32, kind="ragged"), Field("id", np.int64)))
    with ShardWriter(tmp_path / "d", format="lmdb", schema=schema) as writer:
        writer.write({"tokens": np.arange(5, dtype=np.int32), "id": 0})
        writer.write({"tokens": np.arange(2, dtype=np.int32), "id": 1})
    ds = ShardedDataset(tmp_path / "d")
    assert ds[0]["tokens"].tolist() == [0, 1, 2, 3, 4] and ds[1]["tokens"].tolist() == [0, 1]


def test_unknown_format_and_bad_shard_size(tmp_path) -> None:
    with pytest.raises(ValueError, match="format should be one of") as info:
        ShardWriter(tmp_path / "a", format="parquet")
    assert isinstance(info.value, shardio.UnknownFormatError)
    with pytest.raises(shardio.InvalidOptionError, match="shard_size"):
        ShardWriter(tmp_path / "b", shard_size="lots")


def test_nothing_written_without_schema_is_an_error(tmp_path) -> None:
    with (
        pytest.raises(shardio.SchemaError, match="nothing was written"),
        ShardWriter(tmp_path / "d"),
    ):
        pass
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_empty_dataset_with_schema(tmp_path) -> None:
    schema = Schema((Field("x", np.float32, (2,)),))
    with ShardWriter(tmp_path / "d", schema=schema):
        pass
    ds = ShardedDataset(tmp_path / "d")
    assert len(ds) == 0 and ds.fields == ("x",)
    with pytest.raises(IndexError):
        ds[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_structured_and_big_endian_dtypes_round_trip(tmp_path, fmt: str) -> None:
    dtype = np.dtype([("a", ">i4"), ("b", "<f8", (2,))])
    records = np.zeros(10, dtype)
    records["a"] = np.arange(10)
    records["b"] = np.arange(20).reshape(10, 2) / 3
    big = np.arange(10, dtype=">u2")
    with ShardWriter(tmp_path / "d", format=fmt) as writer:
        writer.write_batch({"rec": records, "big": big})
    stored = shardio.DatasetReader(tmp_path / "d").read_many(range(10))  # as stored
    assert stored["rec"].dtype == dtype and stored["big"].dtype == big.dtype
    np.testing.assert_array_equal(stored["rec"], records)
    np.testing.assert_array_equal(stored["big"], big)
    ds = ShardedDataset(tmp_path / "d")  # torch-facing: native byte order
    assert ds[3]["big"].dtype == np.dtype("=u2") and ds[3]["big"] == 3
    assert ds.read_batch([4])["rec"].dtype.isnative
    np.testing.assert_array_equal(ds.read_batch(range(10))["rec"], records)


def test_zarr_stores_bytes_and_string_dtypes_as_raw_bytes(tmp_path) -> None:
    """Zarr v3 has no stable spec for S/U dtypes: they are stored as uint8 rows (no
    zarr-python warning, readable anywhere) and come back as written."""
    import warnings

    import zarr

    codes = np.array([b"ab", b"xyz12345", b""], dtype="S8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ShardWriter(tmp_path / "ds", format="zarr") as writer:
            writer.write_batch({"code": codes})
    shard = next(p for p in (tmp_path / "ds").iterdir() if p.is_dir())
    group = zarr.open_group(str(shard), mode="r")
    assert group["code"].dtype == np.uint8 and group["code"].shape == (3, 8)
    ds = ShardedDataset(tmp_path / "ds")
    batch = ds.read_batch([2, 0, 1])
    np.testing.assert_array_equal(batch["code"], codes[[2, 0, 1]])
    assert ds[0]["code"] == b"ab"
    # <U is refused by every writer alike (HDF5 and raw shards could not store it;
    # issue 29): one message, naming what to store instead.
    names = np.array(["é", "name", "abcd"], dtype=">U4")
    with pytest.raises(shardio.SchemaError, match="not every backend stores; store it as bytes"):
        ShardWriter(tmp_path / "text", format="zarr").write_batch({"name": names})


def test_zarr_shards_with_native_bytes_arrays_still_read(tmp_path, monkeypatch) -> None:
    """Shards written before bytes dtypes were stored as raw rows hold S arrays."""
    import warnings

    from shardio.storage.adapters.zarr import _adapter as _zarr

    codes = np.array([b"ab", b"xyz12345", b""], dtype="S8")
    with monkeypatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr-python's unstable-spec warning, as back then
        patch.setattr(_zarr, "_stored_as_bytes", lambda fld: fld.dtype.fields is not None)
        with ShardWriter(tmp_path / "ds", format="zarr") as writer:
            writer.write_batch({"code": codes})
    ds = ShardedDataset(tmp_path / "ds")
    assert ds.reader.shard(0).handle.columns["code"].data.dtype == np.dtype("S8")
    np.testing.assert_array_equal(ds.read_batch([1, 2, 0])["code"], codes[[1, 2, 0]])
