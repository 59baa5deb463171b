"""Bad input: each failure is a ShardioError (and the matching builtin) naming what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shardio
from shardio import ShardedDataset, ShardWriter


def test_missing_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.h5") as info:
        ShardedDataset(tmp_path / "nope.h5")
    assert isinstance(info.value, shardio.DatasetNotFoundError)


def test_unknown_format_names_the_path(tmp_path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"data\.csv") as info:
        ShardedDataset(path)
    assert isinstance(info.value, shardio.UnknownFormatError)
    with pytest.raises(shardio.UnknownFormatError, match="format should be one of"):
        ShardedDataset(path, format="csv")


def test_hdf5_without_suffix_is_found_by_signature(tmp_path) -> None:
    import h5py

    path = tmp_path / "data.bin"
    with h5py.File(path, "w") as file:
        file["x"] = np.arange(5)
    assert ShardedDataset(path)[4]["x"] == 4


def _dataset(tmp_path, fmt: str = "mmap") -> str:
    path = str(tmp_path / f"{fmt}.shardio")
    with ShardWriter(path, format=fmt, shard_size="4KB") as writer:
        writer.write_batch({"x": np.arange(4000, dtype=np.int64).reshape(1000, 4)})
    return path


def _edit_manifest(path: str, edit) -> None:
    manifest_path = os.path.join(path, "manifest.json")
    with open(manifest_path) as handle:
        data = json.load(handle)
    edit(data)
    with open(manifest_path, "w") as handle:
        json.dump(data, handle)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("shards"), "'shards'"),
        (lambda d: d.update(format="tape"), "'format'"),
        (lambda d: d.update(shardio_manifest=99), "shardio_manifest"),
        (lambda d: d["shards"][0].pop("num_samples"), "shard 0"),
        (lambda d: d["shards"][1].update(path="../../etc/passwd"), "shard 1"),
        (lambda d: d.update(num_samples=5), "num_samples"),
        (lambda d: d.update(schema=[{"name": "x"}]), "schema"),
    ],
)
def test_malformed_manifest(tmp_path, edit, message: str) -> None:
    path = _dataset(tmp_path)
    _edit_manifest(path, edit)
    with pytest.raises(ValueError, match=message) as info:
        ShardedDataset(path)
    assert isinstance(info.value, shardio.ManifestError)
    assert "manifest.json" in str(info.value)


def test_manifest_that_is_not_json(tmp_path) -> None:
    path = _dataset(tmp_path)
    with open(os.path.join(path, "manifest.json"), "w") as handle:
        handle.write("{not json")
    with pytest.raises(shardio.ManifestError, match="not valid JSON"):
        ShardedDataset(path)


def test_manifest_count_that_disagrees_with_the_shard(tmp_path) -> None:
    path = _dataset(tmp_path)
    _edit_manifest(
        path,
        lambda d: (
            d["shards"][0].update(num_samples=d["shards"][0]["num_samples"] + 1)
            or d.pop("num_samples")
        ),
    )
    ds = ShardedDataset(path)
    with pytest.raises(shardio.ShardCorruptError, match="manifest says"):
        ds[0]


def _truncate_first_shard(path: str, fmt: str) -> str:
    shard = os.path.join(path, sorted(p for p in os.listdir(path) if p.startswith("shard-"))[0])
    target = {
        "mmap": os.path.join(shard, "000.bin"),
        "lmdb": os.path.join(shard, "data.mdb"),
        "hdf5": shard,
    }[fmt]
    with open(target, "r+b") as handle:
        handle.truncate(os.path.getsize(target) // 2)
    return shard


@pytest.mark.parametrize("fmt", ["mmap", "lmdb", "hdf5"])
def test_truncated_shard_is_refused_before_it_is_mapped(tmp_path, fmt: str) -> None:
    path = _dataset(tmp_path, fmt)
    shard = _truncate_first_shard(path, fmt)
    ds = ShardedDataset(path)
    with pytest.raises(OSError, match="truncated") as info:
        ds[0]
    assert isinstance(info.value, shardio.ShardCorruptError)
    assert os.path.basename(shard) in str(info.value)


@pytest.mark.parametrize("fmt", [pytest.param("mmap", marks=pytest.mark.slow), "lmdb"])
def test_truncated_single_shard_without_manifest_does_not_crash(tmp_path, fmt: str) -> None:
    """Opened directly (no manifest to compare with), reading must raise, not SIGBUS."""
    path = _dataset(tmp_path, fmt)
    shard = _truncate_first_shard(path, fmt)
    script = textwrap.dedent(
        f"""
        import shardio
        try:
            ds = shardio.ShardedDataset({shard!r})
            [ds[i] for i in range(len(ds))]
        except shardio.ShardCorruptError as exc:
            print("refused:", exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "truncated" in result.stdout


@pytest.mark.parametrize("suffix", [".h5", ".lmdb", ".zarr"])
def test_garbage_file_is_a_clear_error(tmp_path, suffix: str) -> None:
    path = tmp_path / f"junk{suffix}"
    if suffix == ".lmdb":
        path.mkdir()
        (path / "data.mdb").write_bytes(os.urandom(20000))
    elif suffix == ".zarr":
        path.mkdir()
        (path / "zarr.json").write_text("{broken")
    else:
        path.write_bytes(os.urandom(4096))
    with pytest.raises(shardio.ShardioError, match="junk"):
        ShardedDataset(path)[0]


def test_backend_option_the_backend_does_not_take(tmp_path) -> None:
    path = _dataset(tmp_path, "hdf5")
    with pytest.raises(shardio.InvalidOptionError, match="decode") as info:
        ShardedDataset(path, decode=lambda b: {})[0]
    assert isinstance(info.value, ValueError)


def test_foreign_lmdb_without_decode(tmp_path) -> None:
    import lmdb

    env = lmdb.open(str(tmp_path / "f.lmdb"))
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    with pytest.raises(shardio.SchemaError, match="decode="):
        ShardedDataset(tmp_path / "f.lmdb")


def test_foreign_lmdb_with_keys_order(tmp_path) -> None:
    import lmdb

    env = lmdb.open(str(tmp_path / "f.lmdb"))
    with env.begin(write=True) as txn:
        for i in range(5):
            txn.put(f"k{i}".encode(), np.int64(i * 10).tobytes())
    env.close()
    ds = ShardedDataset(
        tmp_path / "f.lmdb",
        decode=lambda b: {"v": np.frombuffer(b, np.int64)[0]},
        keys=["k3", "k0"],
    )
    assert len(ds) == 2 and ds[0]["v"] == 30 and ds[1]["v"] == 0
    with pytest.raises(shardio.ShardCorruptError, match="k9"):
        ShardedDataset(tmp_path / "f.lmdb", decode=lambda b: {"v": b}, keys=["k0", "k9"])[1]


def test_hdf5_datasets_that_disagree_on_length_open_on_the_largest_set(tmp_path) -> None:
    import h5py

    path = tmp_path / "mixed.h5"
    with h5py.File(path, "w") as file:
        file["images"] = np.zeros((10, 2))
        file["classes"] = np.zeros(3)
    with pytest.warns(shardio.FieldsChosenWarning) as caught:
        assert len(ShardedDataset(path)) == 10  # a tie: the longer axis
    lines = [str(w.message) for w in caught]
    assert lines == [
        f"{path}: read 1 field(s) along 10 rows: 'images'",
        f"{path}: left out 1 array(s): 'classes' (3 rows, not 10). "
        "To read others, pass fields=['classes'] (--fields classes)",
    ]
    assert len(ShardedDataset(path, fields=["classes"])) == 3
    with pytest.raises(shardio.SchemaError, match=r"'images': 10, 'classes': 3"):
        ShardedDataset(path, fields=["images", "classes"])


def test_non_integer_index(tmp_path) -> None:
    ds = ShardedDataset(_dataset(tmp_path))
    with pytest.raises(shardio.SampleIndexError, match="integer"):
        ds["3"]  # type: ignore[index]


def test_big_endian_variable_length_arrays_read_their_values(tmp_path) -> None:
    """h5py labels big-endian vlen elements as native without swapping them."""
    import h5py

    path = tmp_path / "be.h5"
    values = [np.array([-3, 1, 256], dtype=">i2"), np.array([7], dtype=">i2")]
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset("seq", (2,), dtype=h5py.vlen_dtype(np.dtype(">i2")))
        for i, value in enumerate(values):
            dataset[i] = value
    ds = ShardedDataset(path)
    assert ds[0]["seq"].tolist() == [-3, 1, 256]
    assert [list(v) for v in ds.read_batch([1, 0])["seq"]] == [[7], [-3, 1, 256]]


def test_exhausted_file_descriptors_are_named_not_read_as_an_empty_shard(tmp_path) -> None:
    """Listing a shard directory under EMFILE once looked like a 0-byte shard."""
    with ShardWriter(tmp_path / "ds", format="mmap", shard_size="4KB") as writer:
        writer.write_batch({"x": np.zeros((100, 100), np.uint8)})
    script = f"""
import os, resource, shardio
ds = shardio.ShardedDataset({str(tmp_path / "ds")!r})
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    ds[99]
except shardio.ShardioError as error:
    print(type(error).__name__, error)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    # Its own error, naming both fixes: no shard is damaged (issue 29).
    assert out.startswith("TooManyOpenFilesError cannot open"), out
    assert "Too many open files" in out and "0 bytes" not in out
    assert "ulimit -n" in out and "max_open_shards=" in out


def test_many_shards_under_a_small_descriptor_limit_read_by_closing_old_ones(tmp_path) -> None:
    """300 shards, random batches, a process allowed 64 descriptors: readers beyond
    max_open_shards are closed least recently used first, and every read is right."""
    with ShardWriter(tmp_path / "ds", format="mmap", shard_size="1KB") as writer:
        writer.write_batch({"x": np.arange(300 * 16 * 8, dtype=np.int64).reshape(300 * 16, 8)})
    script = f"""
import resource, numpy as np, shardio
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
ds = shardio.ShardedDataset({str(tmp_path / "ds")!r}, max_rss="64MB")
assert len(ds.shard_lengths) >= 300, len(ds.shard_lengths)
rng = np.random.default_rng(0)
for _ in range(20):
    batch = rng.integers(0, len(ds), 200)
    assert np.array_equal(ds.read_batch(batch)["x"][:, 0], batch * 8)
print(len(ds.reader.open_readers))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert 0 < int(out.stdout) <= 16  # max(16, 64 // 8)


def test_max_open_shards_is_checked() -> None:
    with pytest.raises(shardio.InvalidOptionError, match="max_open_shards"):
        from shardio.storage.openlimit import resolve_open_limit

        resolve_open_limit(0)
