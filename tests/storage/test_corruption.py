"""Damaged, hostile and changing files: a ShardioError or the data that was written,
never other data, another exception or a dead process (see tests/corruption.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from corruption import FORMATS, campaign

from shardio import ShardCorruptError, ShardedDataset, ShardioError, ShardWriter

# The campaign and its truncated-while-open variant run for LMDB by default and for
# every format under `-m slow` (a child process each: 3 to 8 s on a busy machine).
# Every format's damaged shards are also read by default in
# tests/storage/test_campaign2.py and tests/storage/test_integrity.py.
ONE_FAST_FORMAT = [f if f == "lmdb" else pytest.param(f, marks=pytest.mark.slow) for f in FORMATS]


@pytest.mark.parametrize("format", ONE_FAST_FORMAT)
def test_corruption_campaign(format: str) -> None:
    results = campaign(format, seed=1, flips=10, cuts=5)
    assert len(results) >= 30
    kinds = {case.kind for case, _ in results}
    assert {"flip", "cut", "delete", "manifest"} <= kinds
    unexpected = [
        (case, outcome)
        for case, outcome in results
        if outcome != "held"
        # With verify="off" (the default) no backend checks value bytes on read: a flip
        # inside a value reads back flipped (verify= and verify() see every one).
        # Manifests and LMDB offsets tables are checked in full.
        and not (
            outcome == "wrong"
            and case.kind == "flip"
            and not case.target.endswith(("manifest.json", "shardio-offsets.npy"))
        )
    ]
    assert unexpected == []


# Under `-m slow` for every format (a child process each): the default run catches a
# flipped value byte with verify= for every format in tests/storage/test_integrity.py.
@pytest.mark.slow
@pytest.mark.parametrize("format", FORMATS)
def test_every_flip_is_caught_with_verify_first_read(format: str) -> None:
    results = campaign(format, seed=2, flips=12, cuts=0, verify="first-read")
    flips = [outcome for case, outcome in results if case.kind == "flip"]
    assert len(flips) == 12
    assert [o for _, o in results if o != "held"] == []


def _dataset(tmp_path, format: str = "mmap") -> str:
    path = str(tmp_path / "ds")
    with ShardWriter(path, format=format, shard_size="64KB") as writer:
        writer.write_batch({"x": np.arange(20000, dtype=np.int64).reshape(5000, 4)})
    return path


@pytest.mark.parametrize("format", ONE_FAST_FORMAT)
def test_shard_truncated_while_open_raises(tmp_path, format: str) -> None:
    """Run in a child: before the fix this killed the process with SIGBUS."""
    path = _dataset(tmp_path, format)
    script = f"""
