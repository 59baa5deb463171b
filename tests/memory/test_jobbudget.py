"""One budget for the job: max_rss="auto" / "total:SIZE" split between the main process
and each DataLoader worker, each learning its share when it first reads."""

from __future__ import annotations

import gc
import logging
import os

import numpy as np
import pytest
import torch
from fake_cgroups import FakeSystem
from torch.utils.data import DataLoader

import shardio
from shardio import MemoryPolicy, ShardedDataset, ShardWriter
from shardio.memory import JobUsage, joblimit, read_rss, split_job_budget
from shardio.memory.jobbudget import MIN_MARGIN, MIN_SHARE, default_margin
from shardio.memory.jobwatch import child_pids

GiB = 2**30
MiB = 2**20

pytestmark = pytest.mark.skipif(read_rss() is None, reason="needs /proc to measure RSS")


@pytest.fixture(autouse=True)
def no_real_limits(tmp_path, monkeypatch) -> FakeSystem:
    """Every test sees only the limits it sets: a fake cgroup tree without any, and no
    SLURM variables from the environment the tests run in."""
    system = FakeSystem(tmp_path / "fake")
    system.v2("/", {"/": ""})
    monkeypatch.setattr(joblimit, "PROC_ROOT", system.proc)
    monkeypatch.setattr(joblimit, "FS_ROOT", system.root)
    for name in ("SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU", "SLURM_CPUS_ON_NODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    torch.set_num_threads(1)
    return system


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("jobbudget") / "d.shardio")
    with ShardWriter(path, format="mmap", shard_size="128KB") as writer:
        writer.write_batch({"x": np.arange(512 * 1024, dtype=np.uint8).reshape(512, 1024)})
    return path


# ------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("workers", [0, 1, 4, 16])
def test_split_gives_every_process_an_equal_slot(workers: int) -> None:
    limit, in_use, baseline = 32 * GiB, 2 * GiB, 300 * MiB
    margin = default_margin(limit)
    main = split_job_budget(limit, in_use, workers)
    worker = split_job_budget(limit, in_use, workers, baseline=baseline)
    assert margin == int(0.1 * limit)
    assert main.slot == worker.slot == (limit - in_use - margin) // (workers + 1)
    assert main.share == main.slot and worker.share == worker.slot - baseline
    # The main process's RSS, each worker's at its start and every share fit the limit.
    assert in_use + main.share + workers * (baseline + worker.share) + margin <= limit
    assert main.workers == worker.workers == workers


def test_the_worked_slurm_example_of_the_docs() -> None:
    """#SBATCH --mem=32G, 2 GiB in the main process, 4 workers holding 300 MiB each."""
    split = split_job_budget(32 * GiB, 2 * GiB, 4, baseline=300 * MiB)
    assert split.margin == 3435973836  # 3.2 GiB
    assert split.slot == 5755256176  # (32 - 2 - 3.2) / 5 = 5.36 GiB
    assert split.share == split.slot - 300 * MiB


def test_small_limits_keep_the_minimum_margin() -> None:
    assert default_margin(GiB) == MIN_MARGIN


def test_a_limit_too_small_for_the_workers_is_a_clear_error() -> None:
    with pytest.raises(shardio.InvalidOptionError, match=r"16 DataLoader workers.*fewer workers"):
        split_job_budget(4 * GiB, GiB, 16, baseline=200 * MiB)
    with pytest.raises(shardio.InvalidOptionError, match="workers"):
        split_job_budget(4 * GiB, GiB, -1)


# ------------------------------------------------------------------ the policy
def test_auto_reads_slurm_and_logs_once(small, monkeypatch, caplog) -> None:
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "8192")
    caplog.set_level(logging.INFO, logger="shardio")
    ds = ShardedDataset(small, max_rss="auto")
    before = read_rss().rss
    ds.read_batch([0, 1])
    ds.read_batch([2, 3])
    stats = ds.memory_stats()
    lines = [r.getMessage() for r in caplog.records if r.name == "shardio"]
    assert len(lines) == 1
    assert "8.0 GiB from SLURM_MEM_PER_NODE=8192" in lines[0]
    assert "the main process alone" in lines[0]
    assert stats["job_limit"] == 8 * GiB and stats["job_limit_source"] == "SLURM_MEM_PER_NODE=8192"
    assert stats["workers"] == 0 and stats["job_margin"] == default_margin(8 * GiB)
    assert abs(stats["job_in_use"] - before) < 64 * MiB
    assert stats["budget"] == 8 * GiB - stats["job_in_use"] - stats["job_margin"]
    # The job is this process and its children (other tests may have left some).
    assert stats["job_processes"] == 1 + len(child_pids(os.getpid()))
    assert stats["job_rss"] > 0
    assert 0 < stats["job_pss"] <= stats["job_rss"]
    ds.close()


def test_total_size_is_split_the_same_way(small) -> None:
    ds = ShardedDataset(small, memory_policy=MemoryPolicy(max_rss="total:4GB", job_margin="1GB"))
    ds.read_batch([0])
    stats = ds.memory_stats()
    assert stats["job_limit"] == 4 * 10**9 and stats["job_limit_source"] == "max_rss='total:4GB'"
    assert stats["job_margin"] == 10**9
    assert stats["budget"] == 3 * 10**9 - stats["job_in_use"]


