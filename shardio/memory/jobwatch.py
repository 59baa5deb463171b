"""Job-wide accounting: RSS and PSS summed over the main process and its workers.

RSS counts a page shared by N processes N times (SLURM's RSS accounting adds RSS this
way); PSS counts it once, split between them (closer to what a cgroup charges). A
`JobWatch` samples the RSS from /proc at most every few seconds and warns once
the sum nears the job's limit, naming the process that grew most. PSS costs more to
read (smaps_rollup walks a process's page tables: 10-20 ms for a process with torch
loaded), so it is read on request, at most every ``JOB_CHECK_SECONDS``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from shardio.core.config import format_size

from .rss import read_pss, read_rss
from .sampler import RssSampler

__all__ = ["JOB_CHECK_SECONDS", "WARN_FRACTION", "JobUsage", "JobWatch", "ProcessMemory"]

logger = logging.getLogger("shardio")

#: Seconds between two samples of the job (each of N reading processes samples every
#: N times this): reading smaps_rollup of every process walks their page tables,
#: cheap but not free.
JOB_CHECK_SECONDS = 2.0
#: The share of the limit at which the RSS sum is reported as nearing it.
WARN_FRACTION = 0.9


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    rss: int
    pss: int | None


@dataclass(frozen=True)
class JobUsage:
    """One sample: the main process first, then its children."""

    processes: tuple[ProcessMemory, ...]

    @property
    def rss(self) -> int:
        return sum(p.rss for p in self.processes)

    @property
    def pss(self) -> int | None:
        values = [p.pss for p in self.processes]
        return None if any(v is None for v in values) else sum(v or 0 for v in values)

    @classmethod
    def sample(cls, main_pid: int, pss: bool = True) -> JobUsage:
        """RSS (and PSS unless ``pss=False``) of ``main_pid`` and its child processes."""
        found = []
        for pid in (main_pid, *child_pids(main_pid)):
            info = read_rss(pid)
            if info is not None:  # a worker may exit between listing and reading
                found.append(ProcessMemory(pid, info.rss, read_pss(pid) if pss else None))
        return cls(tuple(found))


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (each thread's ``children`` file, or a
    scan of ``/proc/*/stat`` where the kernel lacks it)."""
    tasks = f"/proc/{pid}/task"
    children: list[int] = []
    try:
        threads = os.listdir(tasks)
        for tid in threads:
            with open(f"{tasks}/{tid}/children", encoding="ascii") as handle:
                children.extend(int(child) for child in handle.read().split())
        return sorted(set(children))
    except FileNotFoundError:
        pass
    except OSError:
        return []
    return _scan_children(pid)


def _scan_children(pid: int) -> list[int]:
    children = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name in parentheses may hold spaces: fields follow the last ")".
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.append(int(name))
    return sorted(children)


class JobWatch:
    """Samples a job's processes at most every ``interval`` seconds; warns once when
    the RSS sum reaches ``WARN_FRACTION`` of ``limit`` (again after it fell below)."""

    def __init__(self, main_pid: int, limit: int, interval: float = JOB_CHECK_SECONDS) -> None:
        self.main_pid = main_pid
        self.limit = limit
        self.interval = interval
        self.last: JobUsage | None = None
        self.last_pss: int | None = None
        self.warnings = 0
        self._first_rss: dict[int, int] = {}
        self._clock = RssSampler(interval)  # when the next sample is due
        self._next_pss = 0.0
        self._warned = False

    def maybe_check(self) -> JobUsage | None:
        """A sample if ``interval`` has passed since the last one, else ``None``."""
        return self.check() if self._clock.due() else None

    def check(self, pss: bool = False) -> JobUsage:
        """A sample now; with ``pss=True`` PSS too, unless read less than ``interval``
        seconds ago (then the last PSS figure stands)."""
        now = time.monotonic()
        pss = pss and now >= self._next_pss
        usage = JobUsage.sample(self.main_pid, pss=pss)
        if pss:
            self.last_pss, self._next_pss = usage.pss, now + self.interval
        first_check = self.last is None
        for process in usage.processes:
            # A process started since the first check grew from nothing.
            self._first_rss.setdefault(process.pid, process.rss if first_check else 0)
        near = usage.rss >= WARN_FRACTION * self.limit
        if near and not self._warned:
            self.warnings += 1
            described = usage if pss else JobUsage.sample(self.main_pid)  # with PSS
            logger.warning("shardio: %s", self._describe(described))
        self._warned = near
        self.last = usage
        return usage

    def _describe(self, usage: JobUsage) -> str:
        grown = max(usage.processes, key=lambda p: p.rss - self._first_rss.get(p.pid, 0))
        role = "the main process" if grown.pid == self.main_pid else "DataLoader worker"
        pss = "unknown" if usage.pss is None else format_size(usage.pss)
        return (
            f"the job's RSS, summed over {len(usage.processes)} processes, is "
            f"{format_size(usage.rss)} (PSS {pss}), {usage.rss / self.limit:.0%} of its "
            f"{format_size(self.limit)} limit; {role} pid {grown.pid} grew most: by "
            f"{format_size(grown.rss - self._first_rss.get(grown.pid, 0))} to "
            f"{format_size(grown.rss)}"
        )
