"""The node shard cache: remote datasets of every format read through a local cache.

A real S3 API server (moto) on 127.0.0.1 behind a fault proxy (latency, bandwidth,
503 SlowDown, dropped connections, freezes; it counts GETs per object).
"""

from __future__ import annotations

import os
import resource
import signal
import time

import numpy as np
import pytest

import shardio
from shardio import ShardedDataset, ShardWriter
from shardio.storage.cache import CacheStore

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
torch = pytest.importorskip("torch")
from shardio.tools.testing.objectstore import FaultProxy, S3Server  # noqa: E402

# One attempt of 1 s per request: faults surface fast.
FAST = {
    "connect_timeout": 1,
    "read_timeout": 1,
    "retries": {"mode": "standard", "total_max_attempts": 2},
}


BUCKET = "cache-test"  # the s3 fixture (tests/storage/conftest.py) makes it


def _write(tmp_path, fmt: str, rows: int = 600, shard_size: str = "4KB", seed: int = 0):
    data = np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)
    blobs = [bytes([i % 251]) * (i % 5) for i in range(rows)]
    local = str(tmp_path / f"{fmt}-{seed}.shardio")
    columns = {"x": data} if fmt == "mmap" else {"x": data, "blob": blobs}
    with ShardWriter(local, format=fmt, shard_size=shard_size) as writer:
        writer.write_batch(columns)
    return local, data


def _open(url: str, s3: S3Server, proxy: FaultProxy, cache: str, **kwargs) -> ShardedDataset:
    options = s3.options(proxy.endpoint, **FAST)
    return ShardedDataset(url, storage_options=options, cache_dir=cache, **kwargs)


@pytest.mark.parametrize(
    "fmt", ["mmap", "lmdb", *(pytest.param(f, marks=pytest.mark.slow) for f in ("hdf5", "zarr"))]
)
def test_every_format_reads_through_the_cache(s3, proxy, tmp_path, fmt) -> None:
    local, data = _write(tmp_path, fmt)
    url = s3.upload(local, f"every-{fmt}.shardio")
    cache = str(tmp_path / "cache")
    with _open(url, s3, proxy, cache, cache_limit="10MB") as ds:
        assert len(ds.shard_lengths) > 2
        batch = [len(data) - 1, 0, 301, 0, 7]
        np.testing.assert_array_equal(ds.read_batch(batch)["x"], data[batch])
        np.testing.assert_array_equal(ds.read_batch(np.arange(len(data)))["x"], data)
        stats = ds.memory_stats()["cache"]
    assert stats["downloads"] == len(ds.shard_lengths) and stats["bytes_downloaded"] > 0
    shard_gets = proxy.object_gets(f"/cache-test/every-{fmt}.shardio/shard-")
    assert shard_gets and set(shard_gets.values()) == {1}  # each file fetched once
    # A restart reuses the cache: nothing is downloaded again.
    with _open(url, s3, proxy, cache, cache_limit="10MB") as again:
        np.testing.assert_array_equal(again.read_batch(np.arange(len(data)))["x"], data)
        assert again.memory_stats()["cache"]["downloads"] == 0
    assert proxy.object_gets(f"/cache-test/every-{fmt}.shardio/shard-") == shard_gets


def test_a_file_larger_than_one_piece_downloads_in_pieces(s3, proxy, tmp_path, monkeypatch) -> None:
    from shardio.storage.cache import fetch

    monkeypatch.setattr(fetch, "PIECE_BYTES", 500)  # data files of about 3 KB: 6-7 pieces
    local, data = _write(tmp_path, "mmap", seed=9)
    url = s3.upload(local, "pieces.shardio")
    with _open(url, s3, proxy, str(tmp_path / "cache"), cache_limit="10MB") as ds:
        np.testing.assert_array_equal(ds.read_batch(np.arange(len(data)))["x"], data)
        shards = len(ds.shard_lengths)
    gets = proxy.object_gets("/cache-test/pieces.shardio/shard-")
    data_gets = [count for path, count in gets.items() if path.endswith(".bin")]
    assert len(data_gets) == shards and max(data_gets) >= 4  # one ranged request a piece


