"""What a trace iterates: a traced stand-in for each kind of loader.

- a torch ``DataLoader``: a twin with the same settings over a proxy of its dataset, whose
  batches come tagged with the worker and the load times (per-worker detail);
- a shardio ``Prefetcher``: a twin over the traced form of its own loader, whose transform
  notes when each batch is on the device (device-copy times);
- any other iterable of batches: iterated as is (main-loop detail: waits and steps).

A new loader kind gets per-stage detail by adding a source here and a case in
`make_source`; until then it is traced as any iterable (``shardio.Loader``, the
thread-based loader, starts that way: its threads could tag batches as the DataLoader
twin's workers do).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

from shardio.loading.prefetch import Prefetcher

from ._worker import Tagged, TaggingCollate, make_proxy
from .records import LoadTiming

__all__ = ["Fetched", "Source", "make_source"]


@dataclass
class Fetched:
    """A batch as the loop gets it, with what the source measured on its way."""

    batch: Any
    timing: LoadTiming | None = None
    copy_start: float | None = None
    copy_end: float | None = None


class Source:
    """One traced loader: `open` starts a pass, `close` releases workers."""

    description = "iterable"
    num_workers: int | None = None  # None: the loader's workers are not visible
    has_copy = False
    dataset: Any = None

    def open(self) -> Iterator[Fetched]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop anything the source started (persistent workers of a twin)."""


class IterableSource(Source):
    """Any iterable of batches, iterated through its class's own ``__iter__``.

    The class is taken when the trace starts, so iterating still works while the trace
    routes ``for batch in loader`` to itself (see `Trace`).
    """

    def __init__(self, loader: Iterable[Any]) -> None:
        self._loader = loader
        self._iter: Callable[[Any], Iterator[Any]] = type(loader).__iter__
        self.description = type(loader).__name__

    def open(self) -> Iterator[Fetched]:
        iterator = self._iter(self._loader)
        try:
            for batch in iterator:
                yield Fetched(batch)
        finally:
            if iterator is not self._loader:  # a generator of our own: run its cleanup
                close = getattr(iterator, "close", None)
                if callable(close):
                    close()


class DataLoaderSource(Source):
    """A twin of a DataLoader: same sampler, workers and options, over a timing proxy."""

    has_copy = False

    def __init__(self, loader: DataLoader[Any], memory_every: float) -> None:
        self.dataset = loader.dataset
        self.num_workers = loader.num_workers
        self.description = f"DataLoader({loader.num_workers} workers)"
        proxy = make_proxy(loader.dataset)
        collate = TaggingCollate(loader.collate_fn, proxy, memory_every)
        self.twin = _twin(loader, proxy, collate)

    def open(self) -> Iterator[Fetched]:
        iterator = iter(self.twin)
        try:
            for item in iterator:
                if isinstance(item, Tagged):
                    yield Fetched(item.batch, item.timing)
                else:  # a collate_fn result that lost its tag (cannot happen with ours)
                    yield Fetched(item)
        finally:
            # Stop this pass's workers now, not when the iterator is collected.
            if not self.twin.persistent_workers:
                _shutdown(iterator)

    def close(self) -> None:
        iterator = self.twin._iterator
        if iterator is not None:
            _shutdown(iterator)
            self.twin._iterator = None


class PrefetcherSource(Source):
    """A twin of a Prefetcher over the traced form of its loader.

    The twin's transform runs once a batch is on the device (on CUDA, after waiting for
    the copy stream), so the time from the read-ahead thread getting the batch to the
    transform is the device copy.
    """

    has_copy = True

    def __init__(self, prefetcher: Prefetcher, memory_every: float) -> None:
        self.inner = make_source(prefetcher.loader, memory_every)
        self.num_workers = self.inner.num_workers
        self.dataset = self.inner.dataset
        self.description = f"Prefetcher({self.inner.description}, {prefetcher.device})"
        self._pending: deque[Fetched] = deque()  # got by the read-ahead thread
        self._copied: deque[Fetched] = deque()  # on the device, in the loop's order
        clock = _CopyClock(prefetcher.transform, prefetcher.device, self._pending, self._copied)
        self.twin = Prefetcher(
            _Feed(self.inner, self._pending),
            device=prefetcher.device,
            depth=prefetcher.depth,
            transform=clock,
        )

    def open(self) -> Iterator[Fetched]:
        self._pending.clear()
        self._copied.clear()
        for batch in self.twin:
            fetched = self._copied.popleft()
            fetched.batch = batch
            yield fetched

    def close(self) -> None:
        self.twin.close()
        self.inner.close()


class _Feed:
    """What the twin Prefetcher reads: the inner source's batches, noting each handoff."""

    def __init__(self, source: Source, pending: deque[Fetched]) -> None:
        self._source = source
        self._pending = pending

    def __iter__(self) -> Iterator[Any]:
        iterator = self._source.open()
        try:
            for fetched in iterator:
                fetched.copy_start = time.perf_counter()
                self._pending.append(fetched)
                yield fetched.batch
        finally:
            iterator.close()  # type: ignore[attr-defined]


class _CopyClock:
    """The Prefetcher's transform: notes when the batch is on the device, then the user's."""

    def __init__(
        self,
        transform: Callable[[Any], Any] | None,
        device: Any,
        pending: deque[Fetched],
        copied: deque[Fetched],
    ) -> None:
        self._transform = transform
        self._cuda = getattr(device, "type", None) == "cuda"
        self._pending = pending
        self._copied = copied

    def __call__(self, batch: Any) -> Any:
        if self._cuda:
            import torch

            # The copies were issued asynchronously on this (the side) stream; the loop's
            # stream is not blocked by waiting here, only the read-ahead thread.
            torch.cuda.current_stream().synchronize()
        fetched = self._pending.popleft()
        fetched.copy_end = time.perf_counter()
        fetched.batch = None
        self._copied.append(fetched)
        return batch if self._transform is None else self._transform(batch)


def make_source(loader: Iterable[Any], memory_every: float) -> Source:
    if isinstance(loader, Prefetcher):
        return PrefetcherSource(loader, memory_every)
    if isinstance(loader, DataLoader):
        return DataLoaderSource(loader, memory_every)
    return IterableSource(loader)


def _twin(loader: DataLoader[Any], proxy: Any, collate: TaggingCollate) -> DataLoader[Any]:
    """A DataLoader over ``proxy`` with ``loader``'s settings, sharing its sampler objects."""
    options: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": collate,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "prefetch_factor": loader.prefetch_factor,
        "persistent_workers": loader.persistent_workers,
    }
    for name in ("pin_memory_device", "in_order"):  # not in every torch version
        if hasattr(loader, name):
            options[name] = getattr(loader, name)
    if isinstance(loader.dataset, IterableDataset):
        options.update(batch_size=loader.batch_size, drop_last=loader.drop_last)
    elif loader.batch_sampler is not None:
        options["batch_sampler"] = loader.batch_sampler
    else:  # automatic batching off: the sampler's indices go to the dataset one by one
        options.update(batch_size=None, sampler=loader.sampler)
    return DataLoader(proxy, **options)


def _shutdown(iterator: Any) -> None:
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
