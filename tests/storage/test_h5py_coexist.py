"""shardio opening an HDF5 file changes nothing about the user's own h5py.File on it."""

from __future__ import annotations

import gc
import multiprocessing
from pathlib import Path

import h5py
import numpy as np
import pytest
from handwritten import write_images

from shardio import ShardedDataset


def _user_reads(path: str) -> np.ndarray:
    with h5py.File(path, "r") as f:  # the user's code: h5py's defaults
        return np.asarray(f["labels"][:])


def test_h5py_opens_the_file_after_shardio(tmp_path: Path) -> None:
    path = str(tmp_path / "train.h5")
    _, labels = write_images(path)
    ds = ShardedDataset(path)
    assert int(ds[2]["labels"]) == labels[2]  # shardio holds the file open now
    assert np.array_equal(_user_reads(path), labels)
    ds.close()


@pytest.mark.parametrize("locking", [None, False, True])
def test_shardio_opens_the_file_after_h5py(tmp_path: Path, locking: bool | None) -> None:
    path = str(tmp_path / "train.h5")
    _, labels = write_images(path)
    with h5py.File(path, "r", locking=locking) as mine:
        ds = ShardedDataset(path)
        assert int(ds[5]["labels"]) == labels[5]
        assert np.array_equal(mine["labels"][:], labels)
        ds.close()
    del ds
    gc.collect()
    assert np.array_equal(_user_reads(path), labels)


def test_forked_worker_opens_with_h5py_after_the_parent_used_shardio(tmp_path: Path) -> None:
    path = str(tmp_path / "train.h5")
    _, labels = write_images(path)
    ds = ShardedDataset(path)
    assert int(ds[0]["labels"]) == labels[0]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply(_user_reads, (path,))
    assert np.array_equal(got, labels)
    ds.close()
