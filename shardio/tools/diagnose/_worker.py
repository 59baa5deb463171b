"""What runs where batches are loaded: a dataset proxy that notes when a batch's loading
starts, and a collate wrapper that ends it and tags the batch with the timing.

The user's dataset is not changed: the traced twin of their DataLoader holds a proxy of
it, and each worker gets a pickled (spawn) or forked copy of the proxy as usual.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import Dataset, IterableDataset, get_worker_info

from shardio.loading.batches import Batch
from shardio.memory import RssSampler, process_rss

from .records import MAIN_PROCESS, LoadTiming, MemorySample

__all__ = ["MapProxy", "IterableProxy", "TaggingCollate", "Tagged", "make_proxy"]

_OWN = ("_dataset", "_start", "_memory_clock")


class _ProxyBase:
    """Forwards everything but the timing to the wrapped dataset.

    Attribute writes go to the dataset too: a ``worker_init_fn`` that configures
    ``get_worker_info().dataset`` (the torch recipe for splitting an IterableDataset
    between workers) configures the user's dataset, as without the trace.
    """

    _dataset: Any
    _start: float | None
    _cpu_start: float
    _memory_clock: RssSampler | None  # when this process's next memory sample is due

    def __init__(self, dataset: Any) -> None:
        object.__setattr__(self, "_dataset", dataset)
        object.__setattr__(self, "_start", None)
        object.__setattr__(self, "_cpu_start", 0.0)
        object.__setattr__(self, "_memory_clock", None)

    def _begin(self) -> None:
        if self._start is None:
            object.__setattr__(self, "_start", time.perf_counter())
            object.__setattr__(self, "_cpu_start", _on_cpu())

    def take_start(self) -> float | None:
        """When loading of the batch being collated began; resets for the next batch."""
        start = self._start
        object.__setattr__(self, "_start", None)
        return start

    def memory_due(self, now: float, every: float) -> bool:
        """True at most every ``every`` seconds (``now`` on the caller's clock)."""
        clock = self._memory_clock
        if clock is None:
            clock = RssSampler(every)
            object.__setattr__(self, "_memory_clock", clock)
        return bool(clock.due(now))

    def __len__(self) -> int:
        return len(self._dataset)

    def __getattr__(self, name: str) -> Any:
        # Unpickling looks up __setstate__ and friends before _dataset exists.
        if name in _OWN or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        return getattr(self._dataset, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._dataset, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._dataset!r})"


class MapProxy(_ProxyBase, Dataset[Any]):
    """A map-style dataset's stand-in: the first read of a batch starts its clock."""

    def __getitem__(self, index: Any) -> Any:
        self._begin()
        return self._dataset[index]

    # NOTE: defined even when the dataset has no __getitems__; otherwise the fetcher's
    # hasattr() would reach the dataset's through __getattr__ and skip the clock.
    def __getitems__(self, indices: Sequence[Any]) -> Any:
        self._begin()
        getitems = getattr(self._dataset, "__getitems__", None)
        if getitems is not None:
            return getitems(indices)
        return [self._dataset[i] for i in indices]


class IterableProxy(_ProxyBase, IterableDataset[Any]):
    """An iterable dataset's stand-in: the first ``next()`` of a batch starts its clock."""

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self._dataset)
        while True:
            self._begin()
            try:
                item = next(iterator)
            except StopIteration:
                return
            yield item


def make_proxy(dataset: Any) -> MapProxy | IterableProxy:
    if isinstance(dataset, IterableDataset):
        return IterableProxy(dataset)
    return MapProxy(dataset)


class Tagged:
    """A batch and its load timing on their way from a worker to the training loop."""

    __slots__ = ("batch", "timing")

    def __init__(self, batch: Any, timing: LoadTiming) -> None:
        self.batch = batch
        self.timing = timing

    def __reduce__(self) -> tuple[Callable[..., Tagged], tuple[Any, LoadTiming]]:
        return (_arrived, (self.batch, self.timing))

    def pin_memory(self) -> Tagged:
        """Called by the DataLoader's pin-memory thread: pin the batch, keep the tag."""
        from torch.utils.data._utils.pin_memory import pin_memory

        return Tagged(pin_memory(self.batch), self.timing)


def _arrived(batch: Any, timing: LoadTiming) -> Tagged:
    """Unpickled in the main process: the batch just came off a worker's queue."""
    timing.arrive = time.perf_counter()
    return Tagged(batch, timing)


def _on_cpu() -> float:
    """Seconds this thread has run or waited for a CPU (``/proc/thread-self/schedstat``:
    a load slowed by other processes taking the cores is still CPU-bound); its CPU
    time where that file is missing."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as handle:
            ran, waited = handle.read().split()[:2]
        return (int(ran) + int(waited)) / 1e9
    except (OSError, ValueError):
        return time.thread_time()


class TaggingCollate:
    """The user's ``collate_fn``, then the batch tagged with where and when it was loaded."""

    def __init__(self, collate_fn: Callable[[Any], Any], proxy: _ProxyBase, memory_every: float):
        self.collate_fn = collate_fn
        self.memory_every = memory_every
        self._proxy: _ProxyBase | None = proxy  # used only in the main process (no workers)

    def __getstate__(self) -> dict[str, Any]:
        # Workers find their own copy of the proxy through get_worker_info().
        return {"collate_fn": self.collate_fn, "memory_every": self.memory_every, "_proxy": None}

    def __call__(self, data: Any) -> Tagged:
        info = get_worker_info()
        proxy = info.dataset if info is not None else self._proxy
        start = proxy.take_start() if isinstance(proxy, _ProxyBase) else None
        cpu_start = proxy._cpu_start if isinstance(proxy, _ProxyBase) else None
        # A list of samples, or a ShardedDataset's Batch (the rows of one batch read).
        samples = len(data) if isinstance(data, (list, Batch)) else None
        batch = self.collate_fn(data)
        end = time.perf_counter()
        timing = LoadTiming(
            worker=info.id if info is not None else MAIN_PROCESS,
            pid=os.getpid(),
            start=end if start is None else start,
            end=end,
            samples=samples,
            cpu=None if start is None or cpu_start is None else _on_cpu() - cpu_start,
        )
        if (
            info is not None
            and isinstance(proxy, _ProxyBase)
            and proxy.memory_due(end, self.memory_every)
        ):
            timing.memory = worker_memory(f"worker {info.id}", proxy._dataset, end)
        return Tagged(batch, timing)


def worker_memory(process: str, dataset: Any, now: float) -> MemorySample | None:
    """This process's RSS, with a shardio dataset's ``memory_stats()`` where there is one."""
    from shardio.loading.dataset import ShardedDataset

    stats: dict[str, Any] = {}
    if isinstance(dataset, ShardedDataset):
        stats = dataset.memory_stats()
    rss = process_rss()
    if rss is None:
        return None
    return MemorySample(now, process, os.getpid(), rss, stats)
