"""One memory budget for all the sources of a `Mix`: one guard, one baseline, one RSS check.

Each source's `DatasetReader` keeps its own read path; what the mixture shares is the
guard those readers report their reads to (``reader.guard``) and the policy their
backends are fitted to (``reader.memory_policy``, a share of the budget by shard
count, so the sources together size their caches as one dataset of all their shards).
A process's RSS growth is measured once, from one baseline, against the whole budget.

Releasing: the source whose read crossed the budget releases at once (its reader's
lock is held by this thread, as for a single dataset); every other source releases at
its own next read, under its own lock. A reader is never touched from a thread that
does not hold its lock: another thread may be closing or mapping its shards.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from shardio.storage.reader import DatasetReader

from .loaderinfo import dataloader_worker

__all__ = ["MixBudget"]

_ORDER: tuple[ReleaseKind, ...] = ("advise", "reopen-caches", "reopen")


class MixBudget:
    """The budget of ``policy`` shared by ``readers`` (each source's reader, by number).

    `attach` makes every reader report to it; ``guard`` is the one `MemoryGuard`."""

    def __init__(self, policy: MemoryPolicy, readers: Sequence[DatasetReader]) -> None:
        self.policy = policy
        self.readers = tuple(readers)
        self.guard = MemoryGuard(policy, self._release, dataloader_worker)
        self._lock = ForkSafeLock()  # one check at a time, whichever source reads
        self._reading: int | None = None  # the source whose read is being checked
        # releases each source owes, made at its next read (per process: a worker
        # owes nothing of what its parent owed)
        self._owed: PerProcess[list[set[ReleaseKind]]] = PerProcess()

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
            reader.memory_policy = self._share(len(reader.shard_lengths), total)
            reader.guard = _SourceGuard(self, number)

    def _share(self, shards: int, total: int) -> MemoryPolicy:
        """The policy a source's backend is fitted to: its shards' part of the budget
        (of this process's share of a job budget, ``"auto"`` or ``"total:SIZE"``)."""
        fraction = shards / max(total, 1)
        job = self.policy.job
        if job is not None:
            return replace(self.policy, job=_JobPart(job, fraction))
        return replace(self.policy, max_rss=max(1, int(self.policy.max_rss * fraction)))

    def after_read(self, number: int, nbytes: int) -> None:
        """Source ``number`` read ``nbytes`` (its reader's lock is held): pay what it
        owes, then one check of the process against the whole budget."""
        with self._lock:
            owed = self._owed_now()[number]
            if owed:
                kinds = [kind for kind in _ORDER if kind in owed]
                owed.clear()
                self._record(sum_results(self.readers[number].release_memory(k) for k in kinds))
            self._reading = number
            try:
                self.guard.after_read(nbytes)
            finally:
                self._reading = None

    def _release(self, kind: ReleaseKind) -> ReleaseResult:
        """The guard's release: the reading source now, every other one at its next read."""
        number = self._reading
        for other, owed in enumerate(self._owed_now()):
            if other != number:
                owed.add(kind)
        if number is None:  # not from a read (nothing calls it so today)
            return ReleaseResult()
        return self.readers[number].release_memory(kind)

    def _owed_now(self) -> list[set[ReleaseKind]]:
        return self._owed.get(lambda: [set() for _ in self.readers])

    def _record(self, result: ReleaseResult) -> None:
        stats = self.guard.state.stats
        if result.advise_calls or result.reopens:
            stats.releases += 1
        stats.advise_calls += result.advise_calls
        stats.advised_bytes += result.advised_bytes
        stats.reopens += result.reopens

    def stats(self) -> MemoryStats:
        return self.guard.stats()


def sum_results(results: Any) -> ReleaseResult:
    total = ReleaseResult()
    for result in results:
        total += result
    return total


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

    def fix_in_use(self) -> None:
        self.whole.fix_in_use()

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)  # the whole budget fixes its figure as it pickles


class _SourceGuard(MemoryGuard):
    """What one source's reader sees as its guard: the mixture's one guard."""

    def __init__(self, budget: MixBudget, number: int) -> None:
        super().__init__(budget.policy, budget.readers[number].release_memory, dataloader_worker)
        self.budget = budget
        self.number = number

    def after_read(self, nbytes: int) -> None:
        self.budget.after_read(self.number, nbytes)

    def start(self) -> None:
        self.budget.guard.start()

    def stats(self) -> MemoryStats:
        return self.budget.stats()
