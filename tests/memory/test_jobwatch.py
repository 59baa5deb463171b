"""Job-wide accounting: RSS and PSS summed over real child processes, and the warning
that names the process that grows."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator

import pytest

from shardio.memory import JobUsage, JobWatch, read_pss
from shardio.memory.jobwatch import _scan_children, child_pids

MiB = 2**20

pytestmark = pytest.mark.skipif(
    read_pss() is None, reason="needs /proc/PID/smaps_rollup (Linux 4.14+)"
)


def _hold(size: int, ready, release) -> None:
    ballast = bytearray(os.urandom(1024)) * (size // 1024)  # resident, not shared
    ready.set()
    release.wait(60)
    del ballast


class Children:
    """Forked children that each hold ``size`` bytes until released."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("fork")
        self.processes: list = []
        self.release = self.ctx.Event()

    def start(self, size: int) -> int:
        ready = self.ctx.Event()
        process = self.ctx.Process(target=_hold, args=(size, ready, self.release))
        process.start()
        assert ready.wait(60)
        self.processes.append(process)
        return process.pid

    def stop(self) -> None:
        self.release.set()
        for process in self.processes:
            process.join(30)


@pytest.fixture
def children() -> Iterator[Children]:
    found = Children()
    yield found
    found.stop()


def test_children_are_found_both_ways(children) -> None:
    pids = {children.start(MiB), children.start(MiB)}
    assert pids <= set(child_pids(os.getpid()))
    assert pids <= set(_scan_children(os.getpid()))


def test_sums_count_every_process(children) -> None:
    before = JobUsage.sample(os.getpid())
    big = children.start(96 * MiB)
    usage = JobUsage.sample(os.getpid())
    assert usage.processes[0].pid == os.getpid()
    assert big in {p.pid for p in usage.processes}
    assert usage.rss - before.rss >= 96 * MiB
    assert usage.rss == sum(p.rss for p in usage.processes)
    # Pages the fork shares with this process count once in PSS, in each RSS.
    assert usage.pss is not None and usage.pss < usage.rss
    assert usage.pss - before.pss >= 90 * MiB


def test_the_warning_names_the_process_that_grows(children, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="shardio")
    small = children.start(MiB)
    start = JobUsage.sample(os.getpid())
    watch = JobWatch(os.getpid(), limit=int((start.rss + 64 * MiB) / 0.9), interval=60)
    watch.check()
    assert watch.warnings == 0 and not caplog.records
    big = children.start(128 * MiB)
    watch.check()  # first sight of the new child: it grew from nothing
    assert watch.warnings == 1
    (record,) = caplog.records
    message = record.getMessage()
    assert f"DataLoader worker pid {big} grew most" in message
    assert "of its" in message and "PSS" in message
    watch.check()  # still near the limit: no second warning
    assert watch.warnings == 1
    assert small != big


def test_the_main_process_is_named_when_it_grows(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="shardio")
    start = JobUsage.sample(os.getpid())
    watch = JobWatch(os.getpid(), limit=int((start.rss + 32 * MiB) / 0.9), interval=60)
    watch.check()
    ballast = bytearray(os.urandom(1024)) * (64 * 1024)
    watch.check()
    assert f"the main process pid {os.getpid()} grew most" in caplog.records[-1].getMessage()
    del ballast


def test_checks_are_rate_limited() -> None:
    watch = JobWatch(os.getpid(), limit=2**50, interval=60)
    assert watch.maybe_check() is not None
    assert watch.maybe_check() is None
