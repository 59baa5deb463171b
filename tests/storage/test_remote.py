"""Object storage: datasets read over S3 from a real S3 API server (moto) on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

import shardio
from shardio import ShardedDataset, ShardWriter

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3() -> Iterator[dict]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="shardio-test")
    fs = s3fs.S3FileSystem(**options)
    yield {"fs": fs, "options": options}
    server.stop()


def upload(fs, local: str, remote: str) -> None:
    for directory, _, names in os.walk(local):
        for name in names:
            path = os.path.join(directory, name)
            fs.put_file(path, f"{remote}/{os.path.relpath(path, local)}")


def test_sharded_zarr_dataset_over_s3(s3, tmp_path) -> None:
    data = np.arange(500 * 3, dtype=np.float32).reshape(500, 3)
    blobs = [bytes([i % 256]) * (i % 7) for i in range(500)]
    local = str(tmp_path / "ds.shardio")
    with ShardWriter(local, format="zarr", shard_size="2KB") as writer:
        writer.write_batch({"x": data, "blob": blobs})
    upload(s3["fs"], local, "shardio-test/ds.shardio")
    ds = ShardedDataset("s3://shardio-test/ds.shardio", storage_options=s3["options"])
    assert len(ds) == 500 and len(ds.shard_lengths) > 1
    batch = [499, 3, 250, 3]
    columns = ds.read_batch(batch)
    np.testing.assert_array_equal(columns["x"], data[batch])
    assert columns["blob"] == [blobs[i] for i in batch]
    assert ds[-2]["blob"] == blobs[498]


def test_hdf5_file_over_s3(s3, tmp_path) -> None:
    import h5py

    local = tmp_path / "plain.h5"
    with h5py.File(local, "w") as file:
        file["x"] = np.arange(40).reshape(20, 2)
    s3["fs"].put_file(str(local), "shardio-test/plain.h5")
    ds = ShardedDataset("s3://shardio-test/plain.h5", storage_options=s3["options"])
    assert len(ds) == 20
    np.testing.assert_array_equal(ds.read_batch([5, 1])["x"], [[10, 11], [2, 3]])


def test_missing_remote_object(s3) -> None:
    with pytest.raises(shardio.DatasetNotFoundError, match="nothing-here"):
        ShardedDataset("s3://shardio-test/nothing-here", storage_options=s3["options"])


def test_backends_without_remote_support_say_so(s3, tmp_path) -> None:
    local = str(tmp_path / "l.shardio")
    with ShardWriter(local, format="lmdb") as writer:
        writer.write({"x": np.int64(1)})
    upload(s3["fs"], local, "shardio-test/l.shardio")
    with pytest.raises(shardio.UnsupportedFeatureError, match="lmdb"):
        ShardedDataset("s3://shardio-test/l.shardio", storage_options=s3["options"])[0]


@pytest.mark.parametrize("kind", ["zstd-no-size", "oversized"])
def test_a_remote_zarr_chunk_past_its_bound_is_corrupt(s3, tmp_path, kind) -> None:
    """A remote chunk is bounded as a local one: one that decodes past its declared size
    (a bomb), or whose object is larger than any such chunk, is refused by name."""
    from numcodecs import Zstd

    from tests.storage.test_campaign2 import _replace_chunk, strip_zstd_content_size

    local = tmp_path / kind
    with ShardWriter(local, format="zarr", compressor="zstd") as writer:
        writer.write_batch({"x": np.arange(100_000)})
    if kind == "zstd-no-size":  # 64 MiB of zeros, a few KiB compressed
        chunk = strip_zstd_content_size(Zstd().encode(np.zeros(64 << 20, np.uint8)))
    else:  # incompressible bytes, far past what a 256 KiB chunk can compress to
        chunk = np.random.default_rng(0).bytes(4 << 20)
    _replace_chunk(local, "shard-00000.zarr/x/c/0", chunk)
    upload(s3["fs"], str(local), f"shardio-test/bounds-{kind}.shardio")
    ds = ShardedDataset(f"s3://shardio-test/bounds-{kind}.shardio", storage_options=s3["options"])
    expected = "decodes to more than" if kind == "zstd-no-size" else "holds more than the"
    with pytest.raises(shardio.ShardCorruptError, match=expected) as caught:
        ds.read_batch([0])
    assert "s3://shardio-test/" in str(caught.value)
    assert ds.read_batch([len(ds) - 1])["x"].tolist() == [len(ds) - 1]  # the rest reads
