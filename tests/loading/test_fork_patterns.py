"""Every process pattern users hit: one dataset opened many times, read in the parent,
then forked, spawned or forkserver workers, persistent workers, two loaders, threads.

The rule these tests pin down: handles belong to the process (and are shared by its
threads); a child never uses an inherited handle, and LMDB never holds the same
environment twice in one process.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from torch.utils.data import DataLoader

from shardio import ShardedDataset, ShardWriter

N = 120
FORMATS = ("lmdb", "hdf5", "zarr", "mmap")


def _write(path: str, format: str) -> dict[str, np.ndarray]:
    columns = {
        "x": np.arange(N * 3, dtype=np.int64).reshape(N, 3),
        "blob": [bytes([i % 251]) * (i % 9) for i in range(N)],
    }
    with ShardWriter(path, format=format, shard_size="1KB") as writer:
        writer.write_batch(columns)
    return columns


def _read_all(loader: DataLoader) -> list[int]:
    seen: list[int] = []
    for batch in loader:
        seen.extend((batch["x"][:, 0] // 3).tolist())
    return seen


@pytest.fixture(params=FORMATS)
def dataset_path(request: pytest.FixtureRequest, tmp_path) -> tuple[str, str]:
    path = str(tmp_path / f"ds-{request.param}")
    _write(path, request.param)
    return path, request.param


def test_opened_twice_then_forked_workers(dataset_path: tuple[str, str]) -> None:
    path, _ = dataset_path
    first = ShardedDataset(path)
    assert first[5]["x"].tolist() == [15, 16, 17]
    second = ShardedDataset(path)  # a validation set over the same files, say
    assert second[7]["x"].tolist() == [21, 22, 23]
    loader = DataLoader(second, batch_size=16, num_workers=2, multiprocessing_context="fork")
    assert sorted(_read_all(loader)) == list(range(N))
    assert first[9]["x"].tolist() == [27, 28, 29]  # the parent's handles still work


# Both under `-m slow` (seconds each); the default run spawns LMDB workers in
# tests/loading/test_dataset_batches.py::test_spawned_workers_equal_read_batch.
@pytest.mark.slow
@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_lmdb_opened_twice_then_spawned_workers(tmp_path, context: str) -> None:
    path = str(tmp_path / "ds")
    _write(path, "lmdb")
    first, second = ShardedDataset(path), ShardedDataset(path)
    assert first[1]["x"][0] == 3 and second[2]["x"][0] == 6
    loader = DataLoader(second, batch_size=32, num_workers=2, multiprocessing_context=context)
    assert sorted(_read_all(loader)) == list(range(N))


def test_lmdb_single_shard_opened_twice_then_forked(tmp_path) -> None:
    path = str(tmp_path / "ds")
    _write(path, "lmdb")
    shard = f"{path}/shard-00000.lmdb"
    first, second = ShardedDataset(shard), ShardedDataset(shard)
    assert first[0]["x"][0] == 0 and second[1]["x"][0] == 3
    loader = DataLoader(second, batch_size=4, num_workers=2, multiprocessing_context="fork")
    assert sorted(_read_all(loader)) == list(range(len(second)))


def test_persistent_workers_over_epochs_and_two_loaders(tmp_path) -> None:
    path = str(tmp_path / "ds")
    _write(path, "lmdb")
    ds = ShardedDataset(path)
    ds[0]
    persistent = DataLoader(
        ds, batch_size=10, num_workers=2, persistent_workers=True, multiprocessing_context="fork"
    )
    other = DataLoader(ds, batch_size=25, num_workers=1, multiprocessing_context="fork")
    for _ in range(2):
        assert sorted(_read_all(persistent)) == list(range(N))
    # Two loaders over one dataset, iterated in alternation.
    got_a: list[int] = []
    got_b: list[int] = []
    for batch_a, batch_b in zip(persistent, other, strict=False):
        got_a.extend((batch_a["x"][:, 0] // 3).tolist())
        got_b.extend((batch_b["x"][:, 0] // 3).tolist())
    assert got_b == list(range(N))
    assert len(got_a) == 10 * 5  # zip stops with the shorter loader (5 batches of 25)


@pytest.mark.parametrize("format", FORMATS)
def test_threads_share_one_dataset(tmp_path, format: str) -> None:
    path = str(tmp_path / "ds")
    columns = _write(path, format)
    ds = ShardedDataset(path)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            order = np.random.default_rng(seed).permutation(N)
            got: list[int] = []
            for start in range(0, N, 7):
                batch = ds.read_batch(order[start : start + 7])
                assert batch["blob"] == [columns["blob"][i] for i in order[start : start + 7]]
                got.extend((batch["x"][:, 0] // 3).tolist())
            results[seed] = got
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == [0, 1, 2, 3]
    for seed, got in results.items():
        assert got == np.random.default_rng(seed).permutation(N).tolist()
