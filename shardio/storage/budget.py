"""The memory budget around the read path: what a process may add by reading, the
backend options fitted to it, and the reads made in pieces with an RSS check between.

`ReadBudget` wraps the one call that reads a shard: it says how many rows one call
may read (`pieces`; a reader that maps pages reads a large batch in pieces), and
after each call (`after`, `settle`) tells the guard
(`shardio.memory.MemoryGuard`) what was read; the guard decides which releases are
due and the budget makes them on the dataset's `OpenShards`, whose readers it was
given when made. Nothing here is called back from below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardio.core.perprocess import ForkSafeLock, PerProcess
from shardio.memory import MemoryGuard, MemoryPolicy

from .adapters.base import Columns, ShardReader, concat_columns
from .openshards import OpenShards

__all__ = ["ReadBudget"]

_WORST_FAULT_BYTES = 2 * 1024 * 1024


@dataclass
class _Process:
    """This process's budget, decided once in the process: what it may add, the
    backend options fitted to it, rows per piece, and bytes read by map-free readers
    not yet checked."""

    max_rss: int
    options: dict[str, Any]
    step: int
    unchecked: int = 0


class ReadBudget:
    """A `MemoryPolicy` enforced around one dataset's reads in each process."""

    def __init__(
        self,
        policy: MemoryPolicy,
        guard: MemoryGuard,
        shards: OpenShards,
        reader_class: type[ShardReader[Any]],
        shape: tuple[int, int],
    ) -> None:
        self.policy = policy
        self.guard = guard
        self._shards = shards
        self._reader_class = reader_class
        self._shape = shape  # (shards, fields) the backend options are fitted to
        self._process: PerProcess[_Process] = PerProcess()
        # Threads of one process share the accounting: one at a time updates it.
        self._lock = ForkSafeLock()

    @property
    def here(self) -> _Process:
        """This process's budget.

        A job-wide budget (``max_rss="auto"`` or ``"total:SIZE"``) is split between
        the main process and each DataLoader worker once per process, by the guard
        (`MemoryGuard.share`, from the worker identity it was given and the process's
        starting RSS): the caches and read pieces fitted here and the RSS the guard
        enforces are the same figure."""
        return self._process.get(self._fit)

    def _fit(self) -> _Process:
        policy = self.policy
        budget = policy.max_rss
        if policy.job is not None and policy.job.limit is not None:
            share = self.guard.share()
            assert share is not None  # the guard holds the same job policy
            budget = policy.job.part_of(share)
        options = self._reader_class.budget_options(budget, *self._shape)
        return _Process(budget, options, max(4, budget // (4 * _WORST_FAULT_BYTES)))

    def pieces(self, reader: ShardReader[Any]) -> int:
        """Rows per read call for ``reader`` (0: a batch in one call).

        NOTE: one touched page can map a whole large folio (up to 2 MiB) of the page
        cache, so a batch from a mapping is read in pieces with an RSS check between."""
        return self.here.step if reader.touches_mapped_pages else 0

    def read_in_pieces(
        self, reader: ShardReader[Any], local: np.ndarray, out: Mapping[str, np.ndarray], step: int
    ) -> Columns:
        """``reader.read_into(local, out)`` in pieces of ``step`` rows, each accounted."""
        parts = []
        for start in range(0, len(local), step):
            piece = {name: target[start : start + step] for name, target in out.items()}
            before = reader.bytes_read
            parts.append(reader.read_into(local[start : start + step], piece))
            self.after(reader, reader.bytes_read - before)
        columns = concat_columns(parts)
        columns.update(out)  # the pieces were read into views of ``out``
        return columns

    def after(self, reader: ShardReader[Any], nbytes: int) -> None:
        """Account one read call of ``reader`` that read ``nbytes``."""
        if reader.touches_mapped_pages:
            self._account(nbytes)
            return
        # Readers that map no pages are checked once per batch (`settle`), not once per
        # shard: a batch spread over many shards would read /proc per shard.
        with self._lock:
            self.here.unchecked += nbytes

    def settle(self) -> None:
        """The check of a batch's reads that mapped no pages (once per batch)."""
        here = self.here
        if here.unchecked:
            with self._lock:
                nbytes, here.unchecked = here.unchecked, 0
            if nbytes:
                self._account(nbytes)

    def _account(self, nbytes: int) -> None:
        with self._lock:
            for kind in self.guard.after_read(nbytes):
                self.guard.released(kind, self._shards.release(kind))
