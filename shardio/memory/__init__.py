"""Resident-memory accounting and budgets (stdlib + ctypes only).

The mechanism that releases memory (madvise on a mapping, reopening a file, sizing
a cache) lives in the adapter that owns it; this package holds the measurement and
the policy: when to release, and how much reading may add.
"""

from .advise import Mapping, advise_range, find_mappings, madvise_supported
from .jobbudget import JobBudget, JobSplit, split_job_budget
from .joblimit import JobLimit, find_job_limit, job_limits
from .jobwatch import JobUsage, JobWatch
from .pagecache import FileRange, hint_ranges, readahead_supported
from .policy import (
    AccessPattern,
    MemoryGuard,
    MemoryPolicy,
    MemoryStats,
    ReleaseKind,
    ReleaseResult,
)
from .rss import RssInfo, process_rss, read_pss, read_rss
from .sampler import RssSampler

__all__ = [
    "AccessPattern",
    "FileRange",
    "JobBudget",
    "JobLimit",
    "JobSplit",
    "JobUsage",
    "JobWatch",
    "Mapping",
    "MemoryGuard",
    "MemoryPolicy",
    "MemoryStats",
    "ReleaseKind",
    "ReleaseResult",
    "RssInfo",
    "RssSampler",
    "advise_range",
    "find_job_limit",
    "find_mappings",
    "hint_ranges",
    "job_limits",
    "madvise_supported",
    "read_pss",
    "process_rss",
    "read_rss",
    "readahead_supported",
    "split_job_budget",
]
