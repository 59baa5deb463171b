"""shardio.convert: HDF5 files as tools write them, every output format, options, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import h5py
import numpy as np
import pytest
from h5files import COMPOUND, SKIPPED, N, write_int128, write_plain, write_rich

import shardio
from shardio import DatasetReader, ShardWriter
from shardio.tools.cli import main
from shardio.tools.testing.groundtruth import make_columns

FORMATS = ["lmdb", "zarr", "hdf5", "raw"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_all(path: str) -> dict[str, Any]:
    with DatasetReader(path) as reader:
        return reader.read_many(np.arange(len(reader)))


def assert_columns_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    for name, column in want.items():
        if isinstance(column, np.ndarray):
            assert got[name].dtype == column.dtype.newbyteorder("="), name
            assert got[name].dtype.isnative, name
            np.testing.assert_array_equal(got[name], column, err_msg=name)
        else:
            assert len(got[name]) == len(column), name
            for value, expected in zip(got[name], column, strict=True):
                if isinstance(expected, bytes):
                    assert value == expected, name
                else:
                    assert value.dtype.isnative, name
                    np.testing.assert_array_equal(value, expected, err_msg=name)


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    return write_rich(str(tmp_path_factory.mktemp("rich")))


# ------------------------------------------------------------------ formats
@pytest.mark.parametrize("fmt", FORMATS)
def test_rich_hdf5_converts_to_every_format(tmp_path, rich, fmt: str) -> None:
    src, expected = rich
    result = shardio.convert(src, tmp_path / "out", format=fmt, shard_size="2KB")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["format"] == ("mmap" if fmt == "raw" else fmt)
    assert manifest["num_samples"] == N and len(manifest["shards"]) > 3
    assert all(s["checksum"].startswith("xxh3_128:") for s in manifest["shards"])
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        ["manifest.json", *(s["path"] for s in manifest["shards"])]
    )
    assert {s.name for s in result.skipped} == SKIPPED
    assert any("group/sub/values" in note and ">f8" in note for note in result.notes)
    assert_columns_equal(read_all(str(tmp_path / "out")), expected)
    assert shardio.verify(tmp_path / "out", against=src).ok


def test_fields_keep_types_and_kinds(tmp_path, rich) -> None:
    src, _ = rich
    shardio.convert(src, tmp_path / "out", format="lmdb")
    schema = shardio.Manifest.load(str(tmp_path / "out")).schema
    kinds = {f.name: (f.kind, str(f.dtype), f.shape) for f in schema}
    assert kinds["names"] == ("bytes", "uint8", ())
    assert kinds["seqs"] == ("ragged", "int16", ())
    assert kinds["images"] == ("array", "uint8", (4, 4))
    assert kinds["group/sub/values"] == ("array", "float64", (3,))
    assert schema["records"].dtype == COMPOUND.newbyteorder("=")
    assert kinds["fixed_str"] == ("array", "|S8", ())
    assert kinds["bools"] == ("array", "bool", ())


def test_converted_dataset_opens_as_sharded_dataset(tmp_path, rich) -> None:
    src, expected = rich
    shardio.convert(src, tmp_path / "out", format="raw", shard_size="1KB")
    ds = shardio.ShardedDataset(tmp_path / "out")
    assert len(ds) == N
    sample = ds[17]
    np.testing.assert_array_equal(sample["images"], expected["images"][17])
    assert sample["names"] == expected["names"][17]


def test_split_compound_makes_one_field_per_member(tmp_path, rich) -> None:
    src, expected = rich
    result = shardio.convert(
        src, tmp_path / "out", format="zarr", fields=["records"], split_compound=True
    )
    assert result.manifest.schema.names == ("records/x", "records/y", "records/v")
    got = read_all(str(tmp_path / "out"))
    for member in ("x", "y", "v"):
        want = expected["records"][member]
        assert got[f"records/{member}"].dtype == want.dtype.newbyteorder("=")
        np.testing.assert_array_equal(got[f"records/{member}"], want)
    assert got["records/v"].shape == (N, 2)
    assert shardio.verify(tmp_path / "out", against=src).ok


def test_compound_with_string_member_needs_split(tmp_path) -> None:
    kind = np.dtype([("id", "<i8"), ("name", h5py.string_dtype())])
    data = np.array([(i, f"n{i}") for i in range(10)], dtype=kind)
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("table", data=data)
    with pytest.raises(shardio.UnsupportedFeatureError, match=r"'table'.*split_compound"):
        shardio.convert(path, tmp_path / "a", format="lmdb")
    shardio.convert(path, tmp_path / "b", format="lmdb", split_compound=True)
    got = read_all(str(tmp_path / "b"))
    assert got["table/name"] == [f"n{i}".encode() for i in range(10)]
    np.testing.assert_array_equal(got["table/id"], np.arange(10))


def test_fields_pick_datasets_and_members_in_order(tmp_path, rich) -> None:
    src, expected = rich
    result = shardio.convert(
        src,
        tmp_path / "out",
        format="raw",
        fields=["/group/labels", "records/y", "images"],
        split_compound=True,
    )
    assert result.manifest.schema.names == ("group/labels", "records/y", "images")
    got = read_all(str(tmp_path / "out"))
    np.testing.assert_array_equal(got["records/y"], expected["records"]["y"])
    assert result.skipped == ()


def test_fields_errors_name_the_dataset(tmp_path, rich) -> None:
    src, _ = rich
    with pytest.raises(KeyError, match=r"no dataset 'nope'.*images") as info:
        shardio.convert(src, tmp_path / "a", format="raw", fields=["nope"])
    assert isinstance(info.value, shardio.FieldNotFoundError)
    with pytest.raises(shardio.SchemaError, match=r"'scalar'.*scalar"):
        shardio.convert(src, tmp_path / "b", format="raw", fields=["scalar"])
    with pytest.raises(shardio.SchemaError, match=r"'group' is a group"):
        shardio.convert(src, tmp_path / "c", format="raw", fields=["group"])
    assert not (tmp_path / "a").exists()


def test_first_axes_that_disagree_convert_the_largest_set(tmp_path) -> None:
    """As the reader does: the largest set sharing a first axis, the rest listed."""
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as file:
        file["a"] = np.zeros(10)
        file["g/b"] = np.zeros((7, 2))
        file["c"] = np.zeros(10)
    result = shardio.convert(path, tmp_path / "out", format="lmdb")
    assert result.manifest.schema.names == ("a", "c") and result.num_samples == 10
    assert [str(s) for s in result.skipped] == ["'g/b': has 7 rows, not 10"]
    with pytest.raises(shardio.SchemaError, match=r"'a': 10, 'g/b': 7"):
        shardio.convert(path, tmp_path / "o2", format="lmdb", fields=["a", "g/b"])
    result = shardio.convert(path, tmp_path / "o3", format="lmdb", fields=["g/b"])
    assert result.num_samples == 7


def test_empty_datasets_convert_to_an_empty_dataset(tmp_path) -> None:
    path = tmp_path / "e.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("x", shape=(0, 3), dtype="f4", maxshape=(None, 3))
        file.create_dataset("y", shape=(0,), dtype=h5py.string_dtype())
    result = shardio.convert(path, tmp_path / "out", format="zarr")
    assert result.num_samples == 0 and result.manifest.shards == ()
    with DatasetReader(tmp_path / "out") as reader:
        assert len(reader) == 0 and reader.schema["y"].kind == "bytes"
    assert shardio.verify(tmp_path / "out", against=path).ok


def test_object_references_are_refused_or_skipped(tmp_path) -> None:
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as file:
        file["good"] = np.arange(6)
        refs = file.create_dataset("refs", (6,), dtype=h5py.ref_dtype)
        refs[0] = file["good"].ref
    with pytest.raises(ValueError, match=r"'refs' holds object references.*--skip-unsupported"):
        shardio.convert(path, tmp_path / "a", format="lmdb")
    result = shardio.convert(path, tmp_path / "b", format="lmdb", skip_unsupported=True)
    assert result.manifest.schema.names == ("good",)
    assert [s.name for s in result.skipped] == ["refs"]
    with pytest.raises(shardio.UnsupportedFeatureError, match="'refs'"):
        shardio.convert(path, tmp_path / "c", format="lmdb", fields=["refs"])


def test_dtype_numpy_cannot_hold_is_named(tmp_path) -> None:
    path = tmp_path / "i.h5"
    with h5py.File(path, "w") as file:
        file["ok"] = np.arange(4)
        write_int128(file, "wide", 4)
    with pytest.raises(shardio.UnsupportedFeatureError, match=r"'wide'.*16 bytes.*numpy"):
        shardio.convert(path, tmp_path / "a", format="raw")
    result = shardio.convert(path, tmp_path / "b", format="raw", skip_unsupported=True)
    assert [s.name for s in result.skipped] == ["wide"]


def test_plugin_filter_is_loaded_when_installed(tmp_path) -> None:
    hdf5plugin = pytest.importorskip("hdf5plugin")
    path = tmp_path / "z.h5"
    data = np.arange(3000, dtype=np.float32).reshape(300, 10)
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=data, chunks=(50, 10), **hdf5plugin.Zstd())
    shardio.convert(path, tmp_path / "out", format="raw")
    np.testing.assert_array_equal(read_all(str(tmp_path / "out"))["x"], data)


def test_missing_filter_names_dataset_and_filter(tmp_path) -> None:
    """Written with hdf5plugin's zstd, read where hdf5plugin cannot be imported."""
    hdf5plugin = pytest.importorskip("hdf5plugin")
    path = tmp_path / "z.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=np.zeros((100, 4)), chunks=(10, 4), **hdf5plugin.Zstd())
        file["plain"] = np.arange(100)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hdf5plugin"] = None  # as if it were not installed
        import shardio
        try:
            shardio.convert({str(path)!r}, {str(tmp_path / "a")!r}, format="lmdb")
        except shardio.UnsupportedFeatureError as exc:
            print("ERROR", exc)
        result = shardio.convert(
            {str(path)!r}, {str(tmp_path / "b")!r}, format="lmdb", skip_unsupported=True
        )
        print("SKIPPED", [str(s) for s in result.skipped])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    env["PYTHONPATH"] = ROOT
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    error = done.stdout.splitlines()[0]
    assert "'x'" in error and "32015 (zstd)" in error and "pip install hdf5plugin" in error
    assert "SKIPPED" in done.stdout and "32015" in done.stdout.splitlines()[1]


