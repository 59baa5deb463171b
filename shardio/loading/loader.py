"""Loader: batches read by a few threads of one process, no worker processes.

pread, memcpy, LMDB reads, HDF5 chunk reads and Zarr decompression release the GIL,
so threads sharing one dataset (one reader, one memory budget) read batches in
parallel and hand them to the training loop with no copy between processes. Heavy
per-sample Python transforms hold the GIL: those still want DataLoader workers.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch.utils.data
from torch.utils.data import BatchSampler, RandomSampler, Sampler, SequentialSampler
from torch.utils.data._utils.collate import default_collate

from shardio.core.cpus import usable_cores
from shardio.core.errors import InvalidOptionError

from .batches import Batch
from .blocks import reading_pinned
from .dataset import ShardedDataset
from .handover import receiving_pinned

__all__ = ["MAX_AUTO_THREADS", "Loader", "auto_threads"]

THREAD_NAME = "shardio-loader"
MAX_AUTO_THREADS = 4
"""``threads="auto"`` reads with the cores this process may run on, up to this many threads."""


def auto_threads() -> int:
    """The threads ``threads="auto"`` picks: one per core this process may run on (its
    CPU affinity) but one, the training loop's, at least 1 and at most
    `MAX_AUTO_THREADS`.

    A rule, not a measurement, so that it is the same from run to run: the reads
    release the GIL for their copies and scale with cores; the loop's thread reads
    too while it would wait for a batch; readers beyond the cores only add hand-offs
    (measured in benchmarks/bench_loader.py, see docs/loading.md)."""
    return max(1, min(MAX_AUTO_THREADS, usable_cores() - 1))


class Loader:
    """An iterable over batches of ``dataset``, read by ``threads`` threads.

    Batches are those of ``DataLoader(dataset, batch_size, sampler=..., shuffle=...,
    drop_last=..., collate_fn=...)``: for a `ShardedDataset`, a dict
    of one tensor per fixed field and a list per variable field. Up to
    ``max(threads, prefetch)`` batches are read ahead of the loop, handed out in order;
    while the loop waits for one, its own thread reads the next batches no thread has
    begun, and only as many threads read beside it as leave it a core.
    ``threads="auto"`` takes one thread per core this process may use but the loop's,
    up to 4 (`auto_threads`).
    ``state_dict()`` counts the batches handed to the loop, so resuming a
    `ShardSampler` through it is exact.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset[Any],
        batch_size: int = 256,
        *,
        sampler: Sampler[int] | Iterable[int] | None = None,
        shuffle: bool = False,
        threads: int | Literal["auto"] = 4,
        prefetch: int = 4,
        drop_last: bool = False,
        collate_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        _check_positive(batch_size, "batch_size")
        if threads == "auto":
            threads = auto_threads()
        _check_positive(threads, "threads", 'or "auto"')
        _check_positive(prefetch, "prefetch")
        if sampler is not None and shuffle:
            raise InvalidOptionError(
                "give sampler= or shuffle=True, not both: a sampler sets the order itself"
            )
        if sampler is None:
            sized: Any = dataset
            sampler = RandomSampler(sized) if shuffle else SequentialSampler(sized)
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = sampler
        self.threads: int = threads
        self.prefetch = prefetch
        self.drop_last = drop_last
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self._delivered = 0  # samples handed to the loop in the current pass

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Any]:
        self._delivered = 0
        return _LoaderIterator(self)

    def __repr__(self) -> str:
        return (
            f"Loader({self.dataset!r}, batch_size={self.batch_size}, threads={self.threads}, "
            f"prefetch={self.prefetch}, drop_last={self.drop_last})"
        )

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """The sampler's position after the batches handed to the loop so far (not
        those read ahead), for a checkpoint."""
        return self._stateful_sampler().state_dict(consumed=self._delivered)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next pass yields the rest of the epoch the state was saved in."""
        self._stateful_sampler().load_state_dict(state)

    def _stateful_sampler(self) -> Any:
        sampler = self.sampler
        if not hasattr(sampler, "state_dict") or not hasattr(sampler, "load_state_dict"):
            raise InvalidOptionError(
                f"state_dict needs a sampler that can resume (a shardio.ShardSampler), "
                f"but the sampler is a {type(sampler).__name__}"
            )
        return sampler

    # ----------------------------------------------------------------- reading
    def _index_batches(self) -> Iterator[Sequence[int] | np.ndarray]:
        """The batches of indices: those of ``batch_sampler``, or for a `ShardedDataset`
        under torch's own samplers the same indices as int64 arrays, drawn a permutation
        at a time (`_orders`): no Python int per sample, no pass over them to check."""
        if not isinstance(self.dataset, ShardedDataset):
            yield from self.batch_sampler
            return
        orders = _orders(self.sampler)
        if orders is None:
            yield from self.batch_sampler
            return
        size = self.batch_size
        held: list[np.ndarray] = []  # the start of the next batch, across permutations
        count = 0
        for order in orders:
            at = 0
            if count:  # complete the batch begun in the last permutation
                take = order[: size - count]
                held.append(take)
                count += len(take)
                at = len(take)
                if count < size:
                    continue
                yield np.concatenate(held)
                held, count = [], 0
            whole = at + (len(order) - at) // size * size
            for start in range(at, whole, size):
                yield order[start : start + size]
            if whole < len(order):
                held, count = [order[whole:]], len(order) - whole
        if count and not self.drop_last:
            yield np.concatenate(held)

    def _load_pinned(self, indices: Sequence[int] | np.ndarray) -> Any:
        """One batch read straight into pinned memory (under the CUDA `Prefetcher`)."""
        with reading_pinned():
            return self._load(indices)

    def _load(self, indices: Sequence[int] | np.ndarray) -> Any:
        """One batch, read and collated in a loader thread."""
        dataset: Any = self.dataset
        getitems = getattr(dataset, "__getitems__", None)
        data = getitems(indices) if getitems else [dataset[i] for i in indices]
        if self.collate_fn is default_collate and isinstance(data, Batch):
            return data.collate()  # what default_collate does with it, without dispatch
        return self.collate_fn(data)

    def _describe_failure(self, indices: Sequence[int] | np.ndarray, error: BaseException) -> str:
        """Name the first index of a failed batch that fails alone, and the dataset."""
        shown = [i.item() if isinstance(i, np.generic) else i for i in list(indices)[:8]]
        first = f"in indices {shown!r}"
        for index in indices:
            try:
                self.dataset[index]
            except Exception:
                first = f"at index {index.item() if isinstance(index, np.generic) else index!r}"
                break
        where = getattr(self.dataset, "path", type(self.dataset).__name__)
        return f"shardio.Loader: reading a batch failed {first} of {where} ({type(error).__name__})"


class _Batch:
    """One batch of a pass: its indices, its result, and who reads it: a loader thread
    or the loop's own thread, whichever claims it first."""

    __slots__ = ("_claim", "future", "indices")

    def __init__(self, indices: Sequence[int] | np.ndarray) -> None:
        self.indices = indices
        self.future: Future[Any] = Future()
        self._claim = threading.Lock()

    def claim(self) -> bool:
        """True for the first caller only: that caller reads this batch."""
        return self._claim.acquire(blocking=False)

    def read(self, load: Callable[[Any], Any]) -> bool:
        """Read the batch into `future` (its error too); False where it failed."""
        try:
            self.future.set_result(load(self.indices))
        except BaseException as error:  # NOTE: the loop waits on it: never left pending
            self.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return False
        return True


