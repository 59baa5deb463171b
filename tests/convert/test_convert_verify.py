"""shardio.verify: checksums, counts, every sample, against a source; damage never crashes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from h5files import write_plain

import shardio
from shardio.tools.cli import main


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("verify") / "src.h5"
    write_plain(str(path), n=200, row_bytes=256)
    return path


@pytest.fixture(scope="module")
def converted(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("converted")
    paths = {}
    for fmt in ("raw", "lmdb", "zarr", "hdf5"):
        paths[fmt] = root / fmt
        shardio.convert(source, paths[fmt], format=fmt, shard_size=8448)  # 7 shards of 32
    return paths


def copy(converted: dict[str, Path], fmt: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted[fmt], tmp_path / fmt))


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", ["raw", "lmdb", "zarr", "hdf5"])
def test_intact_dataset_verifies(converted, source, fmt) -> None:
    report = shardio.verify(converted[fmt], against=source)
    assert report.ok and report.num_shards == 7
    assert report.samples_read == report.samples_compared == 200
    assert "OK" in report.summary()


def test_flipped_byte_is_found_with_shard_and_sample(converted, source, tmp_path) -> None:
    out = copy(converted, "raw", tmp_path)
    # shard 2 holds samples 64..95; sample 70 is row 6 of its field 'x' (256 bytes a row)
    flip(out / "shard-00002.mmap" / "001.bin", 6 * 256 + 100)  # fields: label, x
    report = shardio.verify(out, against=source, raise_errors=False)
    text = [str(p) for p in report.problems]
    assert not report.ok
    assert text[0].startswith("shard-00002.mmap: is corrupt: its checksum is")
    assert "shard-00002.mmap: sample 70: field 'x' differs from the source" in text
    with pytest.raises(shardio.VerificationError, match=r"shard-00002\.mmap") as info:
        shardio.verify(out)
    assert isinstance(info.value, ValueError)


def test_truncated_shard_is_reported_not_mapped(converted, tmp_path) -> None:
    out = copy(converted, "raw", tmp_path)
    data = out / "shard-00003.mmap" / "001.bin"
    with open(data, "r+b") as handle:
        handle.truncate(1000)  # a mapping read past here would be SIGBUS
    report = shardio.verify(out, raise_errors=False)
    assert len(report.problems) == 1
    assert str(report.problems[0]).startswith("shard-00003.mmap: is truncated: ")
    assert str(report.problems[0]).endswith("it was not opened")
    assert report.samples_read == 200 - 32


def test_corrupt_lmdb_is_probed_in_a_child_process(converted, source, tmp_path) -> None:
    out = copy(converted, "lmdb", tmp_path)
    data = out / "shard-00001.lmdb" / "data.mdb"
    size = data.stat().st_size
    for offset in range(0, size, 4096):  # damage every page, B-tree included
        flip(data, offset + 40)
    report = shardio.verify(out, against=source, raise_errors=False)
    messages = [str(p) for p in report.problems]
    assert messages[0].startswith("shard-00001.lmdb: is corrupt")
    assert len(messages) >= 2 and all(m.startswith("shard-00001.lmdb") for m in messages)
    # whatever LMDB made of the damage (an error, a crash), the checker survived it
    assert report.samples_read == 200 - 32


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_damaged_chunk_files_are_reported(converted, source, tmp_path, fmt) -> None:
    out = copy(converted, fmt, tmp_path)
    shard = out / f"shard-00004.{'zarr' if fmt == 'zarr' else 'h5'}"
    files = [shard] if shard.is_file() else [p for p in shard.rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    flip(target, target.stat().st_size // 2)
    report = shardio.verify(out, against=source, raise_errors=False)
    assert not report.ok
    assert all(str(p).startswith(shard.name) for p in report.problems)


def test_missing_shard_and_missing_manifest(converted, tmp_path) -> None:
    out = copy(converted, "zarr", tmp_path)
    shutil.rmtree(out / "shard-00005.zarr")
    report = shardio.verify(out, raise_errors=False)
    assert [str(p) for p in report.problems] == ["shard-00005.zarr: is missing"]
    os.remove(out / "manifest.json")
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        shardio.verify(out)


def test_against_a_different_source_names_samples(converted, source, tmp_path) -> None:
    other = tmp_path / "other.h5"
    shutil.copy(source, other)
    with h5py.File(other, "r+") as file:
        file["label"][150] = -1
        file["x"][10, 3] = 0
    report = shardio.verify(converted["lmdb"], against=other, raise_errors=False)
    assert [str(p) for p in report.problems] == [
        "shard-00000.lmdb: sample 10: field 'x' differs from the source",
        "shard-00004.lmdb: sample 150: field 'label' differs from the source",
    ]


def test_against_a_source_of_another_shape(converted, tmp_path) -> None:
    short = tmp_path / "short.h5"
    write_plain(str(short), n=150, row_bytes=256)
    report = shardio.verify(converted["raw"], against=short, raise_errors=False)
    assert "the source" in str(report.problems[0]) and "150 samples" in str(report.problems[0])
    assert report.samples_compared == 150
    wide = tmp_path / "wide.h5"
    write_plain(str(wide), n=200, row_bytes=128)
    report = shardio.verify(converted["raw"], against=wide, raise_errors=False)
    assert "field 'x' is uint8 of shape (256,) in the dataset but uint8 of shape (128,)" in str(
        report.problems[0]
    )


def test_nan_values_compare_equal_bit_for_bit(tmp_path) -> None:
    src = tmp_path / "nan.h5"
    with h5py.File(src, "w") as file:
        file["x"] = np.array([[np.nan, 1.0], [2.0, -0.0]])
    shardio.convert(src, tmp_path / "out", format="raw")
    assert shardio.verify(tmp_path / "out", against=src).ok


def test_cli_verify_reports_and_exits_1(converted, source, tmp_path, capsys) -> None:
    out = copy(converted, "raw", tmp_path)
    flip(out / "shard-00006.mmap" / "000.bin", 3)  # the label field, sample 192
    code = main(["verify", str(out), "--against", str(source), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "shardio verify: shard-00006.mmap: is corrupt" in err
    assert "shardio verify: shard-00006.mmap: sample 192: field 'label' differs" in err
    assert "FAILED with" in err


def test_manifest_records_how_the_conversion_ran(converted, source) -> None:
    manifest = json.loads((converted["lmdb"] / "manifest.json").read_text())
    conversion = manifest["metadata"]["conversion"]
    assert conversion["source"] == str(source)
    assert conversion["settings"]["shard_size"] == 8448
    assert conversion["settings"]["num_shards"] == 7


CRASHING_READS = """
import os
if os.environ.get("SHARDIO_TEST_CRASH_READS"):
    import ctypes
    from shardio.storage.reader import DatasetReader

    def crash(self, number):
        ctypes.string_at(0)  # a segfault, as a backend hitting corrupt pages would

    DatasetReader.shard = crash
"""


def test_a_reader_crash_on_a_corrupt_shard_is_reported(converted, tmp_path, monkeypatch) -> None:
    """The corrupt shard is decoded in a child process; its segfault becomes a finding."""
    out = copy(converted, "raw", tmp_path)
    flip(out / "shard-00000.mmap" / "001.bin", 10)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(CRASHING_READS)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.setenv("PYTHONPATH", f"{hooks}{os.pathsep}{root}")
    monkeypatch.setenv("SHARDIO_TEST_CRASH_READS", "1")
    report = shardio.verify(out, raise_errors=False)
    assert [str(p) for p in report.problems][1] == (
        "shard-00000.mmap: reading its samples crashed the reader (SIGSEGV); the shard is corrupt"
    )
    assert report.samples_read == 200 - 32  # the other shards were read in this process