def test_external_link_resolves_from_another_directory(tmp_path, rich, monkeypatch) -> None:
    src, expected = rich
    monkeypatch.chdir(tmp_path)
    shardio.convert(src, "out", format="raw", fields=["ext"])
    np.testing.assert_array_equal(read_all("out")["ext"], expected["ext"])


def test_chunk_aligned_shards(tmp_path) -> None:
    src = tmp_path / "p.h5"
    write_plain(str(src), n=400, row_bytes=256)  # chunks of 16 rows
    result = shardio.convert(src, tmp_path / "out", format="raw", shard_size="10KB")
    # 10 KB / 264 B per sample = 37 samples, rounded down to whole chunks: 32
    assert [s.num_samples for s in result.manifest.shards] == [32] * 12 + [16]


# ------------------------------------------------------------ other sources
def test_any_shardio_source_converts_to_any_format(tmp_path) -> None:
    columns = make_columns(n=120)
    with ShardWriter(tmp_path / "src", format="lmdb", shard_size="2KB") as writer:
        writer.write_batch(columns)
    shardio.convert(tmp_path / "src", tmp_path / "zarr", format="zarr", shard_size="3KB")
    got = read_all(str(tmp_path / "zarr"))
    assert_columns_equal(got, columns)
    shardio.convert(tmp_path / "zarr", tmp_path / "raw", format="raw")
    assert_columns_equal(read_all(str(tmp_path / "raw")), columns)
    assert shardio.verify(tmp_path / "raw", against=tmp_path / "src").ok


