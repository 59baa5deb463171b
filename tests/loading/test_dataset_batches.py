"""The DataLoader path: batches stay columns from read_batch to the training loop."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

import shardio
from shardio import Prefetcher, ShardedDataset
from shardio.loading.batches import Batch, BatchRow
from shardio.tools.testing.groundtruth import SOURCES, Truth

torch.set_num_threads(1)


def open_dataset(truth: Truth, **kwargs: Any) -> ShardedDataset:
    return ShardedDataset(truth.path, **truth.options, **kwargs)


def assert_batch_equals_columns(batch: dict[str, Any], columns: dict[str, Any]) -> None:
    """A collated batch holds exactly what read_batch read: tensors for arrays, lists else."""
    assert list(batch) == list(columns)
    for name, column in columns.items():
        got = batch[name]
        if isinstance(column, np.ndarray):
            assert isinstance(got, torch.Tensor), name
            assert got.dtype == torch.from_numpy(column).dtype, name
            np.testing.assert_array_equal(got.numpy(), column, err_msg=name)
        else:
            assert isinstance(got, list) and len(got) == len(column), name
            for value, want in zip(got, column, strict=True):
                if isinstance(want, bytes):
                    assert value == want, name
                else:
                    np.testing.assert_array_equal(value, want, err_msg=name)


def order_of(ds: ShardedDataset, seed: int = 3) -> list[int]:
    return np.random.default_rng(seed).permutation(len(ds)).tolist()


def check_loader(loader: Any, ds: ShardedDataset, order: list[int], batch_size: int) -> int:
    batches = list(loader)
    starts = range(0, len(order), batch_size)
    for batch, start in zip(batches, starts, strict=True):
        assert_batch_equals_columns(batch, ds.read_batch(order[start : start + batch_size]))
    return len(batches)


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_line_equals_read_batch(truth: Truth, workers: int) -> None:
    ds = open_dataset(truth)
    order = order_of(ds)
    loader = DataLoader(ds, batch_size=16, sampler=order, num_workers=workers)
    assert check_loader(loader, ds, order, 16) == -(-len(ds) // 16)


# The default run's one spawned DataLoader worker (a fresh interpreter: seconds); LMDB,
# whose environments belong to one process, is the backend most likely to break there.
@pytest.mark.parametrize(
    "source",
    ["sharded-lmdb", *(pytest.param(s, marks=pytest.mark.slow) for s in ("mmap", "hdf5", "zarr"))],
)
def test_spawned_workers_equal_read_batch(tmp_path: Any, source: str) -> None:
    ds = open_dataset(SOURCES[source](str(tmp_path)))
    order = order_of(ds, seed=5)
    loader = DataLoader(
        ds, batch_size=32, sampler=order, num_workers=1, multiprocessing_context="spawn"
    )
    assert check_loader(loader, ds, order, 32) == -(-len(ds) // 32)


def test_shuffled_dataloader_covers_every_sample(truth: Truth) -> None:
    fixed = [n for n in truth.names if n not in truth.variable]
    ds = open_dataset(truth, fields=fixed)
    batches = list(DataLoader(ds, batch_size=16, shuffle=True, num_workers=0))
    label = next(n for n in fixed if n.endswith("label"))
    got = torch.cat([b[label] for b in batches]).numpy()
    assert sorted(got.tolist()) == sorted(truth.columns[label].tolist())


def _shared_in_worker(batch: Batch) -> dict[str, bool]:
    """In the worker: is each fixed column the very memory the tensor sent is in?"""
    collated = batch.collate()
    return {
        name: bool(tensor.is_shared() and np.shares_memory(tensor.numpy(), batch.columns[name]))
        for name, tensor in collated.items()
        if isinstance(tensor, torch.Tensor)
    }


def test_workers_read_fixed_fields_into_shared_memory(truth: Truth) -> None:
    ds = open_dataset(truth)
    loader = DataLoader(ds, batch_size=8, num_workers=1, collate_fn=_shared_in_worker)
    shared = next(iter(loader))
    fixed = [n for n in truth.names if n not in truth.variable]
    assert shared == dict.fromkeys(fixed, True)


def test_batch_is_a_sequence_of_samples(truth: Truth) -> None:
    ds = open_dataset(truth)
    indices = [5, 0, 5, len(ds) - 1, 17]
    batch = ds.__getitems__(indices)
    assert isinstance(batch, Batch) and len(batch) == len(indices)
    samples = list(batch)
    assert len(samples) == len(indices)
    for index, row, sample in zip(indices, batch, samples, strict=True):
        want = ds[index]
        assert list(row) == list(want)
        for name in want:
            np.testing.assert_array_equal(np.asarray(row[name]), np.asarray(want[name]))
            np.testing.assert_array_equal(np.asarray(sample[name]), np.asarray(want[name]))
    assert batch[-1].keys() == batch[0].keys()
    assert batch == [ds[i] for i in indices] and batch != [ds[i] for i in indices[::-1]]
    assert ds.__getitems__([]) == []
    with pytest.raises(IndexError, match="out of range"):
        batch[len(indices)]


def test_rows_picked_from_batches_collate_as_samples(truth: Truth) -> None:
    fixed = [n for n in truth.names if n not in truth.variable]
    ds = open_dataset(truth, fields=fixed)
    first, second = ds.__getitems__([1, 2, 3]), ds.__getitems__([9, 10])
    picked = [first[2], second[0]]
    assert all(type(row) is BatchRow for row in picked)
    assert_batch_equals_columns(default_collate(picked), ds.read_batch([3, 9]))


def test_transform_per_sample_and_batch_transform(truth: Truth) -> None:
    fixed = [n for n in truth.names if n not in truth.variable]
    label = next(n for n in fixed if n.endswith("label"))
    per_sample = open_dataset(truth, fields=fixed, transform=lambda s: {"y": s[label] + 1})
    batch = next(iter(DataLoader(per_sample, batch_size=4)))
    np.testing.assert_array_equal(batch["y"].numpy(), truth.columns[label][:4] + 1)
    per_sample.close()  # LMDB opens a path once per process

    def double(batch: dict[str, Any]) -> dict[str, Any]:
        return {"y": batch[label] * 2}

    batched = open_dataset(truth, fields=fixed, batch_transform=double)
    batch = next(iter(DataLoader(batched, batch_size=4, num_workers=1)))
    np.testing.assert_array_equal(batch["y"].numpy(), truth.columns[label][:4] * 2)
    with pytest.raises(shardio.InvalidOptionError, match="batch_transform"):
        open_dataset(truth, transform=dict, batch_transform=double)


def test_byte_swapped_fields_arrive_in_native_order(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "swapped.h5")
    values = np.arange(60, dtype=">f8").reshape(20, 3)
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=values)
    ds = ShardedDataset(path)
    for workers in (0, 1):
        batch = next(iter(DataLoader(ds, batch_size=8, num_workers=workers)))
        assert batch["x"].dtype == torch.float64
        np.testing.assert_array_equal(batch["x"].numpy(), values[:8])


def test_prefetcher_takes_worker_batches(truth: Truth) -> None:
    ds = open_dataset(truth)
    order = order_of(ds, seed=9)
    loader = DataLoader(ds, batch_size=16, sampler=order, num_workers=2)
    batches = list(Prefetcher(loader, device="cpu"))
    for batch, start in zip(batches, range(0, len(order), 16), strict=True):
        assert_batch_equals_columns(batch, ds.read_batch(order[start : start + 16]))
    assert len(batches) == -(-len(ds) // 16)


def test_early_break_leaves_no_worker_processes(truth: Truth) -> None:
    ds = open_dataset(truth)
    for batch in DataLoader(ds, batch_size=8, num_workers=2):
        assert len(next(iter(batch.values()))) == 8
        break
    assert multiprocessing.active_children() == []