def test_a_refused_shard_is_an_access_error_not_a_cache_error(s3, proxy, tmp_path) -> None:
    local, data = _write(tmp_path, "lmdb", seed=10)
    url = s3.upload(local, "refused.shardio")
    cache = tmp_path / "cache"
    with _open(url, s3, proxy, str(cache), cache_limit="10MB") as ds:
        proxy.forbidden = 3  # the next GETs of objects: 403 AccessDenied
        with pytest.raises(
            shardio.RemoteAccessError, match=r"refused s3://.*refused\.shardio/shard-00000"
        ) as caught:
            ds[0]
        assert not isinstance(caught.value, shardio.CacheError)
        proxy.forbidden = 0
        gets = proxy.object_gets("/cache-test/refused.shardio/shard-00000")
        assert gets and max(gets.values()) == 1  # not retried: a refusal is not a fault
        assert not list(cache.glob("*/data/*"))  # nothing was cached
        np.testing.assert_array_equal(ds.read_batch([0, 1])["x"], data[[0, 1]])  # allowed again


def test_a_refused_manifest_is_an_access_error_naming_it(s3, proxy, tmp_path) -> None:
    local, _ = _write(tmp_path, "zarr", seed=11)
    url = s3.upload(local, "refused-manifest.shardio")
    proxy.forbidden = 1
    with pytest.raises(
        shardio.RemoteAccessError, match=r"refused s3://.*/manifest\.json.*credentials"
    ):
        ShardedDataset(url, storage_options=s3.options(proxy.endpoint, **FAST))


def test_without_cache_dir_lmdb_names_cache_dir(s3, tmp_path) -> None:
    local, _ = _write(tmp_path, "lmdb", rows=10)
    url = s3.upload(local, "plain-lmdb.shardio")
    with pytest.raises(shardio.UnsupportedFeatureError, match="cache_dir="):
        ShardedDataset(url, storage_options=s3.options())


@pytest.mark.slow
def test_zarr_without_cache_dir_still_reads_ranges(s3, tmp_path) -> None:
    local, data = _write(tmp_path, "zarr", rows=50)
    url = s3.upload(local, "ranged-zarr.shardio")
    with ShardedDataset(url, storage_options=s3.options()) as ds:
        np.testing.assert_array_equal(ds.read_batch([49, 2])["x"], data[[49, 2]])
        assert "cache" not in ds.memory_stats()


def test_limit_is_never_exceeded_and_unused_shards_are_evicted(s3, proxy, tmp_path) -> None:
    local, data = _write(tmp_path, "mmap", rows=1200, shard_size="2KB")
    url = s3.upload(local, "lru.shardio")
    cache = str(tmp_path / "cache")
    with ShardedDataset(local) as probe:
        sizes = probe.shard_nbytes
    limit = int(2.5 * max(sizes))
    store = CacheStore(cache, limit)
    with _open(url, s3, proxy, cache, cache_limit=limit) as ds:
        starts = np.cumsum((0, *ds.shard_lengths))
        used = []
        for number in range(len(sizes)):
            rows = np.arange(starts[number], starts[number + 1])
            np.testing.assert_array_equal(ds.read_batch(rows)["x"], data[rows])
            used.append(store.used())
        for number in range(len(sizes)):  # again: evicted shards are fetched anew, and
            rows = np.arange(starts[number], starts[number + 1])  # are the same generation
            np.testing.assert_array_equal(ds.read_batch(rows)["x"], data[rows])
            used.append(store.used())
        stats = ds.memory_stats()["cache"]
    assert max(used) <= limit and len(used) == 2 * len(sizes) > 8
    assert stats["evictions"] >= len(sizes) - 3
    assert len(store.entries()) <= 2


def test_a_limit_below_one_shard_is_an_error_at_start(s3, proxy, tmp_path) -> None:
    local, _ = _write(tmp_path, "lmdb", rows=100)
    url = s3.upload(local, "tiny-limit.shardio")
    with pytest.raises(shardio.InvalidOptionError, match=r"cache_limit=.*largest"):
        _open(url, s3, proxy, str(tmp_path / "cache"), cache_limit="1KB")


def test_a_rewritten_dataset_is_not_served_stale(s3, proxy, tmp_path) -> None:
    cache = str(tmp_path / "cache")
    first, data = _write(tmp_path, "lmdb", rows=200, seed=1)
    url = s3.upload(first, "rewritten.shardio")
    with _open(url, s3, proxy, cache, cache_limit="10MB") as ds:
        np.testing.assert_array_equal(ds.read_batch(np.arange(200))["x"], data)
    second, new = _write(tmp_path, "lmdb", rows=200, seed=2)
    s3.upload(second, "rewritten.shardio")
    with _open(url, s3, proxy, cache, cache_limit="10MB") as ds:
        np.testing.assert_array_equal(ds.read_batch(np.arange(200))["x"], new)
        assert ds.memory_stats()["cache"]["downloads"] == len(ds.shard_lengths)


