"""shardio.Loader: batches read by threads of one process, against read_batch."""

from __future__ import annotations

import gc
import os
import threading
from typing import Any

import numpy as np
import pytest
import torch
from test_dataset_batches import assert_batch_equals_columns, order_of

import shardio
from shardio import Loader, Prefetcher, ShardedDataset, ShardSampler
from shardio.loading.loader import THREAD_NAME, auto_threads
from shardio.tools.testing.groundtruth import SOURCES, Truth

torch.set_num_threads(1)


def open_dataset(truth: Truth, **kwargs: Any) -> ShardedDataset:
    return ShardedDataset(truth.path, **truth.options, **kwargs)


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


@pytest.mark.parametrize("threads", [1, 3])
def test_batches_equal_read_batch(truth: Truth, threads: int) -> None:
    ds = open_dataset(truth)
    order = order_of(ds)
    loader = Loader(ds, batch_size=16, sampler=order, threads=threads, prefetch=2)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(ds) // 16)
    for batch, start in zip(batches, range(0, len(order), 16), strict=True):
        assert_batch_equals_columns(batch, ds.read_batch(order[start : start + 16]))
    assert loader_threads() == []


def test_one_open_shard_shared_by_four_threads(tmp_path: Any) -> None:
    """Threads evict each other's shards all the time: none is closed while read."""
    for fmt in ("mmap", "lmdb"):
        (tmp_path / fmt).mkdir()
        truth = SOURCES[f"sharded-{fmt}"](str(tmp_path / fmt))
        ds = open_dataset(truth, max_open_shards=1)
        order = np.random.default_rng(2).permutation(np.tile(np.arange(len(ds)), 4)).tolist()
        batches = list(Loader(ds, batch_size=5, sampler=order, threads=4, prefetch=8))
        for batch, start in zip(batches, range(0, len(order), 5), strict=True):
            assert_batch_equals_columns(batch, ds.read_batch(order[start : start + 5]))
        assert len(ds.reader.open_readers) <= 1


def test_len_drop_last_and_shuffle(truth: Truth) -> None:
    ds = open_dataset(truth)
    assert len(Loader(ds, batch_size=10, drop_last=True)) == len(ds) // 10
    shuffled = list(Loader(ds, batch_size=10, shuffle=True, drop_last=True, threads=2))
    assert len(shuffled) == len(ds) // 10
    assert all(len(next(iter(b.values()))) == 10 for b in shuffled)
    with pytest.raises(shardio.InvalidOptionError, match="sampler= or shuffle"):
        Loader(ds, sampler=range(3), shuffle=True)
    with pytest.raises(shardio.InvalidOptionError, match="threads=0"):
        Loader(ds, threads=0)


def test_resume_through_the_loader(truth: Truth) -> None:
    ds = open_dataset(truth)
    label = next(n for n in ds.fields if n.endswith("label"))

    def labels(batches: list[Any]) -> list[int]:
        return torch.cat([b[label] for b in batches]).tolist()

    whole = labels(list(Loader(ds, 8, sampler=ShardSampler(ds, seed=4), threads=2)))
    loader = Loader(ds, 8, sampler=ShardSampler(ds, seed=4), threads=3, prefetch=6)
    seen = []
    for number, batch in enumerate(loader):
        seen.append(batch)
        if number == 4:
            break  # threads have read ahead: the state counts only what the loop took
    state = loader.state_dict()
    resumed = Loader(ds, 8, sampler=ShardSampler(ds, seed=4), threads=2)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert labels(seen) + labels(rest) == whole
    assert len(labels(seen)) == 40
    with pytest.raises(shardio.InvalidOptionError, match="ShardSampler"):
        Loader(ds, 8).state_dict()


def test_error_in_a_thread_names_index_and_path(tmp_path: Any) -> None:
    truth = SOURCES["sharded-mmap"](str(tmp_path))
    ds = open_dataset(truth)
    last = ds.reader.shard_paths[-1]
    data = os.path.join(last, "000.bin")
    with open(data, "r+b") as handle:
        handle.truncate(8)  # the last shard (indices 40..96) is damaged
    loader = Loader(ds, batch_size=8, threads=3, prefetch=3)
    iterator = iter(loader)
    got = [next(iterator) for _ in range(5)]  # indices 0..39 read fine
    assert len(got) == 5
    with pytest.raises(shardio.ShardCorruptError, match="truncated") as info:
        next(iterator)
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "at index 40" in notes and truth.path in notes
    assert loader_threads() == []  # the pass stopped cleanly
    with pytest.raises(StopIteration):
        next(iterator)


