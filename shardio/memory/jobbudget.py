"""One memory budget for a whole job, split between the main process and its workers.

``max_rss="auto"`` takes the job's limit (see `.joblimit`); ``max_rss="total:8GB"``
states it. From it come, in order: what the main process holds when reading starts
(``in_use``), a margin for what the training loop allocates later, and an equal slot
for the main process and for each DataLoader worker. A worker's slot also holds the
worker's own RSS at its start (pages it shares with the main process count in both
RSS figures, as SLURM's RSS accounting counts them); the rest is the share its
reading may add. A worker learns ``num_workers`` when it first reads.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

from shardio.core.config import format_size, parse_size
from shardio.core.errors import InvalidOptionError
from shardio.core.warn import warn_user

from .joblimit import JobLimit, find_job_limit
from .rss import read_rss

__all__ = [
    "MARGIN_FRACTION",
    "MIN_MARGIN",
    "MIN_SHARE",
    "JobBudget",
    "JobSplit",
    "default_margin",
    "split_job_budget",
]

logger = logging.getLogger("shardio")

#: The margin kept free of any budget: a tenth of the limit, at least 256 MiB, for
#: what the main process allocates after reading starts (activations, batches in
#: flight, pinned memory) and for what a budget cannot see (allocator slack).
MARGIN_FRACTION = 0.10
MIN_MARGIN = 256 * 2**20
#: Below this a process could not hold one batch under its budget: an error instead.
MIN_SHARE = 16 * 2**20

WorkerInfo = tuple[int, int]
"""``(worker id, num_workers)`` of a DataLoader worker."""


def default_margin(limit: int) -> int:
    return max(MIN_MARGIN, int(limit * MARGIN_FRACTION))


@dataclass(frozen=True)
class JobSplit:
    """How a job's limit is shared, seen from one process."""

    limit: int  # bytes for this process and its workers
    source: str  # where the limit came from
    in_use: int  # RSS of the main process when reading started
    margin: int
    workers: int  # DataLoader workers; 0 where the main process reads alone
    slot: int  # (limit - in_use - margin) / (workers + 1)
    baseline: int  # this process's RSS at its start, held in its slot (0 in the main one)
    share: int  # slot - baseline: what reading may add in this process

    def describe(self) -> str:
        processes = "the main process" + (
            f" and each of {self.workers} DataLoader workers" if self.workers else " alone"
        )
        return (
            f"job memory limit {format_size(self.limit)} from {self.source}; "
            f"{format_size(self.in_use)} in use by the main process, margin "
            f"{format_size(self.margin)}: {format_size(self.slot)} for {processes}"
        )


def split_job_budget(
    limit: int,
    in_use: int,
    workers: int,
    *,
    margin: int | None = None,
    baseline: int = 0,
    source: str = "the limit given",
) -> JobSplit:
    """Split ``limit`` bytes between the main process and ``workers`` workers.

    ``in_use``: RSS of the main process when reading starts; ``baseline``: the RSS of
    the process asking, at its start (0 for the main process, whose RSS is ``in_use``).
    Raises `InvalidOptionError` where the share would be below 16 MiB.
    """
    if workers < 0:
        raise InvalidOptionError(f"workers should be >= 0, but got workers={workers}")
    margin = default_margin(limit) if margin is None else margin
    slot = (limit - in_use - margin) // (workers + 1)
    split = JobSplit(limit, source, in_use, margin, workers, slot, baseline, slot - baseline)
    if split.share < MIN_SHARE:
        raise InvalidOptionError(
            f"max_rss: the {split.describe()}; that leaves {format_size(split.share)} for "
            f"reading in a process holding {format_size(baseline)} at its start, but at least "
            f"{format_size(MIN_SHARE)} is needed: raise the job's memory, use fewer "
            "workers, or pass max_rss= a size per process"
        )
    return split


