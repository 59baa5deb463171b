"""The memory budget: RSS measured from /proc stays under max_rss in every reading process."""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Iterator

import lmdb
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import shardio
from shardio import MemoryPolicy, ShardedDataset, ShardWriter
from shardio.memory import advise_range, find_mappings, read_rss
from shardio.storage.adapters.lmdb._adapter import OFFSETS_NAME

VALUE = 64 * 1024
SAMPLES = 4096  # 256 MiB of values: 4 times the budget, in 2 or 3 shards per format
BUDGET = 64 * 2**20
# Besides the budget, a process holds one batch being assembled and its copy
# (2 x 16 MiB) and allocator slack: the stated allowance.
ALLOWANCE = 48 * 2**20

pytestmark = pytest.mark.skipif(read_rss() is None, reason="needs /proc to measure RSS")


@pytest.fixture(scope="module")
def big_datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("big")
    paths = {fmt: str(root / f"{fmt}.shardio") for fmt in ("lmdb", "mmap")}
    rng = np.random.default_rng(0)
    with contextlib.ExitStack() as stack:  # the same random values in both formats
        writers = [
            stack.enter_context(ShardWriter(path, format=fmt, shard_size="128MB"))
            for fmt, path in paths.items()
        ]
        for _ in range(SAMPLES // 1024):
            batch = {"x": rng.integers(0, 255, (1024, VALUE), dtype=np.uint8)}
            for writer in writers:
                writer.write_batch(batch)
    return paths


class Watchdog:
    """Samples this process's RSS every 20 ms on a thread; remembers the peak growth."""

    def __init__(self) -> None:
        baseline = read_rss()
        assert baseline is not None
        self.baseline = baseline.rss
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        info = read_rss()
        assert info is not None
        self.peak = max(self.peak, info.rss - self.baseline)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.02)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()  # the end state counts even if the thread was starved
        self._stop.set()
        self._thread.join()


def random_batches(n: int, epochs: int, batch: int = 256) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(1)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch):
            yield order[start : start + batch]


@pytest.mark.slow
def test_raw_lmdb_loop_grows_rss_toward_the_data_size(big_datasets) -> None:
    """The control: without shardio, touched pages stay mapped (so the watchdog measures)."""
    shard = os.path.join(big_datasets["lmdb"], "shard-00000.lmdb")
    env = lmdb.open(shard, readonly=True, lock=False)
    count = env.stat()["entries"] - 1
    with Watchdog() as watchdog, env.begin(buffers=True) as txn:
        for index in np.random.default_rng(2).permutation(count).tolist():
            bytes(txn.get(index.to_bytes(8, "big")))
    env.close()
    assert watchdog.peak > 100 * 2**20  # one 128 MB shard: most of it resident


@pytest.mark.parametrize("fmt", ["lmdb", "mmap"])
def test_three_random_epochs_stay_under_the_budget(big_datasets, fmt: str) -> None:
    ds = ShardedDataset(big_datasets[fmt], max_rss=BUDGET)
    first = ds.read_batch([0])["x"][0].copy()
    with Watchdog() as watchdog:
        for batch in random_batches(len(ds), epochs=3):
            columns = ds.read_batch(batch)
            assert columns["x"].shape == (len(batch), VALUE)
    assert watchdog.peak <= BUDGET + ALLOWANCE, watchdog.peak / 2**20
    stats = ds.memory_stats()
    assert stats["bytes_read"] >= 3 * SAMPLES * VALUE
    assert stats["budget"] == BUDGET and stats["checks"] > 0
    np.testing.assert_array_equal(ds.read_batch([0])["x"][0], first)
    ds.close()


