"""``shardio convert``: --json, -q/-v, the small-shard warning, flags in errors, the
mmap/raw names and Zarr's compressed, shard-sized chunks by default."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import shardio
from shardio.tools.cli import main


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small HDF5 file of 200 rows: compressible images and labels."""
    path = tmp_path / "train.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as file:
        file["image"] = rng.integers(0, 4, size=(200, 8, 8, 3), dtype=np.uint8)
        file["label"] = np.arange(200, dtype=np.int64) % 10
    return path


def test_json_to_stdout_is_the_only_output(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.shardio"
    assert main(["convert", str(source), str(out), "--format", "lmdb", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["format"] == "lmdb" and data["num_samples"] == 200
    assert data["path"] == str(out) and data["fields"] == ["image", "label"]
    assert data["num_shards"] == len(shardio.Manifest.load(out).shards) == 1


def test_json_file_quiet_and_verbose(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "result.json"
    args = ["convert", str(source), str(tmp_path / "a"), "--format", "mmap", "--shard-size", "1MB"]
    assert main([*args, "--json", str(target), "-q"]) == 0
    assert capsys.readouterr().out == ""  # -q: nothing but the JSON file
    assert json.loads(target.read_text())["num_samples"] == 200
    verbose = ["convert", str(source), str(tmp_path / "b"), "--format", "lmdb", "-v"]
    assert main([*verbose, "--shard-size", "1MB"]) == 0
    out = capsys.readouterr().out
    assert "converted" in out and "shard-00000.lmdb: 200 samples" in out


def test_shard_size_below_one_megabyte_warns_once_naming_the_flag(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["convert", str(source), str(tmp_path / "o"), "--format", "lmdb"]
    assert main([*args, "--shard-size", "1B", "-q"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("shardio convert: warning: --shard-size='1B' is below 1 MB: 200 shard")
    assert main([*args, "--shard-size", "1MB", "--overwrite", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_library_warns_with_the_parameter_name(source: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"shard_size='2KB' is below 1 MB"):
        shardio.convert(source, tmp_path / "o", format="lmdb", shard_size="2KB")


def test_errors_name_flags_not_parameters(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["convert", str(source), str(tmp_path / "o"), "--format", "csv"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--format should be one of lmdb, hdf5, zarr, mmap (alias raw)" in err
    assert "but got --format='csv'" in err
    assert "format=" not in err.replace("--format=", "")
    unknown = tmp_path / "data.bin"
    unknown.write_bytes(b"\0" * 64)
    assert main(["convert", str(unknown), str(tmp_path / "o"), "--format", "lmdb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("pass --source-format to say which"), err


def test_raw_is_an_alias_of_mmap_everywhere(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "raw.shardio"
    assert main(["convert", str(source), str(out), "--format", "raw", "-q"]) == 0
    assert shardio.Manifest.load(out).format == "mmap"
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "mmap"
    shard = out / shardio.Manifest.load(out).shards[0].path
    assert main(["inspect", str(shard), "--format", "raw", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "mmap"
    help_text = _help("convert", capsys)
    assert "mmap (shardio's raw layout; alias raw)" in help_text


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_zarr_conversion_is_compressed_with_shard_sized_chunks(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "z.shardio"
    assert main(["convert", str(source), str(out), "--format", "zarr", "-q"]) == 0
    shard = zarr.open_group(str(out / shardio.Manifest.load(out).shards[0].path), mode="r")
    image = shard["image"]
    assert image.chunks[0] == 200  # not 1,365 rows of 192 bytes: no padded chunk
    assert [type(c).__name__ for c in image.compressors] == ["ZstdCodec"]
    samples_bytes = 200 * (8 * 8 * 3 + 8)
    assert _dir_bytes(out) < samples_bytes  # was ~10x the samples before
    plain = tmp_path / "plain.shardio"
    args = ["convert", str(source), str(plain), "--format", "zarr", "--compressor", "none", "-q"]
    assert main(args) == 0
    plain_image = zarr.open_group(
        str(plain / shardio.Manifest.load(plain).shards[0].path), mode="r"
    )["image"]
    assert list(plain_image.compressors) == []
    assert _dir_bytes(plain) < 2 * samples_bytes + 16 * 1024  # no 1,872-row padding
    np.testing.assert_array_equal(image[:], plain_image[:])
    assert os.path.isfile(out / "manifest.json")
