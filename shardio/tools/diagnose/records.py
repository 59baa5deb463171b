"""What a trace holds: one record per batch and memory samples per process.

Times are ``time.perf_counter()`` seconds. On Linux and macOS that clock is system-wide
(CLOCK_MONOTONIC / mach time), so times taken inside DataLoader workers line up with the
main process's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BatchRecord", "LoadTiming", "MemorySample", "MAIN_PROCESS", "READY_WAIT"]

READY_WAIT = 0.001
"""Seconds within which a batch counts as handed over at once."""

MAIN_PROCESS = -1
"""The worker id of batches loaded in the training loop's process (``num_workers=0``)."""


@dataclass
class LoadTiming:
    """Measured where the batch was loaded: travels with the batch from a worker."""

    worker: int
    pid: int
    start: float
    end: float
    samples: int | None = None
    arrive: float | None = None  # when the main process took it off the worker's queue
    memory: MemorySample | None = None
    cpu: float | None = None  # seconds the loading thread ran or waited for a CPU


@dataclass
class MemorySample:
    """A process's resident memory at one moment (and a shardio dataset's budget figures)."""

    t: float
    process: str  # "main" or "worker N"
    pid: int
    rss: int
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchRecord:
    """One batch's path: loaded (in a worker), copied (by a Prefetcher), waited for, used."""

    index: int
    pass_index: int
    ask: float  # the loop asked for the next batch
    got: float  # the loop received it
    worker: int | None = None  # DataLoader worker id, MAIN_PROCESS, or None when not known
    pid: int | None = None
    load_start: float | None = None
    load_end: float | None = None
    arrive: float | None = None
    copy_start: float | None = None
    copy_end: float | None = None
    step_end: float | None = None
    samples: int | None = None
    load_cpu: float | None = None  # seconds of the load on or waiting for a CPU

    @property
    def wait(self) -> float:
        return self.got - self.ask

    @property
    def step(self) -> float | None:
        return None if self.step_end is None else self.step_end - self.got

    @property
    def load(self) -> float | None:
        if self.load_start is None or self.load_end is None:
            return None
        return self.load_end - self.load_start

    @property
    def copy(self) -> float | None:
        if self.copy_start is None or self.copy_end is None:
            return None
        return self.copy_end - self.copy_start

    @property
    def ready(self) -> bool:
        """Whether the batch was ready when the loop asked: loaded (and copied) before it
        asked, or, where nothing is known of its loading, handed over within READY_WAIT."""
        done = self.copy_end if self.copy_end is not None else self.load_end
        return self.prompt if done is None else done <= self.ask

    @property
    def prompt(self) -> bool:
        """Whether the loop had the batch within READY_WAIT of asking."""
        return self.wait < READY_WAIT

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