def test_lmdb_without_recorded_offsets_is_bounded_by_madvise(big_datasets, tmp_path) -> None:
    """A copied environment has no offsets table: the guard releases LMDB's map."""
    source = os.path.join(big_datasets["lmdb"], "shard-00000.lmdb")
    copy = str(tmp_path / "copy.lmdb")
    env = lmdb.open(source, readonly=True, lock=False)
    os.makedirs(copy)
    env.copy(copy, compact=True)
    env.close()
    assert not os.path.exists(os.path.join(copy, OFFSETS_NAME))
    ds = ShardedDataset(copy, max_rss=BUDGET)
    with Watchdog() as watchdog:
        for batch in random_batches(len(ds), epochs=2):
            ds.read_batch(batch)
    stats = ds.memory_stats()
    ds.close()
    assert stats["advise_calls"] > 0 and stats["releases"] > 0
    assert watchdog.peak <= BUDGET + ALLOWANCE + 32 * 2**20, watchdog.peak / 2**20


def test_stale_offsets_table_is_ignored(big_datasets, tmp_path) -> None:
    """Offsets that no longer match data.mdb must never return wrong bytes."""
    source = os.path.join(big_datasets["lmdb"], "shard-00001.lmdb")
    copy = tmp_path / "copy.lmdb"
    env = lmdb.open(source, readonly=True, lock=False)
    os.makedirs(copy)
    env.copy(str(copy), compact=True)
    env.close()
    offsets = np.load(os.path.join(source, OFFSETS_NAME))
    np.save(copy / OFFSETS_NAME, offsets + 4096)
    with ShardedDataset(source) as fresh:
        want = fresh.read_batch([0, 5, len(offsets) - 1])["x"]
    with ShardedDataset(copy, max_rss=BUDGET) as stale:
        got = stale.read_batch([0, 5, len(offsets) - 1])["x"]
    np.testing.assert_array_equal(got, want)


class StatsProbe(torch.utils.data.Dataset):
    """Returns, with each batch, the reading worker's own memory figures."""

    def __init__(self, ds: ShardedDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        columns = self.ds.read_batch(indices)
        stats = self.ds.memory_stats()
        return [
            {
                "sum": int(columns["x"][:, :64].sum()),
                "pid": stats["pid"],
                "peak": stats["peak_growth"],
                "bytes": stats["bytes_read"],
            }
        ]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


def test_each_dataloader_worker_enforces_its_own_budget(big_datasets) -> None:
    ds = ShardedDataset(big_datasets["mmap"], max_rss=BUDGET)
    loader = DataLoader(
        StatsProbe(ds), batch_size=256, shuffle=True, num_workers=2, collate_fn=lambda b: b[0]
    )
    reports = list(loader)
    pids = {r["pid"] for r in reports}
    assert len(pids) == 2 and os.getpid() not in pids
    for pid in pids:
        last = [r for r in reports if r["pid"] == pid][-1]
        assert last["bytes"] > 0
        assert last["peak"] <= BUDGET + ALLOWANCE, last["peak"] / 2**20
    want = sum(
        int(ShardedDataset(big_datasets["mmap"]).read_batch(range(i, i + 512))["x"][:, :64].sum())
        for i in range(0, SAMPLES, 512)
    )
    assert sum(r["sum"] for r in reports) == want


def test_advise_dontneed_drops_mapped_pages_and_keeps_data(tmp_path) -> None:
    path = tmp_path / "blob"
    data = np.random.default_rng(3).integers(0, 255, 64 * 2**20, dtype=np.uint8)
    data.tofile(path)
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    before = read_rss()
    view = np.frombuffer(mapping, np.uint8)
    assert int(view.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))
    touched = read_rss()
    assert touched.file - before.file > 32 * 2**20
    (region,) = find_mappings(str(path))
    advise_range(region.start, region.length, "dontneed")
    assert read_rss().file < touched.file - 32 * 2**20
    assert int(view[::4096].sum(dtype=np.int64)) == int(data[::4096].sum(dtype=np.int64))
    del view
    mapping.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_rss": 0}, "max_rss"),
        ({"max_rss": "lots"}, "max_rss"),
        ({"max_rss": "1GB", "check_every": 0}, "check_every"),
        ({"max_rss": "1GB", "release": "evict"}, "release"),
        ({"max_rss": "1GB", "access": "backwards"}, "access"),
    ],
)
def test_bad_policy_options(kwargs, message: str) -> None:
    with pytest.raises(shardio.InvalidOptionError, match=message):
        MemoryPolicy(**kwargs)