class _ReadersOf(torch.utils.data.Dataset[Any]):
    """A `ShardedDataset` whose batches take a while and say which thread read them."""

    def __init__(self, ds: ShardedDataset, fail_at: int | None = None) -> None:
        self.ds, self.fail_at = ds, fail_at
        self.readers: dict[int, str] = {}  # first index of a batch -> its thread

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> Any:
        return self.ds[index]

    def __getitems__(self, indices: list[int]) -> Any:
        name = threading.current_thread().name
        self.readers[int(indices[0])] = name
        if not name.startswith(THREAD_NAME):
            if self.fail_at is not None and self.fail_at in indices:
                raise ValueError(f"index {self.fail_at} read in the loop's thread")
        else:
            threading.Event().wait(0.02)  # the threads are slow: the loop waits
        return self.ds.__getitems__(indices)


@pytest.mark.parametrize(("cores", "threads"), [(4, 1), (1, 1), (2, 3)])
def test_the_loops_thread_reads_while_it_waits(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, cores: int, threads: int
) -> None:
    """Beside threads that leave a core free, and beside more threads than cores (which
    then give way while the loop reads): the same batches, in order."""
    from shardio.loading import loader as loader_module

    monkeypatch.setattr(loader_module, "usable_cores", lambda: cores)
    ds = open_dataset(SOURCES["sharded-lmdb"](str(tmp_path)))
    readers = _ReadersOf(ds)
    order = order_of(ds)
    batches = list(Loader(readers, batch_size=8, sampler=order, threads=threads, prefetch=4))
    for batch, start in zip(batches, range(0, len(order), 8), strict=True):
        assert_batch_equals_columns(batch, ds.read_batch(order[start : start + 8]))
    assert len(readers.readers) == len(batches)
    in_loop = [start for start, name in readers.readers.items() if name == "MainThread"]
    assert in_loop, readers.readers
    assert len(in_loop) < len(batches)  # and the threads read the rest
    assert loader_threads() == []


def test_threads_beyond_the_cores_give_way_while_the_loop_reads() -> None:
    """3 threads on 2 cores: while the loop's thread reads, one thread reads beside it and
    the next waits for its turn; all of them read while the loop does not."""
    from shardio.loading.loader import _Readers

    readers = _Readers(threads=3, cores=2)
    first_in, second_in, leave = threading.Event(), threading.Event(), threading.Event()

    def read(entered: threading.Event) -> None:
        with readers.thread_reading():
            entered.set()
            leave.wait(10)

    with readers.loop_reading():
        first = threading.Thread(target=read, args=(first_in,))
        second = threading.Thread(target=read, args=(second_in,))
        first.start()
        assert first_in.wait(10)
        second.start()
        assert not second_in.wait(0.3)  # no core left for it
    assert second_in.wait(10)  # the loop's thread stopped reading
    leave.set()
    first.join(10)
    second.join(10)
    assert not first.is_alive() and not second.is_alive()
    third_in = threading.Event()
    leave.clear()
    with readers.thread_reading(), readers.thread_reading():
        third = threading.Thread(target=read, args=(third_in,))
        third.start()
        assert third_in.wait(10)  # the loop is busy: all 3 threads read
        leave.set()
    third.join(10)


