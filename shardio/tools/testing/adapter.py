"""The adapter conformance checks, as a pytest class to subclass per backend.

Like zarr-python's ``StoreTests``: a subclass supplies the ground truth, written
without shardio; every check reads it through `ShardedDataset` and its
shard readers and compares with what was written: values (variable-length ones by
content), order, repeats, empty batches, readahead and integrity ranges, every memory
release kind, pickling and DataLoader workers (fork and spawn).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, get_args

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import shardio
from shardio import ShardedDataset
from shardio.memory import ReleaseKind
from shardio.storage.adapters.base import ShardReader

from .groundtruth import Truth

__all__ = ["AdapterTests", "assert_sample_equal", "assert_value_equal"]

#: Every memory-release kind a reader accepts.
RELEASE_KINDS: tuple[str, ...] = get_args(ReleaseKind)


def assert_value_equal(got: Any, want: Any, where: str) -> None:
    """One field of one sample: bytes equal, or an ndarray (a numpy scalar for a scalar
    field) of the same dtype and values.

    NOTE: variable-length values are compared up to byte order (Zarr hands a big-endian
    ragged field back in native order); fixed fields must match their dtype exactly."""
    if isinstance(want, bytes):
        assert isinstance(got, bytes), f"{where}: got {type(got).__name__}, want bytes"
        assert got == want, where
        return
    want = np.asarray(want)
    if want.ndim == 0:  # a scalar field: a numpy scalar, as numpy and h5py indexing give
        assert isinstance(got, np.generic), (
            f"{where}: got {type(got).__name__}, want a numpy scalar"
        )
    else:
        assert isinstance(got, np.ndarray), f"{where}: got {type(got).__name__}, want ndarray"
    assert got.dtype.newbyteorder("=") == want.dtype.newbyteorder("="), (
        f"{where}: dtype {got.dtype}, want {want.dtype}"
    )
    np.testing.assert_array_equal(got, want, err_msg=where)


def assert_sample_equal(got: dict[str, Any], want: dict[str, Any], where: str = "") -> None:
    assert list(got) == list(want), where
    for name, value in want.items():
        assert_value_equal(got[name], value, f"{where} field {name!r}")


def assert_columns_equal(columns: dict[str, Any], truth: Truth, indices: list[int]) -> None:
    """A batch read as columns holds, for every field, the values at ``indices``."""
    assert sorted(columns) == sorted(truth.names)
    for name in truth.names:
        column, values = columns[name], truth.columns[name]
        if name in truth.variable:
            assert isinstance(column, list), name
            assert len(column) == len(indices), name
            for got, index in zip(column, indices, strict=True):
                assert_value_equal(got, values[index], f"sample {index} field {name!r}")
        else:
            want = values[np.asarray(indices, dtype=np.int64)]
            assert column.dtype == want.dtype, name
            np.testing.assert_array_equal(column, want, err_msg=name)


def _as_list(batch: list[Any]) -> list[Any]:
    """collate_fn that keeps samples as they are (variable fields included)."""
    return batch


class _Files:
    """File contents by path, read once."""

    def __init__(self) -> None:
        self._content: dict[str, bytes] = {}

    def read(self, path: str, offset: int, length: int) -> bytes:
        if path not in self._content:
            with open(path, "rb") as handle:
                self._content[path] = handle.read()
        return self._content[path][offset : offset + length]


class AdapterTests:
    """Conformance checks for one adapter; subclass it as ``TestSomething``.

    Each check runs twice: without a memory budget, and with the smallest one (a
    release after every read), which must never change what is read."""

    def write_truth(self, directory: str) -> Truth:
        """Write a dataset into ``directory`` without shardio; return what it holds."""
        raise NotImplementedError(f"{type(self).__name__} must implement write_truth")

    # ----------------------------------------------------------------- fixtures
    @pytest.fixture(scope="class")
    @classmethod
    def written(cls, tmp_path_factory: pytest.TempPathFactory) -> Truth:
        """The ground truth, written once per class."""
        return cls().write_truth(str(tmp_path_factory.mktemp(cls.__name__)))

    @pytest.fixture(params=[None, 1], ids=["plain", "budget"])
    def truth(self, request: pytest.FixtureRequest, written: Truth) -> Truth:
        budget = {} if request.param is None else {"max_rss": request.param}
        return replace(written, options={**written.options, **budget})

    @staticmethod
    def open(truth: Truth, **kwargs: Any) -> ShardedDataset:
        return ShardedDataset(truth.path, **truth.options, **kwargs)

    @staticmethod
    def shards(ds: ShardedDataset) -> Iterator[tuple[int, ShardReader[Any]]]:
        """(first global index, reader) of every non-empty shard."""
        for number, length in enumerate(ds.shard_lengths):
            if length:
                yield int(ds.reader.index.starts[number]), ds.reader.shard(number)

    # ------------------------------------------------------------------- values
    def test_length_and_schema(self, truth: Truth) -> None:
        ds = self.open(truth)
        assert len(ds) == truth.count
        assert sorted(ds.fields) == sorted(truth.names)
        assert sum(ds.shard_lengths) == len(ds)

    def test_every_sample_reads_back(self, truth: Truth) -> None:
        ds = self.open(truth, fields=truth.names)
        for index in range(truth.count):
            assert_sample_equal(ds[index], truth.sample(index), f"sample {index}")

    def test_negative_indices_count_from_the_end(self, truth: Truth) -> None:
        ds = self.open(truth, fields=truth.names)
        assert_sample_equal(ds[-1], truth.sample(truth.count - 1))
        assert_sample_equal(ds[-truth.count], truth.sample(0))

    def test_order_and_repeats(self, truth: Truth) -> None:
        ds = self.open(truth, fields=truth.names)
        n = truth.count
        rng = np.random.default_rng(1)
        orders = [
            rng.permutation(n).tolist(),
            list(range(n - 1, -1, -1)),
            [*rng.integers(0, n, size=40).tolist(), 5, 5, n - 2, 0, 5],
        ]
        for indices in orders:
            assert_columns_equal(ds.read_batch(indices), truth, indices)
            samples = ds.__getitems__(indices)
            assert len(samples) == len(indices)
            for index, sample in zip(indices, samples, strict=True):
                assert_sample_equal(sample, truth.sample(index), f"sample {index}")

    def test_read_into_fills_the_callers_arrays(self, truth: Truth) -> None:
        ds = self.open(truth, fields=truth.names)
        fixed = [f for f in ds.schema if not f.variable and f.dtype.kind in "biufc"]
        rng = np.random.default_rng(2)
        for start, reader in self.shards(ds):
            local = np.array([*rng.permutation(len(reader))[:9], 0, 0], dtype=np.int64)
            out = {f.name: np.full((len(local), *f.shape), 7, dtype=f.dtype) for f in fixed}
            columns = reader.read_into(local, out)
            assert sorted(columns) == sorted(truth.names)
            at = local + start
            for fld in fixed:
                assert columns[fld.name] is out[fld.name], fld.name  # filled, not replaced
                np.testing.assert_array_equal(out[fld.name], truth.columns[fld.name][at])
            for name in truth.variable:
                for got, index in zip(columns[name], at.tolist(), strict=True):
                    assert_value_equal(got, truth.columns[name][index], f"{name} {index}")
            # Native-order arrays (what ShardedDataset gives) take swapped fields too.
            native = {
                f.name: np.zeros((len(local), *f.shape), f.dtype.newbyteorder("=")) for f in fixed
            }
            again = reader.read_into(local, native)
            for fld in fixed:
                want = truth.columns[fld.name][at]
                np.testing.assert_array_equal(again[fld.name], want, err_msg=fld.name)

    def test_empty_batch(self, truth: Truth) -> None:
        ds = self.open(truth, fields=truth.names)
        assert ds.__getitems__([]) == []
        assert_columns_equal(ds.read_batch([]), truth, [])
        readers = list(self.shards(ds))
        assert readers
        for _, reader in readers:
            columns = reader.read_many(np.empty(0, dtype=np.int64))
            assert sorted(columns) == sorted(truth.names)
            assert all(len(column) == 0 for column in columns.values())
        assert_sample_equal(ds[0], truth.sample(0))  # an empty read changes nothing

    # ------------------------------------------------------------------- ranges
    def test_byte_ranges_cover_each_row(self, truth: Truth) -> None:
        ds = self.open(truth, fields=truth.names)
        files = _Files()
        checked = 0
        for first, reader in self.shards(ds):
            n = len(reader)
            for lo, hi in ((0, n), (n // 3, min(n, n // 3 + 2)), (n - 1, n)):
                ranges = reader.byte_ranges(lo, hi)
                for path, offset, size in ranges:
                    assert offset >= 0 and size > 0, (path, offset, size)
                    assert offset + size <= os.path.getsize(path), path
                if truth.locations is not None:
                    for row in range(lo, hi):
                        for path, offset, stored, value in truth.locations[first + row]:
                            if not value:
                                continue  # readahead hints value bytes
                            inside = any(
                                p == path and o <= offset and offset + len(stored) <= o + s
                                for p, o, s in ranges
                            )
                            assert inside or not stored, (
                                f"sample {first + row}: {path}[{offset}:+{len(stored)}] "
                                f"is in no range of byte_ranges({lo}, {hi}): {ranges}"
                            )
                            assert files.read(path, offset, len(stored)) == stored
                            checked += 1
                elif truth.claims_ranges:
                    for row in range(lo, hi):
                        assert reader.byte_ranges(row, row + 1), f"sample {first + row}"
                        checked += 1
            assert reader.byte_ranges(n, n) == []
        assert checked or not (truth.locations or truth.claims_ranges)
        # A hint reads nothing back: the samples are the same after it.
        ds.readahead(0, truth.count)
        assert_sample_equal(ds[truth.count - 1], truth.sample(truth.count - 1))

    def test_value_ranges_hold_the_values(self, truth: Truth) -> None:
        """value_ranges (verify="first-read") lie inside the files, one per index; where
        the layout is documented, the bytes there are the sample's stored bytes."""
        ds = self.open(truth, fields=truth.names)
        files = _Files()
        rng = np.random.default_rng(2)
        checked = 0
        for first, reader in self.shards(ds):
            n = len(reader)
            indices = np.concatenate((rng.permutation(n), [0, 0, n - 1])).astype(np.int64)
            ranges = reader.value_ranges(indices)
            if ranges is None:
                assert truth.locations is None, "value_ranges is None for a documented layout"
                continue
            covered: list[set[str]] = [set() for _ in indices]
            for path, offsets, lengths in ranges:
                assert len(offsets) == len(lengths) == len(indices), path
                for k, (offset, length) in enumerate(zip(offsets, lengths, strict=True)):
                    assert offset >= 0 and length >= 0, (path, offset, length)
                    assert offset + length <= os.path.getsize(path), path
                    if truth.locations is None:
                        continue
                    row = first + int(indices[k])
                    stored = {p: b for p, _, b, _ in truth.locations[row]}
                    assert path in stored, f"sample {row}: {path} holds none of its bytes"
                    got = files.read(path, int(offset), int(length))
                    assert got == stored[path], f"sample {row}: wrong bytes in {path}"
                    covered[k].add(path)
                    checked += 1
            if truth.locations is not None:
                for k, index in enumerate(indices.tolist()):
                    want = {p for p, _, b, _ in truth.locations[first + index] if b}
                    assert want <= covered[k], f"sample {first + index}: {want - covered[k]}"
        assert checked or truth.locations is None

    def test_conversion_reads_what_the_dataset_reads(self, written: Truth) -> None:
        """``shardio convert`` reads through a conversion source (the backend's own, or
        its reader): the same fields and values, fixed fields in native byte order."""
        from shardio.convert.source import open_source

        with open_source(written.path, options=dict(written.options) or None) as source:
            assert source.num_samples == written.count
            assert sorted(source.schema.names) == sorted(written.names)
            every = list(range(written.count))
            assert_columns_equal(source.read_range(0, written.count), written, every)
            ends = sorted({0, written.count - 1})
            assert_columns_equal(source.read_many(np.array(ends)), written, ends)

    # ------------------------------------------------------------------- memory
    @pytest.mark.parametrize("kind", RELEASE_KINDS)
    def test_every_release_kind_keeps_reads_right(self, truth: Truth, kind: str) -> None:
        ds = self.open(truth, fields=truth.names)
        everything = list(range(truth.count))
        assert_columns_equal(ds.read_batch(everything), truth, everything)
        readers = [reader for _, reader in self.shards(ds)]
        for reader in readers:
            reader.release_memory(kind)  # type: ignore[arg-type]
        backwards = everything[::-1]
        assert_columns_equal(ds.read_batch(backwards), truth, backwards)
        for reader in readers:
            reader.release_memory(kind)  # type: ignore[arg-type]
            reader.release_memory(kind)  # type: ignore[arg-type]  # twice in a row
        assert_sample_equal(ds[3], truth.sample(3))

    # ------------------------------------------------------------------- errors
    @pytest.mark.parametrize("index", [10**6, -(10**6)])
    def test_bad_index_names_index_and_range(self, truth: Truth, index: int) -> None:
        ds = self.open(truth)
        with pytest.raises(IndexError, match=str(index)) as info:
            ds[index]
        assert isinstance(info.value, shardio.ShardioError)
        assert str(len(ds)) in str(info.value)
        with pytest.raises(shardio.SampleIndexError):
            ds.__getitems__([0, index])

    def test_fields_select_and_order(self, truth: Truth) -> None:
        chosen = truth.names[::-1][:2]
        ds = self.open(truth, fields=chosen)
        assert list(ds.fields) == chosen
        assert_sample_equal(ds[3], {n: truth.sample(3)[n] for n in chosen})

    def test_unknown_field_names_it(self, truth: Truth) -> None:
        with pytest.raises(KeyError, match="no_such_field") as info:
            self.open(truth, fields=["no_such_field"])[0]
        assert isinstance(info.value, shardio.ShardioError)

    def test_transform_applies_to_each_sample(self, truth: Truth) -> None:
        ds = self.open(truth, transform=lambda s: sorted(s))
        assert ds[0] == sorted(truth.names)
        assert ds.__getitems__([1, 2]) == [sorted(truth.names)] * 2

    # ------------------------------------------------------------------ handles
    def test_pickle_before_and_after_open(self, truth: Truth) -> None:
        ds = self.open(truth, fields=truth.names)
        fresh = pickle.loads(pickle.dumps(ds))
        assert_sample_equal(fresh[7], truth.sample(7))
        ds[7]  # opens handles
        reopened = pickle.loads(pickle.dumps(ds))
        assert_sample_equal(reopened[8], truth.sample(8))
        assert_sample_equal(ds[9], truth.sample(9))

    def test_close_twice_and_context_manager(self, truth: Truth) -> None:
        with self.open(truth, fields=truth.names) as ds:
            assert_sample_equal(ds[1], truth.sample(1))
        ds.close()
        ds.close()
        assert_sample_equal(ds[2], truth.sample(2))  # reopens lazily
        ds.close()

    def test_forked_workers_read_every_value(self, truth: Truth) -> None:
        ds = self.open(truth, fields=truth.names)
        ds[0]  # a handle opened in the parent must not leak into forked workers
        loader = DataLoader(
            ds,
            batch_size=16,
            num_workers=2,
            multiprocessing_context="fork",
            collate_fn=_as_list,
        )
        samples = [sample for batch in loader for sample in batch]
        assert len(samples) == truth.count
        for index, sample in enumerate(samples):
            assert_sample_equal(sample, truth.sample(index), f"sample {index}")

    def test_spawned_worker_reads_fixed_fields(self, written: Truth) -> None:
        # Once per ground truth: a spawned worker starts a fresh interpreter (seconds).
        fields = [n for n in written.names if n not in written.variable]
        ds = self.open(written, fields=fields)
        ds[0]
        loader = DataLoader(ds, batch_size=32, num_workers=1, multiprocessing_context="spawn")
        batches = list(loader)
        assert batches
        for name in fields:
            got = torch.cat([b[name] for b in batches]).numpy()
            np.testing.assert_array_equal(got, written.columns[name])

    def test_default_collate_keeps_bytes_fields(self, truth: Truth) -> None:
        byte_fields = [n for n in truth.variable if isinstance(truth.columns[n][0], bytes)]
        if not byte_fields:
            pytest.skip("no bytes field in this ground truth")
        ds = self.open(truth, fields=byte_fields)
        batch = next(iter(DataLoader(ds, batch_size=8)))
        for name in byte_fields:
            assert batch[name] == [truth.columns[name][i] for i in range(8)]