def test_foreign_zarr_group_converts(tmp_path) -> None:
    import zarr

    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    data = np.arange(200, dtype=">i4").reshape(50, 4)
    group.create_array("data", data=data, chunks=(7, 4))
    result = shardio.convert(tmp_path / "plain.zarr", tmp_path / "out", format="lmdb")
    got = read_all(str(tmp_path / "out"))["data"]
    assert got.dtype.isnative and result.manifest.schema["data"].dtype.isnative
    np.testing.assert_array_equal(got, data)


def test_big_endian_shardio_source_is_stored_native(tmp_path) -> None:
    data = np.arange(30, dtype=">f8")
    with ShardWriter(tmp_path / "be", format="mmap") as writer:
        writer.write_batch({"x": data})
    result = shardio.convert(tmp_path / "be", tmp_path / "out", format="hdf5")
    assert result.notes and result.manifest.schema["x"].dtype == np.dtype("<f8").newbyteorder("=")
    np.testing.assert_array_equal(read_all(str(tmp_path / "out"))["x"], data)


# ----------------------------------------------------------------- options
def test_compressors(tmp_path) -> None:
    src = tmp_path / "p.h5"
    data = write_plain(str(src))
    shardio.convert(src, tmp_path / "z", format="zarr", compressor="zstd:5")
    shardio.convert(src, tmp_path / "h", format="hdf5", compressor="gzip")
    shardio.convert(src, tmp_path / "l", format="hdf5", compressor="lzf")
    for out in ("z", "h", "l"):
        np.testing.assert_array_equal(read_all(str(tmp_path / out))["x"], data)
    with h5py.File(tmp_path / "h" / "shard-00000.h5") as file:
        assert file["x"].compression == "gzip"
    with pytest.raises(shardio.InvalidOptionError, match="lmdb stores samples uncompressed"):
        shardio.convert(src, tmp_path / "x1", format="lmdb", compressor="zstd")
    with pytest.raises(shardio.InvalidOptionError, match="compressor"):
        shardio.convert(src, tmp_path / "x2", format="zarr", compressor="brotli")
    with pytest.raises(shardio.InvalidOptionError, match="'gzip' or 'lzf'"):
        shardio.convert(src, tmp_path / "x3", format="hdf5", compressor="zstd")
    assert not any((tmp_path / n).exists() for n in ("x1", "x2", "x3"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"format": "parquet"}, "format should be one of"),
        ({"format": "lmdb", "shard_size": "lots"}, "shard_size should be a size"),
        ({"format": "lmdb", "shard_size": 0}, "shard_size should be > 0"),
        ({"format": "lmdb", "workers": 0}, "workers should be an integer >= 1"),
        ({"format": "lmdb", "resume": True, "overwrite": True}, "pass one of them"),
        ({"format": "lmdb", "scheduler": "localhost"}, "tcp://host:8786"),
        ({"format": "lmdb", "scheduler": "tcp://h:1", "workers": 2}, "size the cluster"),
        ({"format": "lmdb", "progress": "loud"}, "progress should be"),
        ({"format": "lmdb", "writer_options": {"chunk_bytes": 5}}, "chunk_bytes="),
        ({"format": "lmdb", "fields": []}, "at least one field"),
    ],
)
def test_bad_options_are_named(tmp_path, kwargs: dict[str, Any], match: str) -> None:
    src = tmp_path / "p.h5"
    write_plain(str(src), n=10)
    with pytest.raises(shardio.ShardioError, match=match):
        shardio.convert(src, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_missing_and_unreadable_sources(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.h5"):
        shardio.convert(tmp_path / "nope.h5", tmp_path / "out", format="lmdb")
    (tmp_path / "bad.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(shardio.ShardCorruptError, match=r"bad\.h5"):
        shardio.convert(tmp_path / "bad.h5", tmp_path / "out", format="lmdb")


def test_existing_output_is_refused_unless_overwrite(tmp_path) -> None:
    src = tmp_path / "p.h5"
    write_plain(str(src), n=40)
    shardio.convert(src, tmp_path / "out", format="lmdb", shard_size="1KB")
    with pytest.raises(FileExistsError, match=r"--overwrite.*--resume") as info:
        shardio.convert(src, tmp_path / "out", format="lmdb")
    assert isinstance(info.value, shardio.OutputExistsError)
    result = shardio.convert(src, tmp_path / "out", format="raw", overwrite=True)
    assert result.manifest.format == "mmap"
    assert sorted(os.listdir(tmp_path / "out")) == ["manifest.json", "shard-00000.mmap"]
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(shardio.OutputExistsError, match=r"notes\.txt"):
        shardio.convert(src, tmp_path / "out", format="raw", overwrite=True)
    assert (tmp_path / "out" / "notes.txt").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(shardio.OutputExistsError, match="not a directory"):
        shardio.convert(src, tmp_path / "file", format="raw", overwrite=True)


def test_progress_log_lines_when_not_a_terminal(tmp_path, capsys) -> None:
    src = tmp_path / "p.h5"
    write_plain(str(src), n=100)
    shardio.convert(src, tmp_path / "out", format="lmdb", shard_size="4KB", progress=True)
    err = capsys.readouterr().err
    assert "shardio convert p.h5:" in err and "samples/s" in err and "MB/s" in err
    assert "ETA" in err and "\r" not in err
    shardio.convert(src, tmp_path / "quiet", format="lmdb")
    assert capsys.readouterr().err == ""


def test_progress_bar_on_a_terminal(tmp_path) -> None:
    import io

    from shardio.convert.progress import Progress, progress_mode

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    assert progress_mode(True, stream) == "bar" and progress_mode(True, io.StringIO()) == "log"
    with Progress(
        "bar", "job", total_samples=10, total_bytes=1000, total_shards=2, stream=stream
    ) as progress:
        progress.advance(5, 500)
        progress.shard_done()
    text = stream.getvalue()
    assert "job" in text and "B/s" in text and "samples/s" in text


# ------------------------------------------------------------------- layers
def test_conversion_does_not_import_torch(tmp_path, rich) -> None:
    src, _ = rich
    script = textwrap.dedent(
        f"""
        import sys
        import shardio.convert
        assert "torch" not in sys.modules, "import shardio.convert imported torch"
        shardio.convert({src!r}, {str(tmp_path / "out")!r}, format="lmdb", shard_size="2KB")
        shardio.verify({str(tmp_path / "out")!r}, against={src!r})
        from shardio.tools.cli import main
        main(["convert", {src!r}, {str(tmp_path / "cli")!r}, "--format", "zarr", "-q"])
        main(["verify", {str(tmp_path / "cli")!r}, "-q"])
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
        print("torch-free")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch-free"


def test_shardio_convert_is_callable_and_a_package() -> None:
    import shardio.convert.check

    assert callable(shardio.convert)
    assert shardio.convert.convert is shardio.convert.converter.convert
    assert shardio.verify is shardio.convert.verify
    assert "convert" in shardio.__all__ and "verify" in shardio.__all__


# ---------------------------------------------------------------------- CLI
def test_cli_convert_and_verify(tmp_path, rich, capsys) -> None:
    src, _ = rich
    out = str(tmp_path / "out")
    code = main(
        ["convert", src, out, "--format", "lmdb", "--shard-size", "2KB", "--fields", "images,names"]
    )
    assert code == 0
    out_text = capsys.readouterr().out
    assert f"-> {out}: lmdb, {N} samples" in out_text
    assert shardio.Manifest.load(out).schema.names == ("images", "names")
    assert main(["verify", out, "--against", src]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["convert", src, out, "--format", "lmdb", "--resume", "--fields", "images,names",
                 "--shard-size", "2KB", "--quiet"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out == ""
    # -q keeps warnings: a 2KB shard size is below 1 MB
    assert captured.err.startswith("shardio convert: warning: --shard-size='2KB' is below 1 MB")
    assert len(captured.err.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["{missing}", "{out}", "--format", "lmdb"], "does not exist"),
        (["{src}", "{out}", "--format", "csv"], "format should be one of"),
        (["{src}", "{out}", "--format", "lmdb", "--shard-size", "big"], "--shard-size='big'"),
        (["{src}", "{out}", "--format", "lmdb", "--workers", "0"], "--workers=0"),
        (["{src}", "{out}", "--format", "raw", "--compressor", "zstd"], "uncompressed"),
        (["{src}", "{out}", "--format", "lmdb", "--fields", "nope"], "no dataset 'nope'"),
        (["{src}", "{exists}", "--format", "lmdb"], "already exists"),
        (["{refs}", "{out}", "--format", "lmdb"], "object references"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path, capsys, args: list[str], match: str
) -> None:
    src = tmp_path / "p.h5"
    write_plain(str(src), n=10)
    refs = tmp_path / "r.h5"
    with h5py.File(refs, "w") as file:
        file["a"] = np.arange(3)
        file.create_dataset("r", (3,), dtype=h5py.ref_dtype)
    (tmp_path / "exists").mkdir()
    names = {
        "missing": str(tmp_path / "missing.h5"),
        "out": str(tmp_path / "out"),
        "src": str(src),
        "exists": str(tmp_path / "exists"),
        "refs": str(refs),
    }
    code = main(["convert", *(a.format(**names) for a in args)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardio convert: error:"), captured.err
    assert match in lines[0]
    assert "Traceback" not in captured.err


def test_cli_verify_bad_path(tmp_path, capsys) -> None:
    assert main(["verify", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shardio verify: error:") and "manifest.json" in err


def test_remote_hdf5_source_through_fsspec(tmp_path) -> None:
    import fsspec

    local = tmp_path / "p.h5"
    data = write_plain(str(local), n=50)
    with fsspec.open("memory://bucket/p.h5", "wb") as handle:
        handle.write(local.read_bytes())
    result = shardio.convert("memory://bucket/p.h5", tmp_path / "out", format="raw")
    assert result.num_samples == 50
    np.testing.assert_array_equal(read_all(str(tmp_path / "out"))["x"], data)
    # To a URL: each shard uploaded as it completes, the manifest last.
    result = shardio.convert(local, "memory://bucket/out", format="raw", staging=tmp_path / "st")
    assert result.path == "memory://bucket/out"
    with shardio.ShardedDataset("memory://bucket/out", cache_dir=tmp_path / "cache") as ds:
        np.testing.assert_array_equal(ds.read_batch(np.arange(50))["x"], data)


def test_cli_inspect_shows_where_a_dataset_came_from(tmp_path, rich, capsys) -> None:
    src, _ = rich
    shardio.convert(src, tmp_path / "out", format="raw")
    assert main(["inspect", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"converted from {src}" in out
    assert "skipped 'scalar': is a scalar" in out