_TURN_S = 0.005
"""How often a loader thread waiting for its turn looks again. NOTE: it is not woken:
the loop's thread takes and gives back its turn once a batch, and waking a waiting
thread each time cost more than the batches it read (measured, 2 cores)."""


class _Readers:
    """How many loader threads read at once: all of them while the loop is busy; while
    the loop's own thread reads (it would wait otherwise), as many as leave it a core.

    NOTE: more readers than cores slowed every reader in measurement (hand-offs and the
    GIL), and the loop's thread reading a batch needs no hand-off at all."""

    def __init__(self, threads: int, cores: int) -> None:
        self._threads = threads
        self._beside_loop = cores - 1
        self._active = 0
        self._loop_reads = False
        self._closed = False
        self._changed = threading.Condition(threading.Lock())

    @contextlib.contextmanager
    def thread_reading(self) -> Iterator[None]:
        """Held by a loader thread while it reads a batch (it may wait for its turn)."""
        with self._changed:
            while not self._closed and self._active >= (
                self._beside_loop if self._loop_reads else self._threads
            ):
                self._changed.wait(_TURN_S)
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1

    @contextlib.contextmanager
    def loop_reading(self) -> Iterator[None]:
        """Held by the loop's thread while it reads batches itself."""
        self._loop_reads = True
        try:
            yield
        finally:
            self._loop_reads = False

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def _read_in_thread(readers: _Readers, load: Callable[[Any], Any], batch: _Batch) -> None:
    with readers.thread_reading():
        if batch.claim():
            batch.read(load)


