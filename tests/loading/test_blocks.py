"""Reused blocks in the main process: a block comes back only when nothing refers to it."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest
import torch
from test_dataset_batches import assert_batch_equals_columns
from torch.utils.data import DataLoader, RandomSampler

from shardio import Loader, ShardedDataset
from shardio.loading.blocks import BlockPool, pooled_columns
from shardio.tools.testing.groundtruth import SOURCES

torch.set_num_threads(1)


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def test_a_block_comes_back_only_when_its_last_view_is_freed() -> None:
    pool = BlockPool()
    owner = pool.take(10_000)
    assert owner.nbytes == 12_288 and owner.flags.writeable
    first = _address(owner)
    tensor = torch.from_numpy(owner[64:128].view(np.int64))  # a view keeps the block
    del owner
    gc.collect()
    assert pool.free_bytes == 0
    other = pool.take(10_000)
    assert _address(other) != first  # not the block the tensor still shows
    tensor.fill_(7)
    del tensor
    gc.collect()
    assert pool.free_bytes == 12_288
    again = pool.take(12_000)
    assert _address(again) == first and pool.free_bytes == 0
    assert _address(other) != first


@pytest.mark.parametrize("source", ["mmap", "hdf5", "zarr-variable", "lmdb-foreign"])
def test_pooled_columns_lay_out_fixed_fields(tmp_path: Any, source: str) -> None:
    truth = SOURCES[source](str(tmp_path))
    ds = ShardedDataset(truth.path, **truth.options)
    arrays = pooled_columns(ds.schema, 5)
    fixed = [f.name for f in ds.schema if not f.variable and f.dtype.kind in "biufc"]
    assert list(arrays) == fixed
    for name, array in arrays.items():
        assert array.shape == (5, *ds.schema[name].shape) and array.dtype.isnative


@pytest.mark.parametrize("source", ["mmap", "sharded-lmdb", "hdf5", "zarr-variable"])
def test_batches_kept_by_the_loop_stay_intact(tmp_path: Any, source: str) -> None:
    """Loader threads (torch's own sampler: index arrays) and the 0-worker DataLoader
    read into reused blocks: every kept batch still equals read_batch at the end."""
    truth = SOURCES[source](str(tmp_path))
    ds = ShardedDataset(truth.path, **truth.options)
    seed, size = 5, 8
    order = list(RandomSampler(ds, generator=torch.Generator().manual_seed(seed)))
    loaders: list[Any] = [
        Loader(
            ds,
            size,
            sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(seed)),
            threads=2,
        ),
        DataLoader(
            ds, size, sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
        ),
    ]
    for loader in loaders:
        kept = list(loader)  # every batch held while the later ones are read
        starts = range(0, len(order), size)
        assert len(kept) == len(starts) > 1
        for batch, start in zip(kept, starts, strict=True):
            assert_batch_equals_columns(batch, ds.read_batch(order[start : start + size]))
