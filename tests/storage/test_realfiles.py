"""Real-world-shaped HDF5 files (tests/realfiles.py) open as their users expect, in the
reader and in conversion alike, and what cannot be read is named in one line."""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings

import h5py
import numpy as np
import pytest
from realfiles import (
    write_anndata,
    write_blosc,
    write_netcdf4,
    write_pandas_table,
    write_pytables,
    write_time_types,
)

import shardio
from shardio.storage.reader import DatasetReader
from shardio.tools.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _open(path: object, **options: object) -> tuple[DatasetReader, list[str]]:
    """A reader of ``path`` and the FieldsChosenWarning lines its opening gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", shardio.FieldsChosenWarning)
        reader = DatasetReader(path, **options)  # type: ignore[arg-type]
    return reader, [str(w.message) for w in caught]


def _read_all(reader: DatasetReader) -> dict[str, object]:
    order = np.arange(len(reader))[::-1].copy()  # reversed: not the stored order
    columns = reader.read_many(order)
    return {name: column[::-1] for name, column in columns.items()}


# ----------------------------------------------------------------- AnnData
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_anndata_reads_one_sample_per_cell(tmp_path, sparse) -> None:
    path = tmp_path / "cells.h5ad"
    expected = write_anndata(str(path), sparse=sparse)
    reader, lines = _open(path)
    assert reader.schema.names == tuple(sorted(expected))
    assert reader.schema["X"].shape == (60,) and len(reader) == 40
    columns = _read_all(reader)
    for name, values in expected.items():
        if name == "obs/_index":
            assert columns[name] == values
        else:
            np.testing.assert_array_equal(columns[name], values)
    picked = reader.read_many(np.array([7, 3, 7]))  # repeats and order, through CSR too
    np.testing.assert_array_equal(picked["X"], expected["X"][[7, 3, 7]])
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert "AnnData" in lines[0] and "'X'" in lines[0]
    assert "left out 8 array(s)" in lines[1] and "'var/means' (60 rows, not 40)" in lines[1]
    reader.close()


def test_anndata_group_selects_obs_or_var(tmp_path) -> None:
    path = tmp_path / "cells.h5ad"
    expected = write_anndata(str(path), sparse=True)
    obs, _ = _open(path, group="obs")
    assert obs.schema.names == ("_index", "cell_type/codes", "n_genes")
    np.testing.assert_array_equal(_read_all(obs)["n_genes"], expected["obs/n_genes"])
    var, _ = _open(path, group="/var")
    assert len(var) == 60 and "means" in var.schema.names
    with pytest.raises(shardio.FieldNotFoundError, match=r"no group 'nope'.*'obs'"):
        DatasetReader(path, group="nope")
    with pytest.raises(shardio.SchemaError, match=r"'obs/n_genes' is a dataset, not a group"):
        DatasetReader(path, group="obs/n_genes")


def test_anndata_converts_to_the_fields_it_reads(tmp_path) -> None:
    path = tmp_path / "cells.h5ad"
    expected = write_anndata(str(path), sparse=True)
    result = shardio.convert(path, tmp_path / "out", format="zarr")
    reader, _ = _open(path)
    assert result.manifest.schema.names == reader.schema.names
    converted = _read_all(DatasetReader(tmp_path / "out"))
    np.testing.assert_array_equal(converted["X"], expected["X"])
    assert "var/means" in {s.name for s in result.skipped}
    assert shardio.verify(tmp_path / "out", against=path).ok
    shardio.convert(path, tmp_path / "obs", format="lmdb", source_options={"group": "obs"})
    assert shardio.verify(tmp_path / "obs", against=path).ok


# ----------------------------------------------------------------- netCDF4
def test_netcdf4_reads_along_a_dimension(tmp_path) -> None:
    path = tmp_path / "climate.nc"
    values = write_netcdf4(str(path))  # time and lat have the same length
    reader, lines = _open(path, format="hdf5")
    assert reader.schema.names == ("temp", "time", "time_bnds")
    columns = _read_all(reader)
    np.testing.assert_array_equal(columns["temp"], values["temp"])
    assert "dimension 'time'" in lines[0]
    assert "'lat_weights' (dimension 'lat' first, not 'time')" in lines[1]
    assert "'nv' (a netCDF dimension without values)" in lines[1]
    lat, _ = _open(path, format="hdf5", dim="lat")
    assert lat.schema.names == ("lat", "lat_weights")
    np.testing.assert_array_equal(_read_all(lat)["lat_weights"], values["lat_weights"])
    with pytest.raises(shardio.FieldNotFoundError, match=r"'depth'.*\['lat', 'lon', 'time'\]"):
        DatasetReader(path, format="hdf5", dim="depth")


# ------------------------------------------------------- PyTables, pandas
def test_pytables_table_reads_its_columns_without_its_index(tmp_path) -> None:
    path = tmp_path / "indexed.h5"
    rows = write_pytables(str(path))
    reader, lines = _open(path)
    names = ("detector/readout/name", "detector/readout/ADCcount", "detector/readout/energy")
    assert reader.schema.names == names
    columns = _read_all(reader)
    for name in names:
        np.testing.assert_array_equal(columns[name], rows[name.rsplit("/", 1)[1]])
    assert "'detector/_i_readout' (a PyTables index, not data)" in lines[1]
    one, _ = _open(path, fields=["detector/readout/energy"])
    np.testing.assert_array_equal(_read_all(one)["detector/readout/energy"], rows["energy"])


def test_pandas_table_format_reads_its_columns(tmp_path) -> None:
    path = tmp_path / "frame.h5"
    rows = write_pandas_table(str(path))
    reader, lines = _open(path)
    assert reader.schema.names == ("df/table/index", "df/table/values_block_0", "df/table/a")
    assert reader.schema["df/table/values_block_0"].shape == (2,)
    columns = _read_all(reader)
    np.testing.assert_array_equal(columns["df/table/values_block_0"], rows["values_block_0"])
    np.testing.assert_array_equal(columns["df/table/index"], rows["index"])
    assert lines[1].startswith(f"{path}: left out 1 array(s): 'df/_i_table'")
    result = shardio.convert(path, tmp_path / "out", format="raw")
    assert result.manifest.schema.names == reader.schema.names
    assert shardio.verify(tmp_path / "out", against=path).ok


# ---------------------------------------------- types and filters refused
def test_time_types_are_left_out_with_a_reason(tmp_path, capsys) -> None:
    path = tmp_path / "times.h5"
    values = write_time_types(str(path))
    reader, lines = _open(path)
    np.testing.assert_array_equal(_read_all(reader)["value"], values)
    assert "'when' (HDF5 Time type of 8 bytes" in lines[1]
    with pytest.raises(shardio.UnsupportedFeatureError, match=r"'when' has HDF5 Time type"):
        DatasetReader(path, fields=["when"])
    assert main(["inspect", str(path)]) == 0
    captured = capsys.readouterr()
    assert "value" in captured.out and "'when'" in captured.err
    with pytest.raises(shardio.UnsupportedFeatureError, match=r"'when'.*--skip-unsupported"):
        shardio.convert(path, tmp_path / "out", format="lmdb")


def _write_unavailable_filter(path: str, names: str) -> None:
    """Datasets whose pipeline names LZO (filter 305, which hdf5plugin lacks), as
    PyTables writes them; optional, so HDF5 stores the chunks unfiltered here."""
    with h5py.File(path, "w") as file:
        for name in names:
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_chunk((4,))
            plist.set_filter(305, h5py.h5z.FLAG_OPTIONAL, (0, 0))
            space = h5py.h5s.create_simple((8,))
            h5py.h5d.create(file.id, name.encode(), h5py.h5t.NATIVE_INT32, space, dcpl=plist)
        file["ok"] = np.arange(8)


def test_lzo_advice_is_right_and_said_once(tmp_path) -> None:
    path = tmp_path / "lzo.h5"
    _write_unavailable_filter(str(path), "abc")
    with pytest.raises(shardio.UnsupportedFeatureError) as info:
        shardio.convert(path, tmp_path / "out", format="lmdb")
    message = str(info.value)
    assert "'a', 'b', 'c': is compressed with HDF5 filter 305 (lzo)" in message
    assert message.count("hdf5plugin has no such filter") == 1
    assert "pip install hdf5plugin" not in message
    reader, lines = _open(path)
    assert reader.schema.names == ("ok",) and "'a' (compressed with HDF5 filter 305" in lines[1]


def test_blosc_file_reads_in_a_fresh_process(tmp_path) -> None:
    """hdf5plugin's filters load for reading as for conversion (no import by the user)."""
    pytest.importorskip("hdf5plugin")
    path = tmp_path / "blosc.h5"
    columns = write_blosc(str(path))
    script = textwrap.dedent(
        f"""
        import sys
        from shardio import ShardedDataset
        assert "hdf5plugin" not in sys.modules
        ds = ShardedDataset({str(path)!r})
        print(len(ds), float(ds[199]["x"][7]), int(ds[5]["y"]))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["200", str(float(columns["x"][199, 7])), "15"]


def test_verify_on_a_file_says_what_to_run(tmp_path, capsys) -> None:
    path = tmp_path / "some.h5"
    write_time_types(str(path))
    assert main(["verify", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{path} is a file, not a shardio dataset directory" in err
    assert "shardio inspect" in err


def test_inspect_fields_flag_overrides_the_choice(tmp_path, capsys) -> None:
    path = tmp_path / "cells.h5ad"
    write_anndata(str(path), sparse=False)
    assert main(["inspect", str(path), "--fields", "var/means,var/n_cells", "--json"]) == 0
    captured = capsys.readouterr()
    assert '"num_samples": 60' in captured.out and captured.err == ""
    assert main(["inspect", str(path), "--group", "var", "--fields", "means"]) == 0
    assert "60 samples" in capsys.readouterr().out


# ------------------------------------------------- PyTables' shipped files
def _pytables_test_files() -> list[str]:
    spec = importlib.util.find_spec("tables")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "tests")
    return sorted(glob.glob(os.path.join(folder, "*.h5")))


@pytest.mark.skipif(not _pytables_test_files(), reason="PyTables is not installed")
def test_pytables_shipped_files_open_or_are_refused_with_a_reason() -> None:
    opened, refused = [], []
    for path in _pytables_test_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", shardio.FieldsChosenWarning)
                with DatasetReader(path) as reader:
                    if len(reader):
                        reader.read_many(np.array([0, len(reader) - 1]))
            opened.append(os.path.basename(path))
        except shardio.ShardioError as exc:
            assert "\n" not in str(exc)
            refused.append(f"{os.path.basename(path)}: {exc}")
    print(f"opened {len(opened)}: {opened}")
    print(f"refused {len(refused)}:", *refused, sep="\n  ")
    assert len(opened) > len(refused)


def test_old_anndata_sparse_layout_reads_as_dense_rows(tmp_path) -> None:
    """anndata before 0.8 marked CSR groups with h5sparse_format and h5sparse_shape."""
    dense = np.zeros((5, 4), dtype=np.float32)
    dense[[0, 2, 2, 4], [1, 0, 3, 3]] = [1, 2, 3, 4]
    path = tmp_path / "old.h5ad"
    with h5py.File(path, "w") as file:
        x = file.create_group("X")
        x.attrs["h5sparse_format"] = "csr"
        x.attrs["h5sparse_shape"] = np.array([5, 4])
        x["data"] = np.array([1, 2, 3, 4], dtype=np.float32)
        x["indices"] = np.array([1, 0, 3, 3], dtype=np.int32)
        x["indptr"] = np.array([0, 1, 1, 3, 3, 4])
    reader, _ = _open(path)
    np.testing.assert_array_equal(_read_all(reader)["X"], dense)
    np.testing.assert_array_equal(reader.read_many(np.array([4, 2]))["X"], dense[[4, 2]])


def test_group_on_a_shardio_shard_is_refused(tmp_path) -> None:
    path = tmp_path / "frame.h5"
    write_pandas_table(str(path))
    shardio.convert(path, tmp_path / "out", format="hdf5")
    with pytest.raises(shardio.InvalidOptionError, match=r"shardio shard: group= \(--group\)"):
        shardio.ShardedDataset(tmp_path / "out", group="df")[0]


def test_compound_with_string_member_reads_split(tmp_path) -> None:
    """As conversion: left out with the option named, and read member by member with it."""
    kind = np.dtype([("id", "<i8"), ("name", h5py.string_dtype())])
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("table", data=np.array([(i, f"n{i}") for i in range(10)], kind))
        file["other"] = np.arange(10.0)
    reader, lines = _open(path)
    assert reader.schema.names == ("other",) and "split_compound" in lines[1]
    split, _ = _open(path, split_compound=True)
    assert split.schema.names == ("other", "table/id", "table/name")
    columns = split.read_many(np.array([9, 2]))
    assert columns["table/name"] == [b"n9", b"n2"]
    np.testing.assert_array_equal(columns["table/id"], [9, 2])
