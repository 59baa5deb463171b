"""One memory budget for all the sources of a `Mix`: one guard, one baseline, one RSS check.

Each source's `DatasetReader` keeps its own read path; what the mixture shares is the
guard those readers report their reads to (``reader.guard``) and the policy their
backends are fitted to (``reader.memory_policy``, a share of the budget by shard
count, so the sources together size their caches as one dataset of all their shards).
A process's RSS growth is measured once, from one baseline, against the whole budget.

Releasing: the guard decides, each source's read path acts (as for one dataset). The
source whose read crossed the budget is told the releases due at once; every other
source is told them at its own next read. Nothing here touches a source's shards.
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
from shardio.memory.jobbudget import WorkerInfo
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
        self.guard = MemoryGuard(policy, dataloader_worker)
        self._lock = ForkSafeLock()  # one check at a time, whichever source reads
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
        process against the whole budget; the others owe what that check found due."""
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