class _LoaderIterator:
    """One pass: batches read by a thread pool, and by the loop's own thread while it
    waits, handed out in order."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader
        self._batches = loader._index_batches()
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=loader.threads, thread_name_prefix=THREAD_NAME
        )
        self._readers = _Readers(loader.threads, usable_cores())
        self._pending: deque[_Batch] = deque()
        self._lock = threading.Lock()
        # Made by the CUDA Prefetcher's read-ahead thread: read into pinned memory, which
        # it sends to the GPU as it is (one host copy, the read itself).
        self._load = loader._load_pinned if receiving_pinned() else loader._load
        self._fill()

    def __iter__(self) -> _LoaderIterator:
        return self

    def _fill(self) -> None:
        pool = self._pool
        ahead = max(self._loader.threads, self._loader.prefetch)
        while pool is not None and len(self._pending) < ahead:
            indices = next(self._batches, None)
            if indices is None:
                return
            batch = _Batch(indices)
            self._pending.append(batch)
            # NOTE: nothing submitted refers to this iterator, so that it is freed (and
            # closes its pool) in the loop's thread, never in one of the pool's.
            pool.submit(_read_in_thread, self._readers, self._load, batch)

    def __next__(self) -> Any:
        if not self._pending:
            self.close()
            raise StopIteration
        head = self._pending[0]
        if not head.future.done():
            self._read_here()
        self._pending.popleft()
        try:
            batch = head.future.result()
        except Exception as error:
            note = self._loader._describe_failure(head.indices, error)
            self.close()
            error.add_note(note)
            raise
        self._loader._delivered += len(head.indices)
        self._fill()
        return batch

    def _read_here(self) -> None:
        """While the batch the loop waits for is not read yet, read the batches no
        thread has claimed, in order, in this thread: the loop would wait idle
        otherwise, and a batch read here needs no hand-off between threads."""
        head = self._pending[0].future
        with self._readers.loop_reading():
            for batch in list(self._pending):
                if head.done():
                    return
                if batch.claim() and not batch.read(self._load):
                    return  # its error is raised when the loop reaches it

    def close(self) -> None:
        """Stop reading ahead and wait for the threads to end; safe to call twice."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        for batch in self._pending:
            batch.claim()  # a thread that has not begun it skips it
        self._pending.clear()
        self._readers.close()
        pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self) -> None:
        if hasattr(self, "_pool"):  # not when __init__ failed
            self.close()


def _orders(sampler: Any) -> Iterator[np.ndarray] | None:
    """What ``iter(sampler)`` yields, as int64 arrays (a permutation each), for torch's
    `SequentialSampler` and `RandomSampler` without replacement: the same draws from
    the same generator, at the same points (a permutation when its first index is
    needed), as torch's own ``__iter__`` makes them. ``None`` for any other sampler
    (a subclass, or one whose ``__iter__`` was replaced)."""
    kind = type(sampler)
    if kind is SequentialSampler and kind.__iter__ is _SEQUENTIAL_ITER:
        return iter((np.arange(len(sampler.data_source), dtype=np.int64),))
    if kind is not RandomSampler or kind.__iter__ is not _RANDOM_ITER or sampler.replacement:
        return None
    return _permutations(sampler)


def _permutations(sampler: RandomSampler) -> Iterator[np.ndarray]:
    # NOTE: torch's RandomSampler.__iter__ (torch 2.x), with numpy arrays for lists;
    # tests/loading/test_loader.py checks the two give the same indices.
    n = len(sampler.data_source)
    if sampler.generator is None:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator()
        generator.manual_seed(seed)
    else:
        generator = sampler.generator
    for _ in range(sampler.num_samples // n):
        yield torch.randperm(n, generator=generator).numpy()
    # torch draws this one even when none of it is taken (the generator's state after
    # an epoch stays the same), once the loop asks past the last whole permutation.
    last = torch.randperm(n, generator=generator).numpy()[: sampler.num_samples % n]
    if len(last):
        yield last


_SEQUENTIAL_ITER = SequentialSampler.__iter__
_RANDOM_ITER = RandomSampler.__iter__


def _check_positive(value: Any, option: str, other: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(
            f"{option} should be a positive integer{' ' + other if other else ''}, "
            f"but got {option}={value!r}"
        )
