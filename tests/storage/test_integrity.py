"""verify= on ShardedDataset: what it needs, what it checks, and in which process."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from torch.utils.data import DataLoader

from shardio import InvalidOptionError, ShardCorruptError, ShardedDataset, ShardWriter


def _write(path: str, format: str = "mmap", checksum: bool = True) -> None:
    with ShardWriter(path, format=format, shard_size="256KB", checksum=checksum) as writer:
        writer.write_batch({"x": np.arange(200_000, dtype=np.int64).reshape(50_000, 4)})


def _flip(path: str, at: float = 0.5) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.seek(int(size * at))
        byte = handle.read(1)
        handle.seek(int(size * at))
        handle.write(bytes([byte[0] ^ 0x10]))


def test_verify_needs_recorded_digests(tmp_path) -> None:
    path = str(tmp_path / "ds")
    _write(path, checksum=False)
    with pytest.raises(InvalidOptionError, match=r"verify='first-read' needs the blocks"):
        ShardedDataset(path, verify="first-read")
    with pytest.raises(InvalidOptionError, match="verify should be one of"):
        ShardedDataset(path, verify="yes")
    single = str(tmp_path / "x.h5")
    import h5py

    with h5py.File(single, "w") as file:
        file["x"] = np.arange(10)
    with pytest.raises(InvalidOptionError, match="needs a local dataset directory"):
        ShardedDataset(single, verify="open")


@pytest.mark.parametrize("format", ["mmap", "lmdb", "hdf5", "zarr"])
def test_a_flipped_value_byte_raises_only_with_verify(tmp_path, format: str) -> None:
    path = str(tmp_path / "ds")
    _write(path, format)
    shard = os.path.join(path, ShardedDataset(path).reader.shard_infos[1].path)
    files = [os.path.join(d, f) for d, _, n in os.walk(shard) for f in n] or [shard]
    _flip(max(files, key=os.path.getsize))
    every = np.arange(50_000)
    for mode in ("first-read", "open"):
        with pytest.raises(ShardCorruptError, match="damaged"):
            ShardedDataset(path, verify=mode).read_batch(every)
    # Shards other than the damaged one read fine, and are checked block by block.
    ds = ShardedDataset(path, verify="first-read")
    first = ds.read_batch(np.arange(ds.shard_lengths[0]))
    assert first["x"][:, 0].tolist() == list(range(0, 4 * ds.shard_lengths[0], 4))


def test_checks_are_per_process_and_survive_pickling(tmp_path) -> None:
    path = str(tmp_path / "ds")
    _write(path)
    ds = ShardedDataset(path, verify="first-read")
    assert ds[10]["x"].tolist() == [40, 41, 42, 43]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy[11]["x"].tolist() == [44, 45, 46, 47]
    # Damage after the parent checked its blocks: forked workers check again.
    ds.read_batch(np.arange(50_000))
    _flip(os.path.join(path, ds.reader.shard_infos[0].path, "000.bin"), 0.1)
    loader = DataLoader(ds, batch_size=1000, num_workers=1, multiprocessing_context="fork")
    batches = iter(loader)
    try:
        with pytest.raises(ShardCorruptError, match="damaged"):
            list(batches)
    finally:
        batches._shutdown_workers()  # type: ignore[attr-defined]  # now, not at collection