@pytest.mark.parametrize("value", ["total:lots", "total:0", "total:"])
def test_bad_total_names_the_option(value: str) -> None:
    with pytest.raises(shardio.InvalidOptionError, match="max_rss"):
        MemoryPolicy(max_rss=value)


def test_a_margin_without_a_job_budget_is_an_error() -> None:
    with pytest.raises(shardio.InvalidOptionError, match="job_margin applies to a job budget"):
        MemoryPolicy(max_rss="512MB", job_margin="1GB")
    with pytest.raises(shardio.InvalidOptionError, match="job_margin"):
        MemoryPolicy(max_rss="total:8GB", job_margin="lots")


def test_auto_without_a_limit_warns_and_reads_without_a_budget(small) -> None:
    with pytest.warns(RuntimeWarning, match=r"found no memory limit.*without a memory budget"):
        ds = ShardedDataset(small, max_rss="auto")
    assert ds.reader.memory_policy is None
    assert ds.read_batch([5])["x"][0, 0] == (5 * 1024) % 256
    assert ds.memory_stats()["budget"] is None


def test_auto_reads_a_cgroup_limit(small, tmp_path, monkeypatch) -> None:
    system = FakeSystem(tmp_path / "cg")
    system.v2("/job", {"/": "", "/job": str(6 * GiB)})
    monkeypatch.setattr(joblimit, "PROC_ROOT", system.proc)
    monkeypatch.setattr(joblimit, "FS_ROOT", system.root)
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "16384")  # higher: the cgroup's wins
    ds = ShardedDataset(small, max_rss="auto")
    ds.read_batch([0])
    stats = ds.memory_stats()
    assert stats["job_limit"] == 6 * GiB
    assert stats["job_limit_source"].startswith("cgroup v2 memory.max at ")


def test_local_ranks_share_the_node(small, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "32768")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    ds = ShardedDataset(small, max_rss="auto")
    ds.read_batch([0])
    stats = ds.memory_stats()
    assert stats["job_limit"] == 8 * GiB
    assert stats["job_limit_source"] == "SLURM_MEM_PER_NODE=32768 / LOCAL_WORLD_SIZE=4"


def test_each_share_reopens_at_four_times_itself(small) -> None:
    ds = ShardedDataset(small, max_rss="total:4GB")
    ds.read_batch([0])
    share = ds.reader.guard.state.policy
    assert share.reopen_every == 4 * share.max_rss
    given = ShardedDataset(small, memory_policy=MemoryPolicy("total:4GB", reopen_every="1GB"))
    given.read_batch([0])
    assert given.reader.guard.state.policy.reopen_every == 10**9


# --------------------------------------------------------- DataLoader workers
class StatsProbe(torch.utils.data.Dataset):
    """Returns, with each batch, what it read and the reading process's memory stats."""

    def __init__(self, ds: ShardedDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        first = int(self.ds.read_batch(indices)["x"][0, 0])
        return [{"first": first, "index": indices[0], **self.ds.memory_stats()}]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


def first_of(batch: list[dict]) -> dict:
    return batch[0]


def run_loader(ds: ShardedDataset, workers: int, context: str | None = None) -> list[dict]:
    loader = DataLoader(
        StatsProbe(ds),
        batch_size=16,
        num_workers=workers,
        multiprocessing_context=context if workers else None,
        collate_fn=first_of,
    )
    reports = list(loader)
    ds.close()
    assert [r["first"] for r in reports] == [(r["index"] * 1024) % 256 for r in reports]
    assert len(reports) == 512 // 16
    return reports


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("workers", [0, 1, 4, pytest.param(16, marks=pytest.mark.slow)])
def test_each_worker_learns_its_share_when_it_starts(small, monkeypatch, workers: int) -> None:
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "16384")
    ds = ShardedDataset(small, max_rss="auto")
    others = len(child_pids(os.getpid()))  # children other tests left (a resource tracker)
    reports = run_loader(ds, workers)
    last = {r["pid"]: r for r in reports}  # each process's latest figures
    assert len(last) == max(workers, 1)
    assert (os.getpid() in last) == (workers == 0)
    in_use = {r["job_in_use"] for r in last.values()}
    assert len(in_use) == 1  # one figure for the job: the main process's RSS
    slot = (16 * GiB - in_use.pop() - default_margin(16 * GiB)) // (workers + 1)
    for report in last.values():
        assert report["workers"] == workers
        baseline = report["baseline_rss"] if workers else 0
        assert report["budget"] == slot - baseline
        assert report["job_processes"] == workers + 1 + others


def test_the_first_read_in_the_main_process_fixes_the_figure_for_workers(
    small, monkeypatch
) -> None:
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "16384")
    ds = ShardedDataset(small, max_rss="auto")
    ds.read_batch([0])
    main_figure = ds.memory_stats()["job_in_use"]
    ballast = np.ones(64 * MiB, dtype=np.uint8)  # the main process grows after that
    reports = run_loader(ds, 2)
    assert {r["job_in_use"] for r in reports} == {main_figure}
    del ballast


