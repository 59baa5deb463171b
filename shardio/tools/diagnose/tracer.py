"""``trace(loader)``: record every batch's path from the loader to the training step."""

from __future__ import annotations

import os
import sys
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from shardio.core.errors import InvalidOptionError

from ._worker import process_rss, worker_memory
from .records import MAIN_PROCESS, BatchRecord, MemorySample
from .sources import Fetched, Source, make_source

__all__ = ["Trace", "trace"]


def trace(loader: Iterable[Any], *, memory_interval: float = 0.05, gather: bool = True) -> Trace:
    """Trace ``loader``: a torch DataLoader (any dataset), a Prefetcher, or any iterable.

    Use as ``with trace(loader) as tr: for batch in tr: ...``, or iterate ``loader`` itself
    inside the ``with`` block and call ``tr.step()`` when a step ends. Then
    ``tr.report()``, ``tr.plot("timeline.png")``, ``tr.save("trace.json")``.

    Args:
        memory_interval: seconds between RSS samples of a process (main and each worker).
        gather: in a ``torch.distributed`` run, leaving the ``with`` block gathers every
            rank's summary (a collective: every rank must leave it) so the report names
            the slowest rank.
    """
    return Trace(loader, memory_interval=memory_interval, gather=gather)


class Trace:
    """A traced loader: iterate it like the loader; every batch is recorded.

    ``records`` holds one `BatchRecord` per batch and
    ``memory`` the RSS samples. The DataLoader's batches come from a twin with the same
    settings (sampler, workers, collate function) over a thin proxy of its dataset, so the
    dataset is not changed; its workers are the twin's, started on the first pass.
    """

    def __init__(
        self, loader: Iterable[Any], *, memory_interval: float = 0.05, gather: bool = True
    ) -> None:
        if not isinstance(loader, Iterable):
            raise InvalidOptionError(
                f"loader should be an iterable of batches such as a DataLoader, "
                f"but got {type(loader).__name__}"
            )
        if not isinstance(memory_interval, (int, float)) or memory_interval <= 0:
            raise InvalidOptionError(
                f"memory_interval should be a positive number of seconds, "
                f"but got memory_interval={memory_interval!r}"
            )
        self.loader = loader
        self.memory_interval = float(memory_interval)
        self.gather = gather
        self.source: Source = make_source(loader, self.memory_interval)
        self.records: list[BatchRecord] = []
        self.memory: list[MemorySample] = []
        self.passes = 0
        self.started = time.perf_counter()
        self.rank: int | None = None
        self.ranks: list[dict[str, Any]] | None = None  # every rank's summary, once gathered
        self._in_hand: BatchRecord | None = None  # the batch the loop is working on
        self._memory_at = 0.0
        self._active: weakref.ref[_TracedPass] | None = None
        self._restore: Any = None

    # ----------------------------------------------------------------- iterate
    def __iter__(self) -> Iterator[Any]:
        self._end_active()
        traced = _TracedPass(self, self.source.open(), self.passes)
        self.passes += 1
        self._active = weakref.ref(traced)
        return traced

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def step(self) -> None:
        """Mark the end of the training step on the batch last handed out."""
        self._end_step(time.perf_counter())

    def _end_step(self, now: float) -> None:
        if self._in_hand is not None:
            self._in_hand.step_end = now
            self._in_hand = None

    def _record(self, pass_index: int, ask: float, got: float, fetched: Fetched) -> None:
        record = BatchRecord(
            index=len(self.records),
            pass_index=pass_index,
            ask=ask,
            got=got,
            copy_start=fetched.copy_start,
            copy_end=fetched.copy_end,
        )
        timing = fetched.timing
        if timing is not None:
            record.worker, record.pid, record.samples = timing.worker, timing.pid, timing.samples
            record.load_start, record.load_end = timing.start, timing.end
            record.load_cpu = timing.cpu
            record.arrive = timing.arrive
            if timing.memory is not None:
                self.memory.append(timing.memory)
        self.records.append(record)
        self._in_hand = record
        if got - self._memory_at >= self.memory_interval:
            self._memory_at = got
            self._sample_main(got, loading_here=record.worker == MAIN_PROCESS)

    def _sample_main(self, now: float, loading_here: bool) -> None:
        if loading_here:  # the dataset's budget figures are this process's
            sample = worker_memory("main", self.source.dataset, now)
        else:
            rss = process_rss()
            sample = None if rss is None else MemorySample(now, "main", os.getpid(), rss)
        if sample is not None:
            self.memory.append(sample)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Trace:
        self._intercept()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close()
        if exc_type is None and self.gather:
            from .distributed import gather_summaries

            gathered = gather_summaries(self)
            if gathered is not None:
                self.rank, self.ranks = gathered

    def close(self) -> None:
        """End the pass in progress, stop the twin's workers, stop routing the loader here."""
        if self._restore is not None:
            self._restore()
            self._restore = None
        self._end_active()
        self.source.close()

    def _end_active(self) -> None:
        active = self._active() if self._active is not None else None
        if active is not None:
            active.close()
        self._active = None

    def _intercept(self) -> None:
        """Route ``for batch in loader`` to this trace until the ``with`` block ends.

        NOTE: the loader object's class is swapped for a subclass whose ``__iter__`` is the
        trace's, and swapped back on exit; nothing else about it changes (attributes,
        ``isinstance``, ``len``). Objects whose class cannot be swapped (builtins) are
        traced only through ``for batch in tr``.
        """
        loader = self.loader
        cls = type(loader)
        traced_iter = self.__iter__
        namespace = {
            "__iter__": lambda _self: traced_iter(),
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        }
        try:
            loader.__class__ = type(cls.__name__, (cls,), namespace)
        except TypeError:
            return

        def restore() -> None:
            loader.__class__ = cls

        self._restore = restore

    # ------------------------------------------------------------------ results
    def summary(self) -> Any:
        """The figures and the verdict (`TraceSummary`)."""
        from .analysis import summarize

        return summarize(self)

    def report(self) -> str:
        """The verdict in words with its arithmetic, then the figures behind it."""
        from .analysis import format_report

        return format_report(self.summary())

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Draw the timeline (a row per worker, the loop, the device copy) and RSS to a PNG."""
        from .plot import plot_timeline

        plot_timeline(self, self.summary(), path)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trace in Chrome trace-event format (Perfetto, chrome://tracing)."""
        from .chrome import write_chrome_trace

        write_chrome_trace(self, path)

    def __repr__(self) -> str:
        return (
            f"Trace({self.source.description}, batches={len(self.records)}, passes={self.passes})"
        )


class _TracedPass:
    """One pass over the traced loader: times each ``next()`` and what the batch carried."""

    def __init__(self, owner: Trace, iterator: Iterator[Fetched], pass_index: int) -> None:
        self._owner = owner
        self._iterator = iterator
        self._pass_index = pass_index
        self._done = False

    def __iter__(self) -> _TracedPass:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        ask = time.perf_counter()
        self._owner._end_step(ask)
        try:
            fetched = next(self._iterator)
        except BaseException:
            self.close()
            raise
        self._owner._record(self._pass_index, ask, time.perf_counter(), fetched)
        return fetched.batch

    def close(self) -> None:
        """End the pass (a ``break`` lands here through ``__del__``): the step in progress
        ends now and the source stops this pass's workers."""
        if self._done:
            return
        self._done = True
        self._owner._end_step(time.perf_counter())
        close = getattr(self._iterator, "close", None)
        if callable(close):
            close()

    def __del__(self) -> None:
        if not sys.is_finalizing():
            self.close()