class JobBudget:
    """A job-wide budget: its limit, its margin, and (once reading starts) what the
    main process holds.

    The figure in use is taken once in the main process: at its first read, or just
    before its first fork (a DataLoader's first worker), or when it pickles the budget
    for a spawned worker, whichever comes first; it travels with the policy into every
    worker, so all of them split the same figure."""

    def __init__(self, spec: str, limit: JobLimit | None, margin: int | None = None) -> None:
        self.spec = spec
        self.limit = limit
        self.margin = margin
        self.in_use: int | None = None
        self.reopen_every: int | None = None  # MemoryPolicy's, as given
        if limit is not None:
            _UNFIXED.add(self)

    def fix_in_use(self) -> None:
        """Take what this (the main) process holds now as the job's figure in use."""
        if self.in_use is None:
            info = read_rss()
            self.in_use = info.rss if info is not None else 0
        _UNFIXED.discard(self)

    def __getstate__(self) -> dict[str, Any]:
        if self.limit is not None:
            self.fix_in_use()  # pickled for a spawned worker: fixed before it starts
        return dict(self.__dict__)

    @classmethod
    def parse(cls, value: str, margin: int | str | None = None) -> JobBudget | None:
        """The budget that ``max_rss="auto"`` or ``"total:8GB"`` asks for; ``None`` for
        other values (a size per process)."""
        text = value.strip().lower()
        given = None if margin is None else parse_size(margin, "job_margin")
        if text == "auto":
            return cls("auto", _per_local_rank(find_job_limit()), given)
        if text.startswith("total:"):
            total = parse_size(value.split(":", 1)[1], "max_rss")
            if total <= 0:
                raise InvalidOptionError(
                    f"max_rss should be 'total:SIZE' with SIZE > 0, but got max_rss={value!r}"
                )
            return cls(value, JobLimit(total, f"max_rss={value!r}"), given)
        return None

    def __repr__(self) -> str:
        return f"JobBudget({self.spec!r}, limit={self.limit}, in_use={self.in_use})"

    def provisional_share(self, workers: int = 0) -> int:
        """What one process's slot of the job holds, as of now, where ``workers``
        DataLoader workers read beside the main process (0: the main process reading
        alone). Sizes caches before the first read fixes the figures."""
        assert self.limit is not None
        in_use = self.in_use
        if in_use is None:
            info = read_rss()
            in_use = info.rss if info else 0
        margin = default_margin(self.limit.nbytes) if self.margin is None else self.margin
        return max(MIN_SHARE, (self.limit.nbytes - in_use - margin) // (workers + 1))

    def part_of(self, share: int) -> int:
        """What a reader under this budget may add of a process's ``share`` (all of it;
        a part of a job budget, such as a `Mix` source's, scales it)."""
        return share

    def for_process(self, worker: WorkerInfo | None, baseline: int) -> JobSplit:
        """This process's split: ``worker`` is ``(id, num_workers)`` in a DataLoader
        worker, ``None`` in the main process; ``baseline`` its RSS at its start."""
        assert self.limit is not None
        if self.in_use is None:
            # Not fixed by the main process (the policy was made in this worker): the
            # parent's figure now is the nearest there is.
            main = read_rss(os.getppid()) if worker is not None else None
            self.in_use = main.rss if main is not None else baseline
        _UNFIXED.discard(self)
        split = split_job_budget(
            self.limit.nbytes,
            self.in_use,
            worker[1] if worker is not None else 0,
            margin=self.margin,
            baseline=baseline if worker is not None else 0,
            source=self.limit.source,
        )
        where = "the main process" if worker is None else f"DataLoader worker {worker[0]}"
        # One INFO line per job: the main process, or the first worker where workers read.
        level = logging.INFO if worker is None or worker[0] == 0 else logging.DEBUG
        logger.log(
            level,
            "shardio max_rss=%r: %s; %s may add %s by reading",
            self.spec,
            split.describe(),
            where,
            format_size(split.share),
        )
        return split


#: Budgets whose figure in use is not yet taken; all are fixed before this process
#: forks (the first DataLoader worker), so that every worker splits the same figure.
_UNFIXED: weakref.WeakSet[JobBudget] = weakref.WeakSet()


def _fix_before_fork() -> None:
    for budget in list(_UNFIXED):
        budget.fix_in_use()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_fix_before_fork)


def warn_no_limit() -> None:
    """``max_rss="auto"`` where no limit applies: say so, and read without a budget."""
    message = (
        "shardio max_rss='auto' found no memory limit (SLURM_MEM_PER_NODE, "
        "SLURM_MEM_PER_CPU x SLURM_CPUS_ON_NODE, cgroup v2 memory.max and cgroup v1 "
        "memory.limit_in_bytes are all unset or unlimited): reading runs without a "
        "memory budget; pass max_rss='total:SIZE' to state the job's memory"
    )
    warn_user(message, RuntimeWarning)


def _per_local_rank(limit: JobLimit | None) -> JobLimit | None:
    """A node's limit divided between the training processes on the node, where
    torchrun (or a launcher like it) says how many there are."""
    ranks = os.environ.get("LOCAL_WORLD_SIZE", "")
    if limit is None or not ranks.isdigit() or int(ranks) <= 1:
        return limit
    count = int(ranks)
    return JobLimit(limit.nbytes // count, f"{limit.source} / LOCAL_WORLD_SIZE={count}")