def test_a_shard_changed_under_an_open_dataset_is_an_error(s3, proxy, tmp_path) -> None:
    local, _ = _write(tmp_path, "hdf5", rows=200, seed=3)
    url = s3.upload(local, "changed.shardio")
    cache = str(tmp_path / "cache")
    ds = _open(url, s3, proxy, cache, cache_limit="10MB")
    other, _ = _write(tmp_path, "hdf5", rows=200, seed=4)
    s3.upload(other, "changed.shardio")  # same sizes, other bytes: the digest differs
    with pytest.raises(shardio.ShardCorruptError, match=r"shard-00000.*digest") as caught:
        ds[0]
    assert "rewritten" in str(caught.value)
    assert (
        os.listdir(os.path.join(ds.reader._cache.store.key_dir(ds.reader._cache.key), "data")) == []
    )
    ds.close()


@pytest.mark.slow
def test_a_damaged_shard_on_the_server_is_an_error(s3, proxy, tmp_path) -> None:
    local, _ = _write(tmp_path, "mmap", rows=600, seed=5)
    shard = os.path.join(local, "shard-00001.mmap", "000.bin")
    with open(shard, "r+b") as handle:
        handle.seek(10)
        handle.write(b"\xff\xfe")
    url = s3.upload(local, "damaged.shardio")
    with _open(url, s3, proxy, str(tmp_path / "cache"), cache_limit="10MB") as ds:
        ds[0]  # shard 0 is fine
        with pytest.raises(shardio.ShardCorruptError, match=r"shard-00001.mmap.*digest"):
            ds[ds.shard_lengths[0]]


@pytest.mark.slow  # seconds of back-off; a dead server is the default run's fault case
def test_throttling_and_dropped_connections_are_retried(s3, proxy, tmp_path) -> None:
    local, data = _write(tmp_path, "lmdb", rows=300, seed=6)
    url = s3.upload(local, "flaky.shardio")
    with _open(url, s3, proxy, str(tmp_path / "cache"), cache_limit="10MB") as ds:
        proxy.slowdown, proxy.drops = 2, 1
        np.testing.assert_array_equal(ds.read_batch(np.arange(300))["x"], data)
    assert proxy.slowdown == 0 and proxy.drops == 0  # every fault was met, and survived


def test_a_dead_server_is_a_remote_error_naming_the_url(s3, proxy, tmp_path, monkeypatch) -> None:
    import shardio.storage.cache.fetch

    monkeypatch.setattr(shardio.storage.cache.fetch, "BACKOFF_S", 0.05)  # 3 tries, quickly
    local, _ = _write(tmp_path, "mmap", rows=100, seed=7)
    url = s3.upload(local, "dead.shardio")
    with _open(url, s3, proxy, str(tmp_path / "cache"), cache_limit="10MB") as ds:
        proxy.slowdown = 10**6  # the server answers nothing but 503 from now on
        started = time.monotonic()
        with pytest.raises(shardio.RemoteReadError, match=r"dead.shardio/shard-00000"):
            ds[0]
        assert time.monotonic() - started < 30
        assert proxy.requests >= 3 * 2  # the cache's 3 tries of botocore's 2 attempts


@pytest.mark.slow
def test_an_unwritable_cache_dir_is_a_clear_error(s3, proxy, tmp_path) -> None:
    local, _ = _write(tmp_path, "mmap", rows=50, seed=8)
    url = s3.upload(local, "unwritable.shardio")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(shardio.CacheError, match=r"cache_dir .*a-file"):
        _open(url, s3, proxy, str(blocker / "cache"), cache_limit="10MB")


def test_a_full_cache_disk_is_a_clear_error(s3, proxy, tmp_path) -> None:
    local, _ = _write(tmp_path, "mmap", rows=600, seed=9)
    url = s3.upload(local, "full.shardio")
    cache = str(tmp_path / "cache")
    ds = _open(url, s3, proxy, cache, cache_limit="10MB")
    # The OS refuses to write files over 100 bytes: a full disk, as the writer sees it.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
    try:
        with pytest.raises(shardio.CacheError, match="full or read-only"):
            ds[0]
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    ds[0]  # room again: it reads
    assert CacheStore(cache, 10**7).used() == ds.shard_nbytes[0]
    ds.close()


