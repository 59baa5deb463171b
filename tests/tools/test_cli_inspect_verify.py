"""``shardio inspect`` and ``shardio verify``: --json (stdout or FILE), -q, -v, flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import shardio
from shardio.tools.cli import main
from shardio.tools.cli._inspect import SHARDS_SHOWN


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 shards of 10 samples: more than inspect lists without -v."""
    path = tmp_path_factory.mktemp("cli") / "d.shardio"
    schema = shardio.Schema((shardio.Field("x", np.dtype("<i8"), (4,)),))
    with shardio.ShardWriter(path, format="mmap", schema=schema, shard_size=320) as writer:
        writer.write_batch({"x": np.arange(480, dtype="<i8").reshape(120, 4)})
    assert len(shardio.Manifest.load(path).shards) == 12
    return path


def test_inspect_json_stdout_and_file(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(dataset), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_samples"] == 120 and data["format"] == "mmap" and len(data["shards"]) == 12
    target = tmp_path / "i.json"
    assert main(["inspect", str(dataset), "--json", str(target)]) == 0
    out = capsys.readouterr().out
    assert json.loads(target.read_text()) == data
    assert out.startswith(f"{dataset}: mmap, 120 samples, 12 shard(s)")
    assert out.rstrip().endswith(f"wrote {target}")


def test_inspect_lists_a_few_shards_and_all_with_verbose(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(dataset)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if "shard-0" in line]) == SHARDS_SHOWN
    assert f"  ... {12 - SHARDS_SHOWN} more shard(s) (-v lists them all)" in lines
    assert main(["inspect", str(dataset), "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shard_lines = [line for line in lines if "shard-0" in line]
    assert len(shard_lines) == 12 and all("xxh3_128:" in line for line in shard_lines)
    assert main(["inspect", str(dataset), "-q"]) == 0
    assert capsys.readouterr().out == ""


def test_inspect_error_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unknown = tmp_path / "data.bin"
    unknown.write_bytes(b"\0" * 64)
    assert main(["inspect", str(unknown)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shardio inspect: error: cannot tell the format of")
    assert err.endswith("pass --format to say which") and len(err.splitlines()) == 1
    assert main(["inspect", str(unknown), "--format", "parquet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--format should be one of lmdb, hdf5, zarr, mmap (alias raw)" in err
    assert "but got --format='parquet'" in err


def test_verify_json_quiet_and_verbose(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(dataset), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["num_shards"] == 12 and data["samples_read"] == 120
    assert data["problems"] == []
    assert main(["verify", str(dataset), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["verify", str(dataset), "-v"]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "shard-0" in line]) == 12
    assert "OK" in out


def test_verify_failure_in_json(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    broken = tmp_path / "broken.shardio"
    shutil.copytree(dataset, broken)
    shard = shardio.Manifest.load(broken).shards[3].path
    data_file = next(p for p in (broken / shard).iterdir() if p.suffix == ".bin")
    data_file.write_bytes(b"\xff" * data_file.stat().st_size)  # same size, other bytes
    target = tmp_path / "v.json"
    assert main(["verify", str(broken), "--json", str(target), "-q"]) == 1
    report = json.loads(target.read_text())
    assert report["ok"] is False and any(shard in p for p in report["problems"])
    err = capsys.readouterr().err
    assert shard in err and "FAILED" in err