@pytest.mark.slow  # spawned workers: seconds; forked ones learn theirs in the default run
def test_spawned_workers_learn_their_share(small, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "16384")
    ds = ShardedDataset(small, max_rss="auto")
    reports = run_loader(ds, 2, context="spawn")
    assert {r["workers"] for r in reports} == {2}
    assert len({r["pid"] for r in reports}) == 2
    for report in reports:
        assert report["budget"] < 16 * GiB // 3


# Under `-m slow`: after the error torch's shutdown waits 5 s for the worker before it
# terminates it. The default run checks the same split and message without workers
# (test_a_limit_too_small_for_the_workers_is_a_clear_error).
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_a_worker_without_room_fails_with_the_reason(small, monkeypatch) -> None:
    """A limit that holds the main process but not a worker beside it.

    One worker, not four: after the error torch's shutdown waits 5 s for each worker
    still waiting for indices before it terminates them."""
    in_use = read_rss().rss
    total = in_use + MIN_MARGIN + 2 * (2 * MIN_SHARE)
    ds = ShardedDataset(small, max_rss=f"total:{total}")
    with pytest.raises(shardio.InvalidOptionError, match="fewer workers"):
        run_loader(ds, 1)
    gc.collect()  # the iterator, held by the error's traceback: its worker stops now


@pytest.mark.slow  # samples every child the test session left (20 s in a full run)
def test_the_job_warning_reaches_memory_stats(small, caplog) -> None:
    """A job whose main process grows past 90% of the limit after reading starts."""
    caplog.set_level(logging.WARNING, logger="shardio")
    gc.collect()  # DataLoader iterators other tests left stop their workers now
    # Warns 32 MiB above the job's RSS now (children other tests left count too; the
    # ballast below outweighs any of them exiting meanwhile).
    total = int((JobUsage.sample(os.getpid(), pss=False).rss + 32 * MiB) / 0.9)
    policy = MemoryPolicy(max_rss=f"total:{total}", job_margin="8MB")
    ds = ShardedDataset(small, memory_policy=policy)
    ds.read_batch([0])
    assert ds.memory_stats()["job_warnings"] == 0
    ballast = np.ones(768 * MiB, dtype=np.uint8)
    stats = ds.memory_stats()
    assert stats["job_warnings"] == 1
    assert stats["job_rss"] >= 0.9 * total
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"the main process pid {os.getpid()} grew most" in record.getMessage()
    del ballast
    ds.close()


class CacheProbe(torch.utils.data.Dataset):
    """Returns the HDF5 chunk cache the reading process's shard reader was opened with,
    and the process's budget and starting RSS as its guard enforces them."""

    def __init__(self, ds: ShardedDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> tuple[int, int, int, int, int]:
        value = int(self.ds[index]["x"][0])
        shard, _ = self.ds.reader.index.locate(index)
        reader = self.ds.reader.shard(shard)
        stats = self.ds.memory_stats()
        cache = reader.backend_options["rdcc_nbytes"]
        return os.getpid(), cache, value, stats["budget"], stats["baseline_rss"]


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_worker_caches_fit_the_workers_slot_not_the_main_process(tmp_path, context) -> None:
    """HDF5 chunk caches are sized from the budget of the process that opens the file:
    a DataLoader worker of a job budget gets a slot of the job less its starting RSS,
    decided once in the worker, and its caches fit the very figure its guard enforces."""
    rows = np.arange(1024 * 1024, dtype=np.int32).reshape(-1, 16)  # 4 MiB
    with ShardWriter(tmp_path / "ds", format="hdf5", shard_size="16KB") as writer:
        writer.write_batch({"x": rows})
    # 8 GB: room for two forked workers of a large test process (their RSS at start
    # counts the pages they share with it); some 260 shards keep the caches in bounds.
    ds = ShardedDataset(tmp_path / "ds", max_rss="total:8GB")
    shards = len(ds.shard_lengths)
    assert shards > 200
    main_cache = ds.reader.reader_options["rdcc_nbytes"]
    assert 64 * 1024 < main_cache < 16 * MiB  # the test needs a cache between the bounds
    ds.read_batch([0])  # the main process reads first: the job's figure in use is fixed
    loader = DataLoader(
        CacheProbe(ds), batch_size=None, num_workers=2, multiprocessing_context=context,
        sampler=range(0, len(ds), 977),
    )  # fmt: skip
    seen = list(loader)
    assert [s[2] for s in seen] == [int(rows[i, 0]) for i in range(0, len(ds), 977)]
    caches = {pid: (cache, budget, baseline) for pid, cache, _, budget, baseline in seen}
    assert len(caches) == 2 and os.getpid() not in caches
    job = ds.reader.memory_policy.job
    slot = (8 * 10**9 - job.in_use - default_margin(8 * 10**9)) // 3
    for cache, budget, baseline in caches.values():
        assert budget == slot - baseline  # what the guard enforces: one figure
        assert cache == max(64 * 1024, budget // (shards * 8))
    assert max(cache for cache, _, _ in caches.values()) < main_cache / 2
