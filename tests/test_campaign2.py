"""The second reliability campaign's classes, one fast case each (issue 29).

The seeded draw over every class and format is `tests/campaign2.py`; these cases are
the ones the default run keeps."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shardio import Loader, ShardedDataset, ShardWriter
from shardio.errors import SampleIndexError, SchemaError, ShardCorruptError

FORMATS = ["mmap", "lmdb", "zarr", "hdf5"]

BAD_NAMES = [
    ["a\\b"],
    ["."],
    [".."],
    ["zarr.json"],
    ["trailing/"],
    ["/lead"],
    ["a//b"],
    ["nul\x00"],
    ["a", "a/b"],
    ["v", "v.data"],
    ["v", "v.offsets"],
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_field_names_refused_before_any_shard(tmp_path: Path, fmt: str) -> None:
    refused = []
    for number, names in enumerate(BAD_NAMES):
        out = tmp_path / f"d{number}"
        rule = "a field name is a non-empty string"
        with pytest.raises(SchemaError, match=rule) as info, ShardWriter(out, format=fmt) as w:
            w.write({n: np.int64(1) for n in names})
        assert os.listdir(out) == []  # no shard, no .partial, no manifest
        refused.append(str(info.value))
    assert len(refused) == len(BAD_NAMES)
    with ShardWriter(tmp_path / "ok", format=fmt) as writer:  # groups are fine
        writer.write({"g/x": np.int64(1), "v": b"ab", "w.data": np.float32(2)})
    (sample,) = list(ShardedDataset(tmp_path / "ok"))
    assert (int(sample["g/x"]), sample["v"], float(sample["w.data"])) == (1, b"ab", 2.0)


def test_convert_refuses_backslash_field(tmp_path: Path) -> None:
    import h5py

    from shardio import convert

    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["temp\\degC"] = np.arange(4.0)
    with pytest.raises(SchemaError, match="contains `\\\\`"):
        convert(str(tmp_path / "src.h5"), str(tmp_path / "out"), format="zarr")
    assert not (tmp_path / "out" / "manifest.json").exists()


NARROWING = [
    (np.int8(1), np.int64(300)),
    (np.uint16(1), np.uint32(70000)),
    (np.float32(1), 1e300),
    (np.int32(1), np.uint64(2**63)),
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_refuses_values_that_do_not_fit(tmp_path: Path, fmt: str) -> None:
    for number, (first, later) in enumerate(NARROWING):
        for batch in (False, True):
            out = tmp_path / f"d{number}{batch}"
            refused = r"expects dtype|which holds|as inf"
            with pytest.raises(SchemaError, match=refused), ShardWriter(out, format=fmt) as writer:
                if batch:
                    writer.write_batch({"x": np.array([first])})
                    writer.write_batch({"x": np.array([later])})
                else:
                    writer.write({"x": first})
                    writer.write({"x": later})
            assert not (out / "manifest.json").exists()
    with ShardWriter(tmp_path / "fits", format=fmt) as writer:
        writer.write({"x": np.int8(1), "f": np.float32(1)})
        writer.write({"x": np.int64(-128), "f": 0.5})
        writer.write_batch({"x": np.array([127], np.int64), "f": np.array([3e38])})
    values = ShardedDataset(tmp_path / "fits").read_batch([0, 1, 2])
    assert values["x"].tolist() == [1, -128, 127] and values["x"].dtype == np.int8
    assert values["f"].tolist()[:2] == [1.0, 0.5] and np.isfinite(values["f"]).all()


BAD_INDICES = [
    [np.uint64(2**64 - 1)],
    np.array([2**64 - 1], dtype=np.uint64),
    np.ones(5, dtype=bool),
    [True, 1],
    [1.0],
    np.array([1.0]),
    ["3"],
    [None],
    [2**64],
    [-6],
    np.array([[1]]),
]


def test_one_index_validation(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "d", format="mmap", shard_size=16) as writer:
        writer.write_batch({"x": np.arange(5)})
    ds = ShardedDataset(tmp_path / "d")
    refused = 0
    for bad in BAD_INDICES:
        with pytest.raises(SampleIndexError):
            ds.read_batch(bad)
        refused += 1
    for one in (1.0, True, "3", None, 2**64, np.uint64(2**64 - 1), np.bool_(True)):
        with pytest.raises(SampleIndexError):
            ds[one]
        refused += 1
    for sampler in ([1.0], ["3"], [None], [np.uint64(2**64 - 1)]):
        with pytest.raises(SampleIndexError):
            list(Loader(ds, batch_size=1, sampler=sampler))
        refused += 1
    assert refused == len(BAD_INDICES) + 7 + 4
    assert ds.read_batch([1, -1, np.int32(2)])["x"].tolist() == [1, 4, 2]
    assert ds.read_batch(np.array([3], np.uint8))["x"].tolist() == [3]
    assert ds.read_batch(range(2))["x"].tolist() == [0, 1]


def _write_full(path: Path, fmt: str, value: int) -> None:
    with ShardWriter(path, format=fmt, shard_size=64, overwrite=True) as writer:
        writer.write_batch({"x": np.full(16, value, dtype=np.int64)})


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("verify", ["off", "first-read"])
def test_reopened_shard_is_the_generation_first_opened(
    tmp_path: Path, fmt: str, verify: str
) -> None:
    path = tmp_path / "d"
    _write_full(path, fmt, 1)
    ds = ShardedDataset(path, max_open_shards=1, verify=verify)
    assert len(ds.shard_lengths) > 1
    assert ds.read_batch([0, len(ds) - 1])["x"].tolist() == [1, 1]  # shard 0 evicted
    _write_full(path, fmt, 2)
    with pytest.raises(ShardCorruptError, match="changed since this dataset first opened"):
        ds.read_batch([0])
    assert ShardedDataset(path).read_batch([0])["x"].tolist() == [2]  # a new one reads it


def test_first_read_checks_blocks_again_after_a_reopen(tmp_path: Path) -> None:
    """A rewrite that keeps inode, size and mtime passes the generation check; the
    blocks checked under the old handle are not trusted for the new one."""
    path = tmp_path / "d"
    _write_full(path, "mmap", 1)
    ds = ShardedDataset(path, max_open_shards=1, verify="first-read")
    assert ds.read_batch([0, len(ds) - 1])["x"].tolist() == [1, 1]
    (data,) = (path / "shard-00000.mmap").glob("*.bin")
    stat = data.stat()
    with open(data, "r+b") as handle:
        handle.write(np.int64(7).tobytes())
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ShardCorruptError, match="differ from what was written"):
        ds.read_batch([0])
