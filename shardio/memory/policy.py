"""Memory budgets: when to release what reading has made resident, and how much.

A `MemoryGuard` enforces a `MemoryPolicy` in the process that reads.
It checks ``RssFile`` from /proc after read calls and asks the readers to release
mapped pages once it grows past the budget; it reopens cache-holding backends
(HDF5, Zarr) every ``reopen_every`` bytes read. A counter of bytes read cannot bound
RSS for mappings: one fault can map a whole 2 MiB page of the page cache, so the
check measures RSS itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

from shardio.core.config import parse_size, positive_int
from shardio.core.errors import InvalidOptionError
from shardio.core.perprocess import PerProcess
from shardio.core.warn import warn_user

from .advise import madvise_supported
from .jobbudget import JobBudget, WorkerInfo, warn_no_limit
from .jobwatch import JOB_CHECK_SECONDS, JobWatch
from .rss import RssInfo, read_rss

__all__ = ["MemoryGuard", "MemoryPolicy", "MemoryStats", "ReleaseResult", "ReleaseKind"]

#: "advise": drop mapped pages (madvise), "reopen": close every handle,
#: "reopen-caches": close the handles of backends that hold library caches.
ReleaseKind = Literal["advise", "reopen", "reopen-caches"]
#: How reads go, as the kernel is told (madvise, posix_fadvise): the one vocabulary of
#: access hints, from the budget's ``access=`` option down to the adapters.
AccessPattern = Literal["random", "sequential", "normal"]
#: ``access=``: a pattern, or ``"auto"`` to detect one per batch.
Access = Literal["auto", AccessPattern]


@dataclass
class ReleaseResult:
    """What one release did."""

    advise_calls: int = 0
    advised_bytes: int = 0
    reopens: int = 0

    def __iadd__(self, other: ReleaseResult) -> ReleaseResult:
        self.advise_calls += other.advise_calls
        self.advised_bytes += other.advised_bytes
        self.reopens += other.reopens
        return self


@dataclass(frozen=True)
class MemoryPolicy:
    """A budget for the memory that reading adds, per process or for the whole job.

    ``max_rss``: bytes of file-backed pages and library caches reading may add over
    the process's baseline (``"512MB"``); or ``"auto"``: the job's limit (SLURM or
    cgroup) split between the main process and each DataLoader worker; or
    ``"total:8GB"``: that figure split the same way (see docs/memory.md).
    ``job_margin``: what a job budget keeps free (default: a tenth of the limit, at
    least 256 MiB). ``check_every``: read calls between RSS
    checks (a batch is one call). ``release``: ``"auto"`` (madvise where the backend
    maps files, else reopen), ``"advise"`` or ``"reopen"``. ``access``: hint the
    kernel ``"random"``, ``"sequential"`` or ``"normal"`` access, or detect it per batch
    (``"auto"``).
    ``reopen_every``: bytes read between reopens of cache-holding backends, and of
    every backend where RSS cannot be measured (default: 4 x ``max_rss``).
    """

    max_rss: int
    check_every: int = 1
    release: Literal["auto", "advise", "reopen"] = "auto"
    access: Access = "auto"
    reopen_every: int | None = None
    job_margin: int | str | None = None
    #: The job-wide budget behind ``"auto"`` / ``"total:SIZE"`` (``max_rss`` is then
    #: the main process's share while it reads alone, until the first read).
    job: JobBudget | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_rss, str) and self.job is None:
            job = JobBudget.parse(self.max_rss, self.job_margin)
            if job is not None:
                job.reopen_every = self.reopen_every  # as given: each share sets its own
                object.__setattr__(self, "job", job)
                # No limit found: no budget (resolve() warns and returns None).
                share = job.provisional_share() if job.limit is not None else sys.maxsize
                object.__setattr__(self, "max_rss", share)
        if self.job_margin is not None and self.job is None:
            raise InvalidOptionError(
                "job_margin applies to a job budget, max_rss='auto' or 'total:SIZE', "
                f"but got max_rss={self.max_rss!r}"
            )
        object.__setattr__(self, "max_rss", parse_size(self.max_rss, "max_rss"))
        if self.max_rss <= 0:
            raise InvalidOptionError(f"max_rss should be > 0 bytes, but got max_rss={self.max_rss}")
        positive_int(self.check_every, "check_every")
        if self.release not in ("auto", "advise", "reopen"):
            raise InvalidOptionError(
                f"release should be 'auto', 'advise' or 'reopen', but got release={self.release!r}"
            )
        if self.access not in get_args(Access):
            raise InvalidOptionError(
                "access should be 'auto', 'random', 'sequential' or 'normal', but got "
                f"access={self.access!r}"
            )
        reopen = (
            4 * self.max_rss
            if self.reopen_every is None
            else parse_size(self.reopen_every, "reopen_every")
        )
        object.__setattr__(self, "reopen_every", reopen)

    @classmethod
    def resolve(cls, max_rss: int | str | None, policy: MemoryPolicy | None) -> MemoryPolicy | None:
        """The policy from ``ShardedDataset(max_rss=..., memory_policy=...)`` arguments."""
        if policy is not None and max_rss is not None:
            raise InvalidOptionError("pass max_rss= or memory_policy=, not both")
        if policy is not None and not isinstance(policy, MemoryPolicy):
            raise InvalidOptionError(
                f"memory_policy should be a shardio.MemoryPolicy, but got {type(policy).__name__}"
            )
        if max_rss is not None:
            policy = cls(max_rss=max_rss)  # type: ignore[arg-type]  # parsed in __post_init__
        if policy is not None and policy.job is not None and policy.job.limit is None:
            warn_no_limit()
            return None
        return policy

    def for_share(self, share: int) -> MemoryPolicy:
        """This policy with ``max_rss=share`` (a process's part of a job budget)."""
        reopen = self.job.reopen_every if self.job is not None else self.reopen_every
        return replace(self, max_rss=share, reopen_every=reopen, job=None, job_margin=None)


@dataclass
class MemoryStats:
    """What a process's reading holds and what the guard did about it."""

    pid: int
    budget: int | None
    rss: int = 0
    rss_file: int = 0
    rss_anon: int = 0
    baseline_rss: int = 0
    baseline_file: int = 0
    growth: int = 0
    peak_growth: int = 0
    bytes_read: int = 0
    checks: int = 0
    releases: int = 0
    advise_calls: int = 0
    advised_bytes: int = 0
    reopens: int = 0
    measured: bool = True
    # A job budget (max_rss="auto" or "total:SIZE"): the split, and the last job sample.
    job_limit: int | None = None
    job_limit_source: str | None = None
    job_in_use: int | None = None
    job_margin: int | None = None
    workers: int | None = None
    job_rss: int | None = None
    job_pss: int | None = None
    job_processes: int | None = None
    job_warnings: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _State:
    pid: int
    baseline: RssInfo | None
    policy: MemoryPolicy | None = None  # this process's: a job budget's share applied
    watch: JobWatch | None = None
    calls: int = 0
    bytes_since_reopen: int = 0
    stats: MemoryStats = field(default_factory=lambda: MemoryStats(pid=0, budget=None))


_warned_unmeasured = False


class MemoryGuard:
    """Enforces a policy in whichever process reads; a forked or spawned worker
    starts its own accounting from its own baseline, and takes its share of a job
    budget then.

    The guard decides, the read path acts: `after_read` returns the releases due
    (none, or e.g. ``("advise",)``), the caller makes them on what it holds open and
    reports each with `released`. ``worker_info`` (given at construction; storage
    never imports torch) tells a DataLoader worker's ``(id, num_workers)``; it is
    asked once per process (`worker`)."""

    def __init__(
        self,
        policy: MemoryPolicy | None,
        worker_info: Callable[[], WorkerInfo | None] | None = None,
    ) -> None:
        self.policy = policy
        self.worker_info = worker_info
        self._worker: PerProcess[tuple[WorkerInfo | None]] = PerProcess()
        self._state: PerProcess[_State] = PerProcess()

    def worker(self) -> WorkerInfo | None:
        """This process's DataLoader worker identity (None in the main process),
        decided the first time it is asked in the process."""
        return self._worker.get(
            lambda: (self.worker_info() if self.worker_info is not None else None,)
        )[0]

    @property
    def state(self) -> _State:
        """This process's accounting, started on first use in the process."""
        return self._state.get(self._start_state)

    def _start_state(self) -> _State:
        pid = os.getpid()
        baseline = read_rss()
        policy, watch, split = self.policy, None, None
        if policy is not None and policy.job is not None and policy.job.limit is not None:
            worker = self.worker()
            split = policy.job.for_process(worker, baseline.rss if baseline else 0)
            policy = policy.for_share(split.share)
            main_pid = os.getppid() if worker is not None else pid
            # Each of the job's processes samples it: together about every 2 s.
            watch = JobWatch(main_pid, split.limit, JOB_CHECK_SECONDS * (split.workers + 1))
        stats = MemoryStats(pid=pid, budget=policy.max_rss if policy else None)
        if baseline is not None:
            stats.baseline_rss, stats.baseline_file = baseline.rss, baseline.file
        stats.measured = baseline is not None
        if split is not None:
            stats.job_limit, stats.job_limit_source = split.limit, split.source
            stats.job_in_use, stats.job_margin = split.in_use, split.margin
            stats.workers = split.workers
        return _State(pid, baseline, policy, watch, stats=stats)

    def share(self) -> int | None:
        """This process's ``max_rss``, decided once per process: the policy's, or its
        slot of a job budget (`JobBudget.for_process`, with this process's worker
        identity and starting RSS). The one figure the guard enforces and the read
        path fits its caches and read pieces to; None without a policy."""
        policy = self.state.policy
        return policy.max_rss if policy is not None else None

    def start(self) -> None:
        """Take this process's baseline now (after imports and open)."""
        self.state  # noqa: B018

    def after_read(self, nbytes: int) -> tuple[ReleaseKind, ...]:
        """Account for one read call of ``nbytes``; the releases now due, in order
        (the caller makes each and reports it with `released`)."""
        state = self.state
        state.stats.bytes_read += nbytes
        state.bytes_since_reopen += nbytes
        state.calls += 1
        policy = state.policy
        if state.watch is not None and state.watch.maybe_check() is not None:
            self._record_job(state)
        if policy is None or state.calls % policy.check_every:
            return ()
        assert policy.reopen_every is not None
        info = read_rss()
        state.stats.checks += 1
        if info is None or state.baseline is None:
            self._warn_unmeasured()
            return ("reopen",) if state.bytes_since_reopen >= policy.reopen_every else ()
        self._record(info)
        due: list[ReleaseKind] = []
        pending = state.bytes_since_reopen
        if info.file - state.baseline.file > policy.max_rss:
            kind: ReleaseKind = (
                "reopen" if policy.release == "reopen" or not madvise_supported() else "advise"
            )
            due.append(kind)
            if kind == "reopen":
                pending = 0
        if pending >= policy.reopen_every:
            due.append("reopen-caches")  # HDF5 and Zarr drop what their libraries cache
        return tuple(due)

    def released(self, kind: ReleaseKind, result: ReleaseResult) -> None:
        """Record a release `after_read` asked for, and the RSS after it."""
        state = self.state
        if result.advise_calls or result.reopens:
            state.stats.releases += 1
        state.stats.advise_calls += result.advise_calls
        state.stats.advised_bytes += result.advised_bytes
        state.stats.reopens += result.reopens
        if kind != "advise":
            state.bytes_since_reopen = 0
        if kind != "reopen-caches" and state.baseline is not None:
            info = read_rss()
            if info is not None:
                self._record(info)

    def _record(self, info: RssInfo) -> None:
        stats = self.state.stats
        stats.rss, stats.rss_file, stats.rss_anon = info.rss, info.file, info.anon
        stats.growth = info.rss - stats.baseline_rss
        stats.peak_growth = max(stats.peak_growth, stats.growth)

    @staticmethod
    def _warn_unmeasured() -> None:
        global _warned_unmeasured
        if not _warned_unmeasured:
            _warned_unmeasured = True
            warn_user(
                "shardio cannot read RSS on this platform (/proc is missing); the memory "
                "budget falls back to reopening files every reopen_every bytes read",
                RuntimeWarning,
            )

    def _record_job(self, state: _State) -> None:
        assert state.watch is not None and state.watch.last is not None
        usage, stats = state.watch.last, state.stats
        stats.job_rss, stats.job_pss = usage.rss, state.watch.last_pss
        stats.job_processes, stats.job_warnings = len(usage.processes), state.watch.warnings

    def stats(self) -> MemoryStats:
        """Current figures for this process (RSS read now, and the job's where a job
        budget applies)."""
        info = read_rss()
        if info is not None:
            self._record(info)
        state = self.state
        if state.watch is not None:
            state.watch.check(pss=True)
            self._record_job(state)
        return state.stats