import os, numpy as np
from shardio import ShardedDataset, ShardioError
ds = ShardedDataset({path!r})
assert ds[3]["x"].tolist() == [12, 13, 14, 15]
shard = os.path.join({path!r}, ds.reader.shard_infos[0].path)
files = [os.path.join(d, f) for d, _, n in os.walk(shard) for f in n] or [shard]
biggest = max(files, key=os.path.getsize)
os.truncate(biggest, os.path.getsize(biggest) // 8)
try:
    ds.read_batch(np.arange(0, 1000, 3))
except ShardioError as exc:
    print("error", type(exc).__name__)
else:
    print("read")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() in (["error", "ShardCorruptError"], ["read"])
    if format in ("mmap", "lmdb"):  # read through a mapping: the data is gone
        assert done.stdout.split() == ["error", "ShardCorruptError"]


def test_hdf5_external_storage_is_refused_unless_allowed(tmp_path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.arange(40, dtype=np.int32).tobytes())
    path = str(tmp_path / "ext.h5")
    with h5py.File(path, "w") as file:
        file.create_dataset("x", shape=(40,), dtype=np.int32, external=[(str(outside), 0, 160)])
    with pytest.raises(ShardioError, match=r"'x' is stored in external files.*allow_external"):
        ShardedDataset(path)[0]
    assert ShardedDataset(path, allow_external=True)[7]["x"] == 7


def test_hdf5_virtual_dataset_and_external_link_are_refused(tmp_path) -> None:
    source = str(tmp_path / "source.h5")
    with h5py.File(source, "w") as file:
        file["data"] = np.arange(10)
    path = str(tmp_path / "vds.h5")
    layout = h5py.VirtualLayout(shape=(10,), dtype=np.int64)
    layout[:] = h5py.VirtualSource(source, "data", shape=(10,))
    with h5py.File(path, "w") as file:
        file.create_virtual_dataset("v", layout)
    with pytest.raises(ShardioError, match="virtual dataset"):
        ShardedDataset(path)[0]
    linked = str(tmp_path / "link.h5")
    with h5py.File(linked, "w") as file:
        file["l"] = h5py.ExternalLink(source, "data")
    with pytest.raises(ShardioError, match="external link"):
        ShardedDataset(linked, fields=["l"])[0]
    assert ShardedDataset(path, allow_external=True)[4]["v"] == 4


def test_tiny_hdf5_file_declaring_huge_dataset(tmp_path) -> None:
    path = str(tmp_path / "tiny.h5")
    with h5py.File(path, "w") as file:
        file.create_dataset("x", shape=(3 * 10**8,), chunks=(1,), dtype=np.float32)
        file.create_dataset("y", shape=(10**13, 1000), chunks=(1, 1000), dtype=np.uint8)
    assert os.path.getsize(path) < 10_000
    for field in ("x", "y"):
        with pytest.raises(ShardCorruptError, match=r"declare .* rows"):
            ShardedDataset(path, fields=[field])


def test_shard_link_to_outside_directory_is_refused(tmp_path) -> None:
    path = _dataset(tmp_path, "lmdb")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    data = os.path.join(path, "shard-00000.lmdb", "data.mdb")
    os.rename(data, outside / "data.mdb")
    os.symlink(outside / "data.mdb", data)
    with pytest.raises(ShardCorruptError, match="outside the dataset directory"):
        ShardedDataset(path)[0]
    assert ShardedDataset(path, allow_external=True)[1]["x"].tolist() == [4, 5, 6, 7]


def test_links_anywhere_in_a_shard_are_checked_once_listed(tmp_path) -> None:
    """A shard that is itself a link, a linked directory deep inside a Zarr shard, and a
    link that stays inside the dataset: the one listing of the shard sees them all."""
    path = _dataset(tmp_path, "zarr")
    shard = os.path.join(path, "shard-00000.zarr")
    outside = tmp_path / "elsewhere"
    shutil.move(shard, outside)
    os.symlink(outside, shard)  # the shard directory itself lives elsewhere
    with pytest.raises(ShardCorruptError, match="outside the dataset directory"):
        ShardedDataset(path)[0]
    os.remove(shard)
    shutil.move(outside, shard)
    chunks = os.path.join(shard, "x", "c")
    moved = tmp_path / "chunks"
    shutil.move(chunks, moved)
    os.symlink(moved, chunks)  # a directory link deep inside
    with pytest.raises(ShardCorruptError, match=r"x/c leads to .*chunks, outside"):
        ShardedDataset(path)[0]
    os.remove(chunks)
    shutil.move(moved, os.path.join(path, ".kept-chunks"))
    os.symlink(os.path.join(path, ".kept-chunks"), chunks)  # inside the dataset: fine
    assert ShardedDataset(path, verify_sizes=False)[1]["x"].tolist() == [4, 5, 6, 7]


def test_lmdb_opened_by_hand_with_a_lock_file_still_reads(tmp_path) -> None:
    import lmdb

    path = _dataset(tmp_path, "lmdb")
    env = lmdb.open(os.path.join(path, "shard-00000.lmdb"), readonly=True)  # lock=True
    env.close()
    assert os.path.exists(os.path.join(path, "shard-00000.lmdb", "lock.mdb"))
    assert ShardedDataset(path)[2]["x"].tolist() == [8, 9, 10, 11]
    import shardio

    assert shardio.verify(path).ok


def test_tiny_hostile_files_open_under_a_memory_cap(tmp_path) -> None:
    """A 512 MB address-space cap: a file or manifest claiming far more than it holds
    is refused without allocating what it claims."""
    path = str(tmp_path / "tiny.h5")
    with h5py.File(path, "w") as file:
        file.create_dataset("x", shape=(3 * 10**8,), chunks=(1,), dtype=np.float32)
    manifest_dir = _dataset(tmp_path, "lmdb")
    manifest_path = os.path.join(manifest_dir, "manifest.json")
    import json

    with open(manifest_path) as handle:
        manifest = json.load(handle)
    manifest["shards"][0]["num_samples"] = 10**12
    manifest.pop("num_samples")
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    script = f"""
import resource
from shardio import DatasetReader, ShardioError
resource.setrlimit(resource.RLIMIT_AS, (512 * 2**20, 512 * 2**20))
for target in ({path!r}, {manifest_dir!r}):
    try:
        DatasetReader(target)
    except ShardioError as exc:
        print(type(exc).__name__)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ShardCorruptError", "ManifestError"]
