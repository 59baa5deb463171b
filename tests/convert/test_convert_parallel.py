"""Parallel conversion: local worker processes and a Dask cluster give the serial output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h5files import write_rich

import shardio
from shardio.tools.cli import main


def shard_table(path: Path) -> list[tuple[str, int, int, str]]:
    manifest = json.loads((path / "manifest.json").read_text())
    return [(s["path"], s["num_samples"], s["nbytes"], s["checksum"]) for s in manifest["shards"]]


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> str:
    path, _ = write_rich(str(tmp_path_factory.mktemp("rich")), n=300)
    return path


@pytest.fixture(scope="module")
def serial(rich: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serial")
    outputs = {}
    for fmt in ("lmdb", "zarr", "hdf5", "raw"):
        outputs[fmt] = root / fmt
        shardio.convert(rich, outputs[fmt], format=fmt, shard_size="4KB")
        assert len(shard_table(outputs[fmt])) > 4
    return outputs


@pytest.mark.parametrize("fmt", ["zarr", pytest.param("lmdb", marks=pytest.mark.slow)])
def test_local_workers_match_a_serial_run(tmp_path, rich, serial, fmt) -> None:
    out = tmp_path / "out"
    result = shardio.convert(rich, out, format=fmt, shard_size="4KB", workers=2)
    assert result.shards_written == len(result.manifest.shards)
    assert shard_table(out) == shard_table(serial[fmt])
    assert shardio.verify(out, against=rich).ok


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
    ) as local:
        yield local


def test_dask_client_matches_a_serial_run(tmp_path, rich, serial, cluster) -> None:
    import distributed

    with distributed.Client(cluster) as client:
        for fmt in ("lmdb", "hdf5", "raw"):
            out = tmp_path / fmt
            shardio.convert(rich, out, format=fmt, shard_size="4KB", client=client)
            assert shard_table(out) == shard_table(serial[fmt]), fmt
        workers = client.run(lambda: __import__("os").getpid())
    assert len(set(workers.values())) == 2  # two worker processes did the work


def test_dask_scheduler_address_from_the_cli(tmp_path, rich, serial, cluster, capsys) -> None:
    out = tmp_path / "out"
    code = main(
        ["convert", rich, str(out), "--format", "zarr", "--shard-size", "4KB",
         "--scheduler", cluster.scheduler_address, "--quiet"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert shard_table(out) == shard_table(serial["zarr"])


def _fail_shard_3() -> None:
    """Run on each Dask worker: make the task of shard 3 fail there."""
    from shardio.convert import run

    original = run.write_shard

    def failing(job: Any, task: Any, on_block: Any = None) -> Any:
        if task.number == 3:
            raise OSError(5, "simulated I/O failure on a worker")
        return original(job, task, on_block)

    failing.original = original  # type: ignore[attr-defined]
    run.write_shard = failing


def _restore() -> None:
    from shardio.convert import run

    run.write_shard = getattr(run.write_shard, "original", run.write_shard)


def test_dask_task_failure_is_raised_and_resumable(tmp_path, rich, serial, cluster) -> None:
    import distributed

    out = tmp_path / "out"
    with distributed.Client(cluster) as client:
        client.run(_fail_shard_3)
        try:
            with pytest.raises(shardio.OutputWriteError, match="simulated I/O failure"):
                shardio.convert(rich, out, format="raw", shard_size="4KB", client=client)
        finally:
            client.run(_restore)
    assert not (out / "manifest.json").exists()
    result = shardio.convert(rich, out, format="raw", shard_size="4KB", resume=True)
    assert shard_table(out) == shard_table(serial["raw"])
    assert result.shards_written + result.shards_reused == len(shard_table(out))


def test_unreachable_scheduler_is_a_clear_error(tmp_path, rich, monkeypatch) -> None:
    pytest.importorskip("distributed")
    from shardio.convert import run

    monkeypatch.setattr(run, "CONNECT_TIMEOUT", "0.5s")
    with pytest.raises(shardio.InvalidOptionError, match="cannot reach the Dask scheduler"):
        shardio.convert(
            rich, tmp_path / "out", format="raw", scheduler="tcp://127.0.0.1:9", shard_size="4KB"
        )


def test_missing_dask_names_the_extra(tmp_path, rich, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install shardio-data\[dask\]") as info:
        shardio.convert(rich, tmp_path / "out", format="raw", scheduler="tcp://127.0.0.1:9")
    assert isinstance(info.value, shardio.BackendNotInstalledError)
