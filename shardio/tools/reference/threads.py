"""How many intra-op threads torch gets for the demo: chosen, not inherited.

NOTE: torch's default is one intra-op thread per core, and its OpenMP threads spin while
they wait for each other at the end of every parallel op. On a machine whose cores are
already busy (other jobs, the DataLoader workers) a parallel op then ends only when the
slowest of its threads gets the CPU back from the scheduler, so each of the demo's many
small ops can wait a whole time slice: a 2-core machine at load 5-12 ran the demo 7x
slower with torch's default than with one thread. The model is small (d_model 128), so
threads beyond the idle cores buy little even on a quiet machine. The default is
therefore the cores idle right now (usable cores minus the 1-minute load average,
rounded), at least 1 and at most 4; ``--threads N``, or ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` set by the user, override it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from shardio.core.cpus import usable_cores
from shardio.core.errors import InvalidOptionError

__all__ = ["ThreadChoice", "choose_threads", "idle_cores"]

MAX_DEFAULT_THREADS = 4
_USER_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    """A number of torch intra-op threads and why it was chosen (for the log)."""

    threads: int
    reason: str


def idle_cores() -> tuple[int, float]:
    """(cores this process may run on, the 1-minute load average; 0.0 where unknown)."""
    usable = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return usable, load


def choose_threads(requested: int | None = None) -> ThreadChoice:
    """The threads to use: ``requested`` (``--threads``), else the user's environment
    variable, else the idle cores (see the module docstring)."""
    if requested is not None:
        if requested < 1:
            raise InvalidOptionError(f"--threads should be >= 1, but got --threads {requested}")
        return ThreadChoice(requested, "--threads")
    for name in _USER_VARIABLES:
        if os.environ.get(name, "").strip():
            # torch read the variable at start-up; keep what it made of it.
            return ThreadChoice(torch.get_num_threads(), f"{name}={os.environ[name]}")
    usable, load = idle_cores()
    threads = max(1, min(MAX_DEFAULT_THREADS, round(usable - load)))
    return ThreadChoice(
        threads,
        f"{usable} usable cores at load {load:.1f}; --threads N or OMP_NUM_THREADS overrides",
    )
