"""The shard cache shared by real processes: DataLoader workers (fork and spawn), two
independent jobs, and jobs killed with SIGKILL in the middle of a download."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from shardio import ShardedDataset, ShardWriter
from shardio.storage.cache import CacheStore

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
torch = pytest.importorskip("torch")
from shardio.tools.testing.objectstore import FaultProxy, S3Server  # noqa: E402

JOB = os.path.join(os.path.dirname(os.path.dirname(__file__)), "cache_job.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


BUCKET = "cache-procs"  # the s3 fixture (tests/storage/conftest.py) makes it


def _dataset(s3: S3Server, tmp_path, fmt: str, rows: int, shard_size: str, key: str):
    data = np.random.default_rng(len(key)).standard_normal((rows, 8)).astype(np.float32)
    local = str(tmp_path / f"{key}.local")
    with ShardWriter(local, format=fmt, shard_size=shard_size) as writer:
        writer.write_batch({"x": data})
    return s3.upload(local, key), data


def _job(url: str, proxy: FaultProxy, cache: str, limit: str = "100MB") -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.Popen(
        [sys.executable, JOB, url, proxy.endpoint, cache, limit],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _result(job: subprocess.Popen[str]) -> dict:
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _leftovers(cache: str) -> list[str]:
    """Downloads in progress or evictions half done anywhere in ``cache``."""
    found = []
    for key in os.listdir(cache):
        for sub in ("tmp", "trash"):
            path = os.path.join(cache, key, sub)
            if os.path.isdir(path):
                found += [os.path.join(path, name) for name in os.listdir(path)]
    return found


def _read_all(loader) -> np.ndarray:
    return np.concatenate([batch["x"].numpy() for batch in loader])


@pytest.mark.parametrize(
    "fmt,context",
    [
        ("lmdb", "fork"),
        pytest.param("mmap", "spawn", marks=pytest.mark.slow),
        pytest.param("hdf5", "fork", marks=pytest.mark.slow),
        pytest.param("zarr", "forkserver", marks=pytest.mark.slow),
    ],
)
def test_dataloader_workers_share_the_cache(s3, proxy, tmp_path, fmt, context) -> None:
    torch.set_num_threads(1)
    url, data = _dataset(s3, tmp_path, fmt, 800, "8KB", f"workers-{fmt}-{context}")
    cache = str(tmp_path / "cache")
    options = s3.options(proxy.endpoint)
    ds = ShardedDataset(url, storage_options=options, cache_dir=cache, cache_limit="50MB")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=50, num_workers=2, multiprocessing_context=context
    )
    np.testing.assert_array_equal(_read_all(loader), data)
    gets = proxy.object_gets(f"/cache-procs/workers-{fmt}-{context}/shard-")
    assert len(gets) >= len(ds.shard_lengths) > 2 and set(gets.values()) == {1}
    assert _leftovers(cache) == []
    ds.close()


@pytest.mark.slow  # DataLoader workers share a cache in the default run
def test_two_jobs_download_each_shard_once(s3, proxy, tmp_path) -> None:
    url, data = _dataset(s3, tmp_path, "mmap", 2000, "16KB", "two-jobs")
    cache = str(tmp_path / "cache")
    proxy.latency_s = 0.02  # the jobs overlap: both want the same shards at once
    jobs = [_job(url, proxy, cache) for _ in range(2)]
    results = [_result(job) for job in jobs]
    expected = float(data.astype(np.float64).sum())
    assert [r["sum"] for r in results] == pytest.approx([expected, expected])
    gets = proxy.object_gets("/cache-procs/two-jobs/shard-")
    assert len(gets) > 4 and set(gets.values()) == {1}  # one download per file, node-wide
    assert sum(r["cache"]["downloads"] for r in results) * 2 == sum(gets.values())
    assert _leftovers(cache) == []


def _wait_for_download(cache: str, job: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(os.listdir(p) for p in _tmp_dirs(cache)):
        assert job.poll() is None, job.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no download started"
        time.sleep(0.05)


def _tmp_dirs(cache: str) -> list[str]:
    if not os.path.isdir(cache):
        return []
    return [
        os.path.join(cache, k, "tmp")
        for k in os.listdir(cache)
        if os.path.isdir(os.path.join(cache, k, "tmp"))
    ]


def test_kill_during_a_download_leaves_nothing_behind(s3, proxy, tmp_path) -> None:
    url, data = _dataset(s3, tmp_path, "lmdb", 3000, "200KB", "killed")
    cache = str(tmp_path / "cache")
    proxy.bandwidth = 40_000  # a shard takes seconds: the kill lands inside one
    job = _job(url, proxy, cache)
    _wait_for_download(cache, job)
    job.send_signal(signal.SIGKILL)
    job.wait(10)
    assert _leftovers(cache)  # the partial download it left
    proxy.bandwidth = 0
    with ShardedDataset(url, storage_options=s3.options(proxy.endpoint), cache_dir=cache) as ds:
        np.testing.assert_array_equal(ds.read_batch(np.arange(len(data)))["x"], data)
    assert _leftovers(cache) == []
    entries = CacheStore(cache, 10**9).entries()
    assert len(entries) == len(ds.shard_lengths) and not any(e.in_use for e in entries)


@pytest.mark.slow
def test_kill_of_one_of_two_jobs(s3, proxy, tmp_path) -> None:
    url, data = _dataset(s3, tmp_path, "mmap", 6000, "32KB", "one-killed")
    cache = str(tmp_path / "cache")
    proxy.bandwidth = 200_000
    victim, survivor = _job(url, proxy, cache, "120KB"), _job(url, proxy, cache, "120KB")
    _wait_for_download(cache, victim)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    expected = float(data.astype(np.float64).sum())
    assert _result(survivor)["sum"] == pytest.approx(expected)
    proxy.bandwidth = 0
    assert _result(_job(url, proxy, cache, "120KB"))["sum"] == pytest.approx(expected)
    assert _leftovers(cache) == []
    assert CacheStore(cache, 1).used() <= 120_000


def _rank_main(rank: int, init_file: str, out_dir: str, url: str, options: dict, cache: str):
    import torch.distributed as dist

    from shardio import ShardSampler

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        ds = ShardedDataset(url, storage_options=options, cache_dir=cache, cache_limit="50MB")
        sampler = ShardSampler(ds, seed=3, window="16KB")  # rank and world from dist
        loader = torch.utils.data.DataLoader(
            ds, batch_size=25, sampler=sampler, num_workers=1, multiprocessing_context="fork"
        )
        rows = {}
        for indices, batch in zip(
            torch.utils.data.BatchSampler(sampler, 25, False), loader, strict=True
        ):
            for index, row in zip(indices, batch["x"].tolist(), strict=True):
                rows[index] = row
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(rows, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_share_one_cache(s3, proxy, tmp_path) -> None:
    import torch.multiprocessing as mp

    url, data = _dataset(s3, tmp_path, "lmdb", 600, "8KB", "gloo-ranks")
    cache = str(tmp_path / "cache")
    args = (str(tmp_path / "init"), str(tmp_path), url, s3.options(proxy.endpoint), cache)
    mp.spawn(_rank_main, args=args, nprocs=2, join=True)
    rows: dict[int, list[float]] = {}
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as handle:
            found = {int(k): v for k, v in json.load(handle).items()}
        assert not set(found) & set(rows)  # no sample read by both ranks
        rows.update(found)
    assert sorted(rows) == list(range(600))
    np.testing.assert_array_equal(np.array([rows[i] for i in range(600)]), data)
    gets = proxy.object_gets("/cache-procs/gloo-ranks/shard-")
    assert len(gets) > 4 and set(gets.values()) == {1}


@pytest.mark.slow
def test_kills_while_evicting_leave_nothing_behind(s3, proxy, tmp_path) -> None:
    # Zarr shards of many small chunk files: removing one takes a while, and a cache of
    # about two shards evicts at nearly every shard, so kills land in evictions too.
    data = np.random.default_rng(5).standard_normal((4000, 8)).astype(np.float32)
    local = str(tmp_path / "evicted.local")
    with ShardWriter(local, format="zarr", shard_size="24KB", max_chunk_rows=8) as writer:
        writer.write_batch({"x": data})
    url = s3.upload(local, "evicted")
    with ShardedDataset(local) as probe:
        limit = str(int(2.5 * max(probe.shard_nbytes)))
    cache = str(tmp_path / "cache")
    rng = np.random.default_rng(0)
    for _ in range(4):
        job = _job(url, proxy, cache, limit)
        _wait_for_download(cache, job)
        time.sleep(float(rng.uniform(0.2, 1.5)))
        job.send_signal(signal.SIGKILL)
        job.wait(10)
    result = _result(_job(url, proxy, cache, limit))
    assert result["sum"] == pytest.approx(float(data.astype(np.float64).sum()))
    assert _leftovers(cache) == []
    assert CacheStore(cache, 1).used() <= int(limit)
