"""shardio.tools.bench: RSS sampling, page-cache control, raw loops, runner and reports."""

from __future__ import annotations

import json
import mmap
import os
from typing import Any

import numpy as np
import pytest

from shardio import ShardedDataset, ShardWriter
from shardio.core.errors import InvalidOptionError
from shardio.tools.bench import (
    BenchConfig,
    RssSampler,
    cache_state,
    dataset_files,
    drop_cache,
    raw_reader,
    read_rss,
    run_bench,
    write_json,
    write_plot,
)
from shardio.tools.bench.cache import COLD_FRACTION, resident_bytes
from shardio.tools.bench.report import JSON_KEYS, RUN_KEYS, format_table
from shardio.tools.bench.runner import epoch_plans
from shardio.tools.bench.synthetic import write_synthetic

FORMATS = ("lmdb", "hdf5", "zarr", "mmap")
MiB = 2**20


def _columns(n: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((n, 3, 4)).astype(np.float32),
        "label": np.arange(n, dtype=np.int64),
        "blob": [bytes(rng.integers(0, 256, size=i % 11, dtype=np.uint8)) for i in range(n)],
        "seq": [np.arange(i % 6, dtype=np.int32) * i for i in range(n)],
    }


@pytest.fixture(scope="module", params=FORMATS)
def mixed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 3-shard dataset with fixed and variable-length fields, per backend."""
    path = str(tmp_path_factory.mktemp("mixed") / f"mixed-{request.param}.shardio")
    with ShardWriter(path, format=request.param, shard_size="4KB") as writer:
        writer.write_batch(_columns(150))
    assert len(ShardedDataset(path).shard_lengths) >= 3
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("small") / "small.shardio")
    return write_synthetic(path, "mmap", 1200, 1024, shard_size="400KB")


# ----------------------------------------------------------------------- RSS
def test_read_rss_reports_parts() -> None:
    reading = read_rss()
    assert reading.rss > 0
    assert reading.anon > 0 and reading.file > 0
    assert reading.anon + reading.file + max(reading.shmem, 0) == reading.rss


def test_sampler_sees_an_allocation_grow_rss() -> None:
    with RssSampler(interval=0.005) as sampler:
        block = np.ones(96 * MiB, dtype=np.uint8)  # np.ones writes every page
        sampler.sample()
        del block
    samples = sampler.samples
    assert len(samples) >= 3
    series = sampler.series("main")
    assert series.growth >= 80 * MiB
    assert int(samples["anon"].max()) - int(samples["anon"][0]) >= 80 * MiB


def test_sampler_sees_rss_file_grow_when_a_mapping_is_touched(tmp_path: Any) -> None:
    path = tmp_path / "mapped.bin"
    path.write_bytes(np.arange(48 * MiB // 8, dtype=np.int64).tobytes())
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        with RssSampler(interval=0.005) as sampler:
            pages = np.frombuffer(mapping, dtype=np.uint8)[:: mmap.PAGESIZE]
            assert int(pages.sum()) >= 0  # touches one byte of every page
            sampler.sample()
            del pages
        samples = sampler.samples
        assert int(samples["file"].max()) - int(samples["file"][0]) >= 40 * MiB
    finally:
        mapping.close()


def test_sampler_writes_every_sample_to_its_file(tmp_path: Any) -> None:
    from shardio.tools.bench.rss import RSS_DTYPE

    target = str(tmp_path / "x-w0-1.rss")
    sampler = RssSampler(interval=0.005, path=target).start()
    sampler.sample()
    taken = sampler.stop()
    stored = np.fromfile(target, dtype=RSS_DTYPE)
    assert len(stored) == len(taken) >= 3
    assert np.array_equal(stored, taken)


def test_sampler_rejects_a_bad_interval() -> None:
    with pytest.raises(InvalidOptionError, match="interval"):
        RssSampler(interval=0)


def test_worker_rss_samples_reach_the_main_process(small: str) -> None:
    config = BenchConfig(workers=(2,), epochs=2, batch_size=100, ceiling=False, interval=0.005)
    report = run_bench(small, config)
    (run,) = report.runs
    assert sorted(run.worker_rss) == [0, 1]
    pids = set()
    for worker in run.worker_rss.values():
        assert len(worker.samples) >= 1
        assert worker.baseline > 0 and worker.peak >= worker.baseline
        pids.update(worker.pids)
    assert len(pids) == 2 and os.getpid() not in pids  # one persistent process per worker
    assert len(run.main.samples) >= 2
    assert run.samples == 2 * 1200


# --------------------------------------------------------------------- cache
def test_drop_cache_advises_every_shard_file(mixed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = ShardedDataset(mixed)
    files = dataset_files(ds)
    ds.close()
    on_disk = {
        os.path.join(d, f)
        for shard in ds.reader.shard_paths
        for d, _, names in (os.walk(shard) if os.path.isdir(shard) else [("", [], [shard])])
        for f in names
    }
    # Every file holding samples is listed (LMDB's data.mdb, every Zarr chunk, ...).
    data_files = {f for f in on_disk if not f.endswith((".json", "lock.mdb"))}
    assert data_files <= set(files)
    advised: list[str] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED and (offset, length) == (0, 0)
        advised.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    state = drop_cache(files)
    assert sorted(advised) == sorted(os.path.realpath(f) for f in files)
    assert state.dropped and state.files == len(files)


def test_cache_state_tells_warm_from_cold(tmp_path: Any) -> None:
    path = str(tmp_path / "data.bin")
    with open(path, "wb") as handle:
        handle.write(os.urandom(4 * MiB))
    with open(path, "rb") as handle:
        handle.read()
    warm = cache_state([path])
    assert warm.nbytes == 4 * MiB
    if warm.resident_bytes is None:
        pytest.skip("mincore is not available here")
    assert warm.label == "warm" and resident_bytes(path) == 4 * MiB
    cold = drop_cache([path])
    assert cold.resident_fraction is not None and cold.resident_fraction < COLD_FRACTION
    assert cold.label == "cold"


def test_cold_run_drops_the_cache_before_every_epoch(
    small: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardio.tools.bench import runner

    calls: list[list[str]] = []
    real = runner.drop_cache

    def record(files: list[str]) -> Any:
        calls.append(list(files))
        return real(files)

    monkeypatch.setattr(runner, "drop_cache", record)
    config = BenchConfig(workers=(0,), epochs=2, cache="cold", ceiling=False)
    (run,) = run_bench(small, config).runs
    assert len(calls) == 2
    ds = ShardedDataset(small)
    assert calls[0] == dataset_files(ds)
    assert all(e.cache.dropped for e in run.epochs)
    assert run.cache_label in ("cold", "dropped")


# ----------------------------------------------------------------------- raw
def test_raw_loops_read_the_same_values_as_shardio(mixed: str) -> None:
    ds = ShardedDataset(mixed)
    indices = np.random.default_rng(1).permutation(len(ds))[:60]
    expected = [ds[i] for i in indices.tolist()]
    ds.close()  # py-lmdb opens an environment once per process: shardio lets go first
    raw = raw_reader(ds)
    for want, looped, index in zip(expected, raw.read_loop(indices), indices.tolist(), strict=True):
        _assert_same(want, looped)
        _assert_same(want, raw.read(index))
    raw.close()


def test_raw_loop_reads_a_foreign_hdf5_file(tmp_path: Any) -> None:
    import h5py

    path = str(tmp_path / "plain.h5")
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=np.arange(40 * 6, dtype=np.float64).reshape(40, 6))
        file.create_group("meta").create_dataset("y", data=np.arange(40) * 3)
    ds = ShardedDataset(path)
    expected = {i: ds[i] for i in (0, 17, 39)}
    ds.close()  # h5py refuses a second open of one file with other locking flags
    raw = raw_reader(ds)
    for index, want in expected.items():
        _assert_same(want, raw.read(index))
    raw.close()


def _assert_same(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert set(expected) == set(actual)
    for name, value in expected.items():
        if isinstance(value, bytes):
            assert actual[name] == value, name
        else:
            assert np.array_equal(np.asarray(actual[name]), value), name


# -------------------------------------------------------------------- runner
def test_config_validates_options() -> None:
    with pytest.raises(InvalidOptionError, match="workers should be >= 0"):
        BenchConfig(workers=(0, -1))
    with pytest.raises(InvalidOptionError, match="batch_size"):
        BenchConfig(batch_size=0)
    with pytest.raises(InvalidOptionError, match="order"):
        BenchConfig(order="backwards")  # type: ignore[arg-type]
    assert BenchConfig(max_rss=("512MB", None)).max_rss == (512 * 10**6, None)


@pytest.mark.parametrize(
    "fmt", [f if f == "mmap" else pytest.param(f, marks=pytest.mark.slow) for f in FORMATS]
)
def test_compare_raw_reports_a_ratio(fmt: str, tmp_path: Any) -> None:
    path = write_synthetic(str(tmp_path / f"d-{fmt}.shardio"), fmt, 600, 512, shard_size="100KB")
    config = BenchConfig(workers=(0,), epochs=1, batch_size=64, compare_raw=True, ceiling=False)
    report = run_bench(path, config)
    shardio_run, raw_run = report.runs
    assert (shardio_run.loader, raw_run.loader) == ("shardio", "raw")
    assert shardio_run.samples == raw_run.samples == 600
    assert shardio_run.nbytes == raw_run.nbytes == 600 * 512
    assert shardio_run.raw_ratio is not None and shardio_run.raw_ratio > 0
    assert raw_run.raw_ratio is None


def test_sequential_order_and_sample_limit(small: str) -> None:
    config = BenchConfig(order="sequential", samples=250, epochs=1, batch_size=100, ceiling=False)
    (run,) = run_bench(small, config).runs
    assert run.samples == 250
    assert [e.samples for e in run.epochs] == [250]


def test_shard_window_order_is_the_samplers_with_readahead(tmp_path: Any) -> None:
    from shardio import ShardSampler

    path = write_synthetic(str(tmp_path / "sw"), "mmap", 600, 1024, shard_size="64KB")
    config = BenchConfig(
        order="shard-window",
        window="128KB",
        epochs=2,
        batch_size=50,
        ceiling=False,
        compare_raw=True,
    )
    assert config.window == 128_000
    assert BenchConfig(order="shard-window", max_rss=(None, "64MB")).window == 32_000_000
    report = run_bench(path, config)
    shardio_run, raw_run = report.runs
    assert [e.samples for e in shardio_run.epochs] == [600, 600]
    assert [e.samples for e in raw_run.epochs] == [600, 600]
    assert shardio_run.order == raw_run.order == "shard-window"
    assert shardio_run.memory_stats is not None
    if hasattr(os, "posix_fadvise"):  # every block hinted once per epoch, by shardio only
        assert shardio_run.memory_stats["readahead_bytes"] == 2 * 600 * 1024
    ds = ShardedDataset(path)
    sampler = ShardSampler(ds, order="shard-window", window=128_000, seed=0)
    plans = epoch_plans(ds, config)
    for epoch, plan in enumerate(plans):
        assert plan.indices.tolist() == sampler.indices(epoch).tolist()
    with pytest.raises(InvalidOptionError, match="window"):
        BenchConfig(order="shard-window", window="lots")


def test_json_report_has_the_documented_keys(small: str, tmp_path: Any) -> None:
    config = BenchConfig(workers=(0, 1), epochs=1, compare_raw=True, ceiling_bytes=MiB)
    report = run_bench(small, config, command="shardio bench small")
    target = tmp_path / "out.json"
    write_json(report, target)
    data = json.loads(target.read_text())
    assert tuple(data) == JSON_KEYS
    assert data["dataset"]["num_samples"] == 1200 and data["dataset"]["format"] == "mmap"
    assert data["machine"]["cpu_count"] == os.cpu_count()
    assert data["ceiling"]["memcpy_bytes_per_s"] > 0
    assert [r["name"] for r in data["runs"]] == ["shardio w0", "raw w0", "shardio w1", "raw w1"]
    for run in data["runs"]:
        assert tuple(run) == RUN_KEYS
        assert set(run["rss"]["main"]) >= {"baseline_bytes", "peak_bytes", "growth_bytes"}
        assert run["epochs"][0]["cache"]["state"] in ("warm", "cold", "dropped", "unknown")
        assert run["fraction_of_ceiling"] is not None
    assert list(data["runs"][2]["rss"]["workers"]) == ["0"]
    table = format_table(report)
    assert "shardio w1" in table and "samples/s" in table and "ceiling" in table


@pytest.mark.slow
def test_plot_is_a_png(small: str, tmp_path: Any) -> None:
    config = BenchConfig(workers=(0, 1), epochs=1, ceiling=False)
    report = run_bench(small, config)
    target = tmp_path / "plot.png"
    write_plot(report, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_synthetic_data_is_identical_across_backends(tmp_path: Any) -> None:
    datasets = [
        ShardedDataset(write_synthetic(str(tmp_path / f"s-{f}"), f, 300, 256, shard_size="20KB"))
        for f in FORMATS
    ]
    indices = [0, 77, 299]
    first = datasets[0].read_batch(indices)
    assert first["label"].tolist() == indices
    for ds in datasets[1:]:
        columns = ds.read_batch(indices)
        assert np.array_equal(columns["data"], first["data"])
        assert np.array_equal(columns["label"], first["label"])
