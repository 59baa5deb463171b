"""Memory budgets: when to release what reading has made resident, and how much.

A :class:`MemoryGuard` enforces a :class:`MemoryPolicy` in the process that reads.
It checks ``RssFile`` from /proc after read calls and asks the readers to release
mapped pages once it grows past the budget; it reopens cache-holding backends
(HDF5, Zarr) every ``reopen_every`` bytes read. A counter of bytes read cannot bound
RSS for mappings: one fault can map a whole 2 MiB page of the page cache, so the
check measures RSS itself.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..config import parse_size
from ..errors import InvalidOptionError
from .advise import madvise_supported
from .rss import RssInfo, read_rss

__all__ = ["MemoryGuard", "MemoryPolicy", "MemoryStats", "ReleaseResult", "ReleaseKind"]

#: "advise": drop mapped pages (madvise), "reopen": close every handle,
#: "reopen-caches": close the handles of backends that hold library caches.
ReleaseKind = Literal["advise", "reopen", "reopen-caches"]
Access = Literal["auto", "random", "sequential"]


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
    """A per-process budget for the memory that reading adds.

    ``max_rss``: bytes of file-backed pages and library caches reading may add over
    the process's baseline (``"512MB"``). ``check_every``: read calls between RSS
    checks (a batch is one call). ``release``: ``"auto"`` (madvise where the backend
    maps files, else reopen), ``"advise"`` or ``"reopen"``. ``access``: hint the
    kernel ``"random"`` or ``"sequential"`` access, or detect it per batch (``"auto"``).
    ``reopen_every``: bytes read between reopens of cache-holding backends, and of
    every backend where RSS cannot be measured (default: 4 x ``max_rss``).
    """

    max_rss: int
    check_every: int = 1
    release: Literal["auto", "advise", "reopen"] = "auto"
    access: Access = "auto"
    reopen_every: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_rss", parse_size(self.max_rss, "max_rss"))
        if self.max_rss <= 0:
            raise InvalidOptionError(f"max_rss should be > 0 bytes, but got max_rss={self.max_rss}")
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise InvalidOptionError(
                "check_every should be a positive integer, "
                f"but got check_every={self.check_every!r}"
            )
        if self.release not in ("auto", "advise", "reopen"):
            raise InvalidOptionError(
                f"release should be 'auto', 'advise' or 'reopen', but got release={self.release!r}"
            )
        if self.access not in ("auto", "random", "sequential"):
            raise InvalidOptionError(
                f"access should be 'auto', 'random' or 'sequential', but got access={self.access!r}"
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
        if max_rss is None:
            return policy
        return cls(max_rss=max_rss)  # type: ignore[arg-type]  # parsed in __post_init__


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _State:
    pid: int
    baseline: RssInfo | None
    calls: int = 0
    bytes_since_reopen: int = 0
    stats: MemoryStats = field(default_factory=lambda: MemoryStats(pid=0, budget=None))


_warned_unmeasured = False


class MemoryGuard:
    """Enforces a policy in whichever process reads; a forked or spawned worker
    starts its own accounting from its own baseline."""

    def __init__(
        self, policy: MemoryPolicy | None, release: Callable[[ReleaseKind], ReleaseResult]
    ) -> None:
        self.policy = policy
        self._release = release
        self._state: _State | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}

    @property
    def state(self) -> _State:
        pid = os.getpid()
        if self._state is None or self._state.pid != pid:
            baseline = read_rss()
            stats = MemoryStats(pid=pid, budget=self.policy.max_rss if self.policy else None)
            if baseline is not None:
                stats.baseline_rss, stats.baseline_file = baseline.rss, baseline.file
            stats.measured = baseline is not None
            self._state = _State(pid, baseline, stats=stats)
        return self._state

    def start(self) -> None:
        """Take this process's baseline now (after imports and open)."""
        self.state  # noqa: B018

    def after_read(self, nbytes: int) -> None:
        """Account for one read call of ``nbytes``; release memory when over budget."""
        state = self.state
        state.stats.bytes_read += nbytes
        state.bytes_since_reopen += nbytes
        state.calls += 1
        policy = self.policy
        if policy is None or state.calls % policy.check_every:
            return
        assert policy.reopen_every is not None
        info = read_rss()
        state.stats.checks += 1
        if info is None or state.baseline is None:
            self._warn_unmeasured()
            if state.bytes_since_reopen >= policy.reopen_every:
                self._do("reopen")
            return
        self._record(info)
        if info.file - state.baseline.file > policy.max_rss:
            self._do(
                "reopen" if policy.release == "reopen" or not madvise_supported() else "advise"
            )
            self._record(read_rss() or info)
        if state.bytes_since_reopen >= policy.reopen_every:
            self._do("reopen-caches")  # HDF5 and Zarr drop what their libraries cache

    def _do(self, kind: ReleaseKind) -> None:
        state = self.state
        result = self._release(kind)
        if result.advise_calls or result.reopens:
            state.stats.releases += 1
        state.stats.advise_calls += result.advise_calls
        state.stats.advised_bytes += result.advised_bytes
        state.stats.reopens += result.reopens
        if kind != "advise":
            state.bytes_since_reopen = 0

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
            warnings.warn(
                "shardio cannot read RSS on this platform (/proc is missing); the memory "
                "budget falls back to reopening files every reopen_every bytes read",
                RuntimeWarning,
                stacklevel=4,
            )

    def stats(self) -> MemoryStats:
        """Current figures for this process (RSS read now)."""
        info = read_rss()
        if info is not None:
            self._record(info)
        return self.state.stats
