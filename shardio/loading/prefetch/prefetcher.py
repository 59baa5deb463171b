"""The Prefetcher: read batches ahead on a thread and move them to the device."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from shardio.core.config import positive_int
from shardio.core.errors import InvalidOptionError

from ..handover import receive_pinned
from ._channel import Channel
from ._device import resolve_device
from ._transfer import Transfer, make_transfer

__all__ = ["Prefetcher", "PrefetchStats"]

THREAD_NAME = "shardio-prefetch"


@dataclass
class PrefetchStats:
    """What the current (or last) pass over the loader did.

    ``wait_seconds`` is the time the training loop spent waiting for a batch: near zero
    when the read-ahead keeps up, close to the whole epoch when the loader is the
    bottleneck.
    """

    batches: int = 0
    wait_seconds: float = 0.0
    staged_bytes: int = 0


class Prefetcher:
    """Iterate over ``loader`` with up to ``depth`` batches read ahead and on ``device``.

    Args:
        loader: any iterable of batches, typically a ``torch.utils.data.DataLoader``.
            Leaves may be tensors or numpy arrays, nested in dicts, lists, tuples
            and namedtuples; numeric numpy arrays arrive as tensors, other leaves
            (strings, ints) unchanged.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device`` or a CUDA index;
            ``None`` picks CUDA when present, else the CPU.  CUDA asked for on a machine
            without it falls back to the CPU with a warning.
        depth: how many prepared batches may wait for the training loop.
        transform: called on each batch once it is on the device, on the read-ahead
            thread (on CUDA inside the copy stream), e.g. a dtype cast or normalisation.

    One pass runs at a time: starting a new ``for`` loop ends the previous one.  Breaking
    out of a loop, or `close`, stops the read-ahead thread and closes the loader's
    iterator (DataLoader workers shut down).  Iterate from one thread only.
    """

    def __init__(
        self,
        loader: Iterable[Any],
        device: str | torch.device | int | None = None,
        depth: int = 2,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if not isinstance(loader, Iterable):
            raise InvalidOptionError(
                f"loader should be an iterable of batches such as a DataLoader, "
                f"but got {type(loader).__name__}"
            )
        positive_int(depth, "depth")
        if transform is not None and not callable(transform):
            raise InvalidOptionError(
                f"transform should be a callable taking and returning a batch, or None, "
                f"but got transform={transform!r}"
            )
        self.loader = loader
        self.device = resolve_device(device)
        self.depth = depth
        self.transform = transform
        self.stats = PrefetchStats()
        self._transfer: Transfer = make_transfer(self.device, transform)
        self._active: weakref.ref[_PrefetchIterator] | None = None

    @property
    def sampler(self) -> Any:
        """The loader's ``sampler`` (None where it has none): Lightning's Trainer and
        Fabric find the sampler to call ``set_epoch`` on through it."""
        return getattr(self.loader, "sampler", None)

    @property
    def batch_sampler(self) -> Any:
        """The loader's ``batch_sampler`` (None where it has none), as ``sampler``."""
        return getattr(self.loader, "batch_sampler", None)

    def __len__(self) -> int:
        # TypeError, not a ShardioError: list() and length_hint() rely on it.
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"the Prefetcher has no len() because its loader "
                f"({type(self.loader).__name__}) has none"
            ) from None

    def __iter__(self) -> Iterator[Any]:
        self._end_active()
        self.stats = PrefetchStats()
        iterator = _PrefetchIterator(self.loader, self._transfer, self.depth, self.stats)
        self._active = weakref.ref(iterator)
        return iterator

    def close(self) -> None:
        """Stop any pass in progress and release the pinned staging buffers."""
        self._end_active()
        self._transfer.release()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Prefetcher(loader={type(self.loader).__name__}, device='{self.device}', "
            f"depth={self.depth}, transform={self.transform!r})"
        )

    def _end_active(self) -> None:
        active = self._active() if self._active is not None else None
        if active is not None:
            active.close()
        self._active = None


class _End:
    """Put after the last batch."""


class _Failure:
    """Carries an exception from the read-ahead thread, traceback included."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _PrefetchIterator:
    """One pass over the loader: a read-ahead thread feeding a bounded channel.

    The thread runs a separate `_ReadAhead` and holds no reference to this
    object, so a ``for`` loop left by ``break`` frees the iterator and ``__del__`` stops
    the thread.
    """

    def __init__(
        self, loader: Iterable[Any], transfer: Transfer, depth: int, stats: PrefetchStats
    ) -> None:
        self._transfer = transfer
        self._stats = stats
        self._channel: Channel[Any] = Channel(depth)
        self._done = False
        reader = _ReadAhead(loader, transfer, self._channel)
        self._thread = threading.Thread(target=reader.run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def __iter__(self) -> _PrefetchIterator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        started = time.perf_counter()
        item = self._channel.get()
        self._stats.wait_seconds += time.perf_counter() - started
        if isinstance(item, _End):
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            # The exception keeps the traceback of the loader frame that raised it.
            error = item.error
            del item
            try:
                raise error
            finally:
                # Break the cycle error -> traceback -> this frame -> error, so the loader's
                # iterator (and its workers) go as soon as the caller drops the exception.
                del error
        batch, token = item
        self._stats.batches += 1
        self._stats.staged_bytes = self._transfer.staged_bytes
        return self._transfer.hand_over(batch, token)

    def close(self) -> None:
        """Stop reading ahead and wait for the thread, which closes the loader's iterator."""
        self._done = True
        self._channel.close()
        # NOTE: the join waits for a batch the loader is producing right now (at most one
        # step of the loader); it is what makes "no thread outlives its loop" hold.
        if self._thread.ident is not None:  # started
            self._thread.join()

    def __del__(self) -> None:
        # At interpreter exit the daemon thread is left to end with the process.
        if not sys.is_finalizing() and hasattr(self, "_thread"):
            self.close()


class _ReadAhead:
    """The read-ahead thread's work: pull, prepare, put, until the end, an error or close."""

    def __init__(self, loader: Iterable[Any], transfer: Transfer, channel: Channel[Any]) -> None:
        self._loader = loader
        self._transfer = transfer
        self._channel = channel

    def run(self) -> None:
        iterator: Iterator[Any] | None = None
        try:
            self._transfer.start_thread()
            # Batches from DataLoader workers' slots: copied once, into pinned memory when
            # they go to a GPU (see shardio.loading.handover), then sent from there; a
            # Loader made here reads into pinned memory itself.
            pinned = receive_pinned() if self._transfer.pins else contextlib.nullcontext()
            with pinned:
                iterator = iter(self._loader)
                self._forward(iterator)
        except BaseException as error:
            self._channel.put(_Failure(error))
        finally:
            _close_iterator(iterator)
            iterator = None  # this frame lives on in a forwarded exception's traceback

    def _forward(self, iterator: Iterator[Any]) -> None:
        for batch in iterator:
            if self._channel.closed:
                return
            if not self._channel.put(self._transfer.prepare(batch)):
                return
            del batch  # do not hold a host batch while waiting for the next one
        self._channel.put(_End())


def _close_iterator(iterator: Iterator[Any] | None) -> None:
    """Run a generator's cleanup, or stop a DataLoader's workers, now.

    A DataLoader iterator stops its workers only when it is garbage collected, and an
    exception forwarded from a worker holds the iterator's frames in its traceback,
    which can put that off for as long as the caller keeps the exception (or until the
    cyclic collector runs). Persistent workers belong to the loader and are left alone.
    """
    close = getattr(iterator, "close", None)
    if callable(close):
        close()
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown) and not getattr(iterator, "_persistent_workers", False):
        shutdown()