def test_max_rss_and_policy_together_is_an_error(big_datasets) -> None:
    with pytest.raises(shardio.InvalidOptionError, match="not both"):
        ShardedDataset(
            big_datasets["mmap"], max_rss="1GB", memory_policy=MemoryPolicy(max_rss="1GB")
        )


@pytest.mark.parametrize("fmt", ["hdf5", "zarr"])
def test_cache_holding_backends_reopen_and_read_the_same(tmp_path, fmt: str) -> None:
    data = np.arange(4000 * 256, dtype=np.float32).reshape(4000, 256)
    with ShardWriter(tmp_path / "d", format=fmt, shard_size="1MB") as writer:
        writer.write_batch({"x": data})
    policy = MemoryPolicy(max_rss="1MB", reopen_every="2MB")
    ds = ShardedDataset(tmp_path / "d", memory_policy=policy)
    for batch in random_batches(len(ds), epochs=2, batch=128):
        np.testing.assert_array_equal(ds.read_batch(batch)["x"], data[batch])
    assert ds.memory_stats()["reopens"] > 0


def test_small_mmap_fields_stay_mapped_under_a_budget(tmp_path) -> None:
    """Labels are read through the mapping (a syscall per row would cost more than the
    pages they can add); large fields with pread; both read back exactly."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, (2000, 4096), dtype=np.uint8)
    labels = np.arange(2000, dtype=np.int64) * 7
    with ShardWriter(tmp_path / "ds", format="mmap", shard_size="2MB") as writer:
        writer.write_batch({"x": data, "label": labels})
    budget = 64 * 2**20
    ds = ShardedDataset(tmp_path / "ds", max_rss=budget)
    shards = len(ds.shard_lengths)
    assert ds.reader.reader_options["map_below"] == budget // (16 * shards * 2)
    fields = ds.reader.shard(0).handle.fields
    assert fields["label"].data is not None and fields["label"].fd is None
    assert fields["x"].data is None and fields["x"].fd is not None
    order = rng.permutation(2000)
    columns = ds.read_batch(order)
    np.testing.assert_array_equal(columns["label"], labels[order])
    np.testing.assert_array_equal(columns["x"], data[order])
    strict = ShardedDataset(tmp_path / "ds", max_rss=budget, map_below=0)
    assert strict.reader.shard(0).handle.fields["label"].data is None
    np.testing.assert_array_equal(strict.read_batch(order)["label"], labels[order])
    given = ShardedDataset(tmp_path / "ds", max_rss=budget, map_below="4MB")
    assert given.reader.shard(0).handle.fields["x"].data is not None  # 2 MB files: mapped
    with pytest.raises(shardio.InvalidOptionError, match="map_below"):
        ShardedDataset(tmp_path / "ds", max_rss=budget, map_below="lots")[0]


def test_hdf5_chunk_caches_share_the_budget_across_shards(tmp_path) -> None:
    """Each open file has a chunk cache per dataset: 32 shards with 16 MiB caches once
    grew a 256 MB budget's process by 530 MiB. All caches together get 1/8 of it."""
    with ShardWriter(tmp_path / "ds", format="hdf5", shard_size="64KB") as writer:
        writer.write_batch({"x": np.arange(20 * 1024 * 16, dtype=np.int32).reshape(-1, 64)})
    budget = 64 * 2**20
    ds = ShardedDataset(tmp_path / "ds", max_rss=budget)
    shards = len(ds.shard_lengths)
    assert shards >= 20
    cache = ds.reader.reader_options["rdcc_nbytes"]
    assert cache == max(64 * 1024, budget // (8 * shards))
    assert cache * shards <= budget // 8
    # One row from each of many shards (a random batch over many shards) reads right.
    first_rows = [int(s) for s in ds.reader.index.starts[:-1]]
    np.testing.assert_array_equal(
        ds.read_batch(first_rows)["x"][:, 0], np.array(first_rows, dtype=np.int32) * 64
    )