def test_the_sampler_downloads_ahead(s3, proxy, tmp_path) -> None:
    local, data = _write(tmp_path, "mmap", rows=1000, shard_size="2KB", seed=10)
    url = s3.upload(local, "ahead.shardio")
    with _open(url, s3, proxy, str(tmp_path / "cache"), cache_limit="10MB") as ds:
        sampler = shardio.ShardSampler(ds, order="shard-window", seed=0, window="8KB")
        sampler_batches = torch.utils.data.BatchSampler(sampler, 50, drop_last=False)
        seen = []
        for batch in sampler_batches:
            seen.extend(batch)
            np.testing.assert_array_equal(ds.read_batch(batch)["x"], data[batch])
        stats = ds.memory_stats()["cache"]
    assert sorted(seen) == list(range(1000))
    assert stats["prefetched"] > 0 and stats["hits"] > 0


def test_the_cache_command_lists_sizes_and_clears(s3, proxy, tmp_path, capsys) -> None:
    import json

    from shardio.tools.cli import main

    local, data = _write(tmp_path, "mmap", rows=600, seed=11)
    url = s3.upload(local, "listed.shardio")
    cache = str(tmp_path / "cache")
    ds = _open(url, s3, proxy, cache, cache_limit="10MB", max_open_shards=2)
    ds[0]  # shard 0 stays open (leased) while the others are read and closed
    ds.read_batch(np.arange(ds.shard_lengths[0], len(data)))
    ds.reader.shard(0)  # shard 0 open again
    capsys.readouterr()
    assert main(["cache", cache, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    (dataset,) = listed["datasets"]
    assert dataset["source"] == url and dataset["shards"] == len(ds.shard_lengths)
    assert dataset["nbytes"] == sum(ds.shard_nbytes) == listed["nbytes"]
    assert 1 <= dataset["in_use"] <= 2
    assert main(["cache", cache, "--clear"]) == 0
    out = capsys.readouterr().out
    assert f"removed {len(ds.shard_lengths) - dataset['in_use']} shard(s)" in out
    ds.close()
    assert main(["cache", cache, "--clear", "-q"]) == 0
    assert CacheStore(cache, 1).entries() == []
    assert main(["cache", str(tmp_path)]) == 2
    assert "is not a shardio cache directory" in capsys.readouterr().err


def test_convert_uploads_shards_then_the_manifest_and_resumes(s3, proxy, tmp_path) -> None:
    import h5py

    source = str(tmp_path / "source.h5")
    data = np.arange(4000 * 4, dtype=np.float32).reshape(4000, 4)
    with h5py.File(source, "w") as file:
        file["x"] = data
    url = "s3://cache-test/converted.shardio"
    options = s3.options(proxy.endpoint, **FAST)
    staging = tmp_path / "staging"
    shardio.convert(
        source, url, format="lmdb", shard_size="16KB", storage_options=options, staging=staging
    )
    puts = [p for (m, p), n in proxy.calls.items() if m == "PUT" for _ in range(n)]
    assert puts[-1] == "/cache-test/converted.shardio/manifest.json"  # the manifest last
    # Each shard left staging once uploaded: the local disk never held the dataset.
    assert not [name for name in os.listdir(staging) if name.startswith("shard-")]
    assert len(puts) == len(set(puts)) > 3
    with _open(url, s3, proxy, str(tmp_path / "cache"), cache_limit="10MB") as ds:
        np.testing.assert_array_equal(ds.read_batch(np.arange(4000))["x"], data)
    # An upload cut short: one shard and the manifest missing. Resume uploads just those.
    s3.client().delete_objects(
        Bucket="cache-test",
        Delete={
            "Objects": [
                {"Key": "converted.shardio/manifest.json"},
                {"Key": "converted.shardio/shard-00001.lmdb/data.mdb"},
            ]
        },
    )
    proxy.calls.clear()
    shardio.convert(
        source,
        url,
        format="lmdb",
        shard_size="16KB",
        storage_options=options,
        staging=staging,
        resume=True,
    )
    puts = sorted(p for (m, p), _ in proxy.calls.items() if m == "PUT")
    assert puts == [
        "/cache-test/converted.shardio/manifest.json",
        "/cache-test/converted.shardio/shard-00001.lmdb/data.mdb",
        "/cache-test/converted.shardio/shard-00001.lmdb/shardio-offsets.npy",
    ]
    with pytest.raises(shardio.OutputExistsError, match="overwrite=True"):
        shardio.convert(source, url, format="lmdb", storage_options=options, staging=staging)


def test_cli_convert_inspect_and_verify_take_urls(s3, proxy, tmp_path, monkeypatch, capsys) -> None:
    import json

    import h5py

    from shardio.tools.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    source = str(tmp_path / "source.h5")
    with h5py.File(source, "w") as file:
        file["x"] = np.arange(3000 * 2, dtype=np.int32).reshape(3000, 2)
    url = "s3://cache-test/cli.shardio"
    staging = str(tmp_path / "staging")
    args = ["convert", source, url, "--format", "mmap", "--shard-size", "8KB", "-q"]
    assert main([*args, "--staging", staging]) == 0
    assert main(["inspect", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "mmap" and info["num_samples"] == 3000 and len(info["shards"]) > 1
    assert main(["verify", url, "-q"]) == 0
    # One shard's bytes changed on the server (same size): verify names it.
    key = "cli.shardio/shard-00001.mmap/000.bin"
    damaged = bytearray(s3.client().get_object(Bucket="cache-test", Key=key)["Body"].read())
    damaged[5] ^= 0xFF
    s3.client().put_object(
        Bucket="cache-test", Key="cli.shardio/shard-00001.mmap/000.bin", Body=bytes(damaged)
    )
    capsys.readouterr()
    assert main(["verify", url]) == 1
    err = capsys.readouterr().err
    assert "shard-00001.mmap" in err and "FAILED" in err and staging not in err


def test_diagnose_reports_each_workers_cache_figures(tmp_path) -> None:
    import fsspec

    local, data = _write(tmp_path, "mmap", rows=400, seed=12)
    fsspec.filesystem("memory").put(local, "/diag/ds.shardio", recursive=True)
    ds = ShardedDataset(
        "memory://diag/ds.shardio", cache_dir=str(tmp_path / "cache"), cache_limit="10MB"
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=50, num_workers=2, multiprocessing_context="fork"
    )
    with shardio.trace(loader) as tr:
        xs = np.concatenate([batch["x"].numpy() for batch in tr])
    np.testing.assert_array_equal(xs, data)
    workers = [m for m in tr.summary().memory if m.process.startswith("worker")]
    assert len(workers) == 2
    stats = [m.stats["cache"] for m in workers]
    # (each worker's figures as of its last memory sample)
    assert 0 < sum(s["downloads"] for s in stats) <= len(ds.shard_lengths)
    assert "downloads" in tr.report() and "evictions" in tr.report()


def test_a_single_remote_file_with_cache_dir_says_convert(s3, tmp_path) -> None:
    import h5py

    local = tmp_path / "one.h5"
    with h5py.File(local, "w") as file:
        file["x"] = np.arange(10)
    url = s3.upload(str(local), "one.h5")
    with pytest.raises(shardio.UnsupportedFeatureError, match="shardio convert"):
        ShardedDataset(url, storage_options=s3.options(), cache_dir=str(tmp_path / "c"))


@pytest.mark.slow
def test_kill_9_during_a_streamed_upload_then_resume(s3, proxy, tmp_path) -> None:
    # `shardio convert SRC s3://...` killed with -9 while it uploads shards: the
    # dataset is not presented as complete (no manifest), and `convert --resume`
    # finishes it, after which `verify` passes and every row reads back.
    import subprocess
    import sys

    import h5py

    source = str(tmp_path / "source.h5")
    data = np.arange(4000 * 4, dtype=np.float32).reshape(4000, 4)
    with h5py.File(source, "w") as file:
        file["x"] = data
    url, staging = "s3://cache-test/killed.shardio", str(tmp_path / "staging")
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    }
    command = [sys.executable, "-m", "shardio", "convert", source, url]
    command += ["--format", "lmdb", "--shard-size", "4KB", "--staging", staging, "-q"]
    proxy.latency_s = 0.05  # each upload takes a while: the kill lands among them
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            puts = [p for (m, p) in list(proxy.calls) if m == "PUT" and "/shard-" in p]
            if len(puts) >= 4:
                break
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        _, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"the upload ended before the kill: {err}"
    proxy.latency_s = 0.0
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]]
    uploaded = [k for k in keys if k.startswith("killed.shardio/")]
    assert uploaded and "killed.shardio/manifest.json" not in uploaded, uploaded
    with pytest.raises(shardio.ShardioError):  # not a dataset yet, short or not
        _open(url, s3, proxy, str(tmp_path / "cache"))
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    verify = [sys.executable, "-m", "shardio", "verify", url, "--against", source]
    verified = subprocess.run(verify, env=env, capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with _open(url, s3, proxy, str(tmp_path / "cache"), cache_limit="10MB") as ds:
        np.testing.assert_array_equal(ds.read_batch(np.arange(4000))["x"], data)