def test_an_error_in_a_batch_the_loops_thread_read_comes_in_order(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardio.loading import loader as loader_module

    monkeypatch.setattr(loader_module, "usable_cores", lambda: 4)
    ds = open_dataset(SOURCES["sharded-lmdb"](str(tmp_path)))
    order = list(range(len(ds)))
    readers = _ReadersOf(ds, fail_at=8)  # batch 1, read in the loop's thread
    iterator = iter(Loader(readers, batch_size=8, sampler=order, threads=1, prefetch=4))
    first = next(iterator)
    assert_batch_equals_columns(first, ds.read_batch(order[:8]))
    with pytest.raises(ValueError, match="index 8 read in the loop's thread") as info:
        next(iterator)
    assert "reading a batch failed" in " ".join(getattr(info.value, "__notes__", []))
    assert readers.readers[8] == "MainThread"
    assert loader_threads() == []


def test_early_break_leaves_no_thread(truth: Truth) -> None:
    ds = open_dataset(truth)
    for batch in Loader(ds, batch_size=4, threads=4, prefetch=8):
        assert len(next(iter(batch.values()))) == 4
        break
    gc.collect()
    assert loader_threads() == []


def test_prefetcher_over_the_loader(truth: Truth) -> None:
    ds = open_dataset(truth)
    order = order_of(ds, seed=11)
    batches = list(Prefetcher(Loader(ds, 16, sampler=order, threads=2), device="cpu"))
    for batch, start in zip(batches, range(0, len(order), 16), strict=True):
        assert_batch_equals_columns(batch, ds.read_batch(order[start : start + 16]))
    assert len(batches) == -(-len(ds) // 16)


def test_per_sample_transform_and_budget_shared_by_threads(truth: Truth) -> None:
    fixed = [n for n in truth.names if n not in truth.variable]
    label = next(n for n in fixed if n.endswith("label"))
    ds = open_dataset(truth, fields=fixed, transform=lambda s: int(s[label]))
    got = torch.cat(list(Loader(ds, 7, threads=3))).tolist()
    assert got == truth.columns[label].tolist()


def test_auto_threads_reads_what_read_batch_reads(tmp_path: Any) -> None:
    truth = SOURCES["sharded-lmdb"](str(tmp_path))
    ds = open_dataset(truth)
    loader = Loader(ds, batch_size=16, sampler=order_of(ds), threads="auto")
    cores = len(os.sched_getaffinity(0))
    assert loader.threads == auto_threads() == max(1, min(4, cores - 1))
    batches = list(loader)
    for batch, start in zip(batches, range(0, len(ds), 16), strict=True):
        assert_batch_equals_columns(batch, ds.read_batch(order_of(ds)[start : start + 16]))
    assert len(batches) == -(-len(ds) // 16)
    with pytest.raises(shardio.InvalidOptionError, match="or \"auto\", but got threads='all'"):
        Loader(ds, threads="all")  # type: ignore[arg-type]


def test_a_loader_made_under_receive_pinned_reads_into_pinned_buffers(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code path of a Loader under the CUDA Prefetcher, on a CPU machine: every
    batch is read into a buffer of its own from the pinned allocator (here ordinary
    memory stands in for it), and the tensors are views of that buffer."""
    from shardio.loading import blocks, handover, loader

    made: list[torch.Tensor] = []

    def fake_pinned(nbytes: int) -> torch.Tensor:
        made.append(torch.empty(nbytes, dtype=torch.uint8))
        return made[-1]

    monkeypatch.setattr(blocks, "_pinned_bytes", fake_pinned)
    monkeypatch.setattr(loader, "receiving_pinned", lambda: handover.receiving_pinned() or True)
    truth = SOURCES["mmap"](str(tmp_path))
    ds = open_dataset(truth)
    order = order_of(ds, seed=12)
    batches = list(Loader(ds, 16, sampler=order, threads=2))  # kept: each in its own buffer
    assert len(batches) == len(made) == -(-len(ds) // 16)
    buffers = {b.untyped_storage().data_ptr() for b in made}
    for batch, start in zip(batches, range(0, len(order), 16), strict=True):
        assert_batch_equals_columns(batch, ds.read_batch(order[start : start + 16]))
        fixed = [t for t in batch.values() if isinstance(t, torch.Tensor)]
        assert fixed and all(t.untyped_storage().data_ptr() in buffers for t in fixed)
    monkeypatch.undo()
    assert not handover.receiving_pinned()  # no CUDA here: the real check says no


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_loader_under_the_cuda_prefetcher_reads_into_pinned_memory(tmp_path: Any) -> None:
    from shardio.loading.handover import receive_pinned

    truth = SOURCES["mmap"](str(tmp_path))
    ds = open_dataset(truth)
    order = order_of(ds, seed=13)
    with receive_pinned():
        pinned = list(Loader(ds, 16, sampler=order, threads=2))
    assert all(t.is_pinned() for b in pinned for t in b.values() if isinstance(t, torch.Tensor))
    got = [
        {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in b.items()}
        for b in Prefetcher(Loader(ds, 16, sampler=order, threads=2), device="cuda", depth=2)
    ]
    for batch, start in zip(got, range(0, len(order), 16), strict=True):
        assert_batch_equals_columns(batch, ds.read_batch(order[start : start + 16]))
    assert len(got) == -(-len(ds) // 16)


@pytest.mark.parametrize("drop_last", [False, True])
def test_index_arrays_match_torchs_samplers(tmp_path: Any, drop_last: bool) -> None:
    """For torch's own samplers the Loader draws whole permutations as arrays: the
    same batches as torch's BatchSampler, and the generator left in the same state."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    ds = open_dataset(SOURCES["mmap"](str(tmp_path)))
    n = len(ds)

    def samplers() -> list[Any]:
        return [
            SequentialSampler(ds),
            RandomSampler(ds, generator=torch.Generator().manual_seed(1)),
            RandomSampler(ds, num_samples=2 * n + 5, generator=torch.Generator().manual_seed(2)),
            RandomSampler(ds, num_samples=n - 3, generator=torch.Generator().manual_seed(3)),
            RandomSampler(ds, num_samples=2 * n, generator=torch.Generator().manual_seed(4)),
            RandomSampler(ds),  # from torch's global generator
        ]

    for size in (7, n, n + 2):
        torch.manual_seed(5)
        want = [[list(BatchSampler(s, size, drop_last)) for _ in range(2)] for s in samplers()]
        torch.manual_seed(5)
        mine = samplers()
        got = [
            [
                [
                    np.asarray(b).tolist()
                    for b in Loader(ds, size, sampler=s, drop_last=drop_last)._index_batches()
                ]
                for _ in range(2)
            ]
            for s in mine
        ]
        assert got == want
        assert all(
            isinstance(b, np.ndarray) for b in Loader(ds, size, sampler=mine[1])._index_batches()
        )
