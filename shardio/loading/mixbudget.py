"""One memory budget for all the sources of a `Mix`: one guard, one baseline, one RSS check.

Each source's `DatasetReader` keeps its own read path; what the mixture shares is the
guard those readers report their reads to (``reader.guard``) and the policy their
backends are fitted to (``reader.memory_policy``, a share of the budget by shard
count, so the sources together size their caches as one dataset of all their shards).
A process's RSS growth is measured once, from one baseline, against the whole budget.

Checking: one dataset's batch from readers that map no pages is checked once, however
many shards it spans; a mixed batch is too (`MixBudget.batch`): its sources' reads
are added up and checked once at its end, or sooner where they add up to a sixteenth
of the budget (so a batch of mapped pieces is still checked between pieces).
Measuring RSS reads ``/proc``, so a check per source read made a 10-source batch cost
about twice what it costs without the budget.

Releasing: the guard decides, each source's read path acts (as for one dataset). At a
mixed batch's end, every source releases what is due at once (through its reader,
under that reader's own lock); within a batch, the source whose read crossed the budget
is told the releases due at once, and every other source at its own next read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from shardio.core.errors import InvalidOptionError
from shardio.core.perprocess import ForkSafeLock, PerProcess
from shardio.memory import (
    JobBudget,
    MemoryGuard,
    MemoryPolicy,
    MemoryStats,
    ReleaseKind,
    ReleaseResult,
)
from shardio.memory.jobbudget import WorkerInfo
from shardio.storage.reader import DatasetReader

from .loaderinfo import dataloader_worker

__all__ = ["MixBudget"]

_ORDER: tuple[ReleaseKind, ...] = ("advise", "reopen-caches", "reopen")
#: Within a mixed batch, a check at the latest after this many bytes read (or a
#: sixteenth of the budget, if that is less).
_CHECK_BYTES = 32 * 2**20


class MixBudget:
    """The budget of ``policy`` shared by ``readers`` (each source's reader, by number).

    `attach` makes every reader report to it; ``guard`` is the one `MemoryGuard`."""

    def __init__(self, policy: MemoryPolicy, readers: Sequence[DatasetReader]) -> None:
        self.policy = policy
        self.readers = tuple(readers)
        self.guard = MemoryGuard(policy, dataloader_worker)
        self._lock = ForkSafeLock()  # one check at a time, whichever source reads
        # releases each source owes, made at its next read (per process: a worker
        # owes nothing of what its parent owed)
        self._owed: PerProcess[list[set[ReleaseKind]]] = PerProcess()
        self._local = threading.local()  # the mixed batch this thread is reading
        # (a job's share is known only in the reading process: the fixed size there)
        small = policy.max_rss // 16 if policy.job is None else _CHECK_BYTES
        self._check_bytes = max(1, min(_CHECK_BYTES, small))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]  # a batch in progress stays in its thread
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The sources' reads of one mixed batch, checked once against the budget at
        its end (sooner where they add up to the check size), not once per source."""
        local = self._local
        depth = getattr(local, "depth", 0)
        local.depth = depth + 1
        try:
            yield
        finally:
            local.depth = depth
            if depth == 0:
                self._settle()

    def _settle(self) -> None:
        """The check of a mixed batch's unchecked reads; every source releases what is
        due now."""
        nbytes, self._local.unchecked = getattr(self._local, "unchecked", 0), 0
        if not nbytes:
            return
        with self._lock:
            due = self.guard.after_read(nbytes)
        for kind in (k for k in _ORDER if k in due):
            for reader in self.readers:
                self.guard.released(kind, reader.release_memory(kind))

    def attach(self, names: Sequence[str]) -> None:
        """Point every reader at this budget: its guard, and its share for its backend."""
        for name, reader in zip(names, self.readers, strict=True):
            if isinstance(reader.guard, _SourceGuard):
                raise InvalidOptionError(
                    f"source {name!r} is under the memory budget of another Mix already: "
                    "give each Mix its own ShardedDataset objects (they may read the same "
                    "path), or one Mix the budget"
                )
            if reader.memory_policy is not None:
                raise InvalidOptionError(
                    f"source {name!r} has a memory budget of its own (max_rss= or "
                    "memory_policy= on its ShardedDataset), but got max_rss= on the Mix too: "
                    "give the budget to the Mix only, which shares it between the sources"
                )
        total = sum(len(reader.shard_lengths) for reader in self.readers)
        for number, reader in enumerate(self.readers):
            share = self._share(len(reader.shard_lengths), total)
            reader.share_budget(share, _SourceGuard(self, number))

    def _share(self, shards: int, total: int) -> MemoryPolicy:
        """The policy a source's backend is fitted to: its shards' part of the budget
        (of this process's share of a job budget, ``"auto"`` or ``"total:SIZE"``)."""
        fraction = shards / max(total, 1)
        job = self.policy.job
        if job is not None:
            return replace(self.policy, job=_JobPart(job, fraction))
        return replace(self.policy, max_rss=max(1, int(self.policy.max_rss * fraction)))

    def after_read(self, number: int, nbytes: int) -> tuple[ReleaseKind, ...]:
        """Source ``number`` read ``nbytes``: what it owes, then one check of the
        process against the whole budget; the others owe what that check found due.
        Within a mixed batch, the check waits for the batch's end or the check size."""
        local = self._local
        if getattr(local, "depth", 0):
            unchecked = getattr(local, "unchecked", 0) + nbytes
            if unchecked < self._check_bytes:
                local.unchecked = unchecked
                with self._lock:
                    mine = self._owed_now()[number]
                    kinds = tuple(kind for kind in _ORDER if kind in mine)
                    mine.clear()
                return kinds
            nbytes, local.unchecked = unchecked, 0
        with self._lock:
            owed = self._owed_now()
            mine = owed[number]
            due = self.guard.after_read(nbytes)
            for other, theirs in enumerate(owed):
                if other != number:
                    theirs.update(due)
            kinds = tuple(kind for kind in _ORDER if kind in mine or kind in due)
            mine.clear()
            return kinds

    def _owed_now(self) -> list[set[ReleaseKind]]:
        return self._owed.get(lambda: [set() for _ in self.readers])

    def stats(self) -> MemoryStats:
        return self.guard.stats()


class _JobPart(JobBudget):
    """A source's part of a job budget, for fitting its backend: ``fraction`` of the
    process's share, whatever that share turns out to be when reading starts."""

    def __init__(self, whole: JobBudget, fraction: float) -> None:
        # NOTE: not JobBudget.__init__: the whole budget fixes its figure in use
        # (before a fork, or when pickled); this part only scales what it says.
        self.whole = whole
        self.fraction = fraction
        self.spec, self.limit, self.margin = whole.spec, whole.limit, whole.margin
        self.reopen_every = whole.reopen_every

    def provisional_share(self, workers: int = 0) -> int:
        return max(1, int(self.whole.provisional_share(workers) * self.fraction))

    def part_of(self, share: int) -> int:
        return max(1, int(share * self.fraction))

    def fix_in_use(self) -> None:
        self.whole.fix_in_use()

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)  # the whole budget fixes its figure as it pickles


class _SourceGuard(MemoryGuard):
    """What one source's reader sees as its guard: the mixture's one guard."""

    def __init__(self, budget: MixBudget, number: int) -> None:
        super().__init__(budget.policy, dataloader_worker)
        self.budget = budget
        self.number = number

    def worker(self) -> WorkerInfo | None:
        return self.budget.guard.worker()

    def share(self) -> int | None:
        return self.budget.guard.share()

    def after_read(self, nbytes: int) -> tuple[ReleaseKind, ...]:
        return self.budget.after_read(self.number, nbytes)

    def released(self, kind: ReleaseKind, result: ReleaseResult) -> None:
        self.budget.guard.released(kind, result)

    def start(self) -> None:
        self.budget.guard.start()

    def stats(self) -> MemoryStats:
        return self.budget.stats()
