"""One conformance suite for every adapter, against ground truth written without it."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from groundtruth import Truth
from torch.utils.data import DataLoader

import shardio
from shardio import ShardedDataset


def assert_sample_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert list(got) == list(want)
    for name, value in want.items():
        if isinstance(value, bytes):
            assert got[name] == value, name
        else:
            assert isinstance(got[name], np.ndarray), name
            assert got[name].dtype == np.asarray(value).dtype, name
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def open_dataset(truth: Truth, **kwargs: Any) -> ShardedDataset:
    return ShardedDataset(truth.path, **truth.options, **kwargs)


def test_length_and_schema(truth: Truth) -> None:
    ds = open_dataset(truth)
    assert len(ds) == len(truth.columns[truth.names[0]])
    assert sorted(ds.fields) == sorted(truth.names)
    assert sum(ds.shard_lengths) == len(ds)


def test_every_sample_reads_back(truth: Truth) -> None:
    ds = open_dataset(truth, fields=truth.names)
    for index in range(len(ds)):
        assert_sample_equal(ds[index], truth.sample(index))


def test_negative_indices_count_from_the_end(truth: Truth) -> None:
    ds = open_dataset(truth, fields=truth.names)
    assert_sample_equal(ds[-1], truth.sample(len(ds) - 1))
    assert_sample_equal(ds[-len(ds)], truth.sample(0))


def test_batched_read_equals_single_reads(truth: Truth) -> None:
    ds = open_dataset(truth, fields=truth.names)
    rng = np.random.default_rng(1)
    indices = [*rng.integers(0, len(ds), size=40).tolist(), 5, 5, -2, 0]
    batch = ds.__getitems__(indices)
    assert len(batch) == len(indices)
    for index, sample in zip(indices, batch):
        assert_sample_equal(sample, ds[index])
    columns = ds.read_batch(indices)
    for name in truth.names:
        if name in truth.variable:
            assert len(columns[name]) == len(indices)
        else:
            want = np.stack([truth.sample(i)[name] for i in indices])
            np.testing.assert_array_equal(columns[name], want)


def test_readahead_ranges_lie_inside_the_shard_files(truth: Truth) -> None:
    ds = open_dataset(truth, fields=truth.names)
    n = len(ds)
    for start, stop in ((0, n), (n // 3, n // 3 + 2), (n - 1, n)):
        for shard, length in enumerate(ds.shard_lengths):
            first = int(ds.reader.index.starts[shard])
            lo, hi = max(0, start - first), min(length, stop - first)
            if hi <= lo:
                continue
            for path, offset, size in ds.reader.shard(shard).byte_ranges(lo, hi):
                assert offset >= 0 and size > 0
                assert offset + size <= os.path.getsize(path), path
    # A hint reads nothing back: the samples are the same after it.
    ds.readahead(0, n)
    assert_sample_equal(ds[n - 1], truth.sample(n - 1))


def test_empty_batch(truth: Truth) -> None:
    ds = open_dataset(truth)
    assert ds.__getitems__([]) == []


@pytest.mark.parametrize("index", [10**6, -(10**6)])
def test_bad_index_names_index_and_range(truth: Truth, index: int) -> None:
    ds = open_dataset(truth)
    with pytest.raises(IndexError, match=str(index)) as info:
        ds[index]
    assert isinstance(info.value, shardio.ShardioError)
    assert str(len(ds)) in str(info.value)
    with pytest.raises(shardio.SampleIndexError):
        ds.__getitems__([0, index])


def test_fields_select_and_order(truth: Truth) -> None:
    chosen = truth.names[::-1][:2]
    ds = open_dataset(truth, fields=chosen)
    assert list(ds.fields) == chosen
    assert_sample_equal(ds[3], {n: truth.sample(3)[n] for n in chosen})


def test_unknown_field_names_it(truth: Truth) -> None:
    with pytest.raises(KeyError, match="no_such_field") as info:
        open_dataset(truth, fields=["no_such_field"])[0]
    assert isinstance(info.value, shardio.ShardioError)


def test_transform_applies_to_each_sample(truth: Truth) -> None:
    ds = open_dataset(truth, transform=lambda s: sorted(s))
    assert ds[0] == sorted(truth.names)
    assert ds.__getitems__([1, 2]) == [sorted(truth.names)] * 2


def test_pickle_before_and_after_open(truth: Truth) -> None:
    ds = open_dataset(truth, fields=truth.names)
    fresh = pickle.loads(pickle.dumps(ds))
    assert_sample_equal(fresh[7], truth.sample(7))
    ds[7]  # opens handles
    reopened = pickle.loads(pickle.dumps(ds))
    assert_sample_equal(reopened[8], truth.sample(8))
    assert_sample_equal(ds[9], truth.sample(9))


def test_close_twice_and_context_manager(truth: Truth) -> None:
    with open_dataset(truth, fields=truth.names) as ds:
        assert_sample_equal(ds[1], truth.sample(1))
    ds.close()
    ds.close()
    assert_sample_equal(ds[2], truth.sample(2))  # reopens lazily
    ds.close()


def fixed_only(truth: Truth) -> list[str]:
    return [n for n in truth.names if n not in truth.variable]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_everything(truth: Truth, context: str) -> None:
    fields = fixed_only(truth)
    ds = open_dataset(truth, fields=fields)
    ds[0]  # a handle opened in the parent must not leak into forked workers
    workers = 2 if context == "fork" else 1
    loader = DataLoader(
        ds, batch_size=16, shuffle=False, num_workers=workers, multiprocessing_context=context
    )
    batches = list(loader)
    for name in fields:
        got = torch.cat([b[name] for b in batches]).numpy()
        np.testing.assert_array_equal(got, truth.columns[name])


def test_default_collate_handles_variable_fields(truth: Truth) -> None:
    if "blob" not in truth.names or not isinstance(truth.columns["blob"][0], bytes):
        pytest.skip("no bytes field in this source")
    ds = open_dataset(
        truth, fields=["blob", "label"] if "label" in truth.names else ["blob", "meta/label"]
    )
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch["blob"] == [truth.sample(i)["blob"] for i in range(8)]
