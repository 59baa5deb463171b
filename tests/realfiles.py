"""HDF5 files laid out as other tools write them, built with h5py alone.

anndata, netCDF4, pandas and PyTables are not test dependencies (together they pull
in dozens of packages), so each writer below lays out the groups, datasets and
attributes those libraries write (anndata 0.10 ``write_h5ad``, netCDF4-C 4.9 through
h5netcdf's conventions, pandas ``HDFStore.put(format="table", data_columns=True)``,
PyTables 3.x ``create_table`` plus ``create_index``), with known values to compare.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

STR = h5py.string_dtype("utf-8")


def _strings(group: h5py.Group, name: str, values: list[str]) -> h5py.Dataset:
    dataset = group.create_dataset(name, (len(values),), dtype=STR)
    dataset[:] = values
    return dataset


def _encoding(obj: Any, kind: str, version: str) -> None:
    obj.attrs["encoding-type"] = kind
    obj.attrs["encoding-version"] = version


def _dataframe(group: h5py.Group, index: list[str], columns: dict[str, Any]) -> None:
    _encoding(group, "dataframe", "0.2.0")
    group.attrs["_index"] = "_index"
    group.attrs["column-order"] = np.array(list(columns), dtype=object).astype(STR)
    _encoding(_strings(group, "_index", index), "string-array", "0.2.0")
    for name, values in columns.items():
        if isinstance(values, tuple):  # categorical: (categories, codes)
            categorical = group.create_group(name)
            _encoding(categorical, "categorical", "0.2.0")
            categorical.attrs["ordered"] = False
            _encoding(_strings(categorical, "categories", values[0]), "string-array", "0.2.0")
            _encoding(categorical.create_dataset("codes", data=values[1]), "array", "0.2.0")
        else:
            _encoding(group.create_dataset(name, data=values), "array", "0.2.0")


def _csr(group: h5py.Group, name: str, dense: np.ndarray) -> None:
    matrix = group.create_group(name)
    _encoding(matrix, "csr_matrix", "0.1.0")
    matrix.attrs["shape"] = np.array(dense.shape, dtype=np.int64)
    rows, columns = np.nonzero(dense)
    matrix.create_dataset("data", data=dense[rows, columns])
    matrix.create_dataset("indices", data=columns.astype(np.int32))
    counts = np.bincount(rows, minlength=dense.shape[0])
    matrix.create_dataset("indptr", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def write_anndata(path: str, *, sparse: bool, n_obs: int = 40, n_vars: int = 60) -> dict[str, Any]:
    """An ``.h5ad`` with more genes than cells (so ``var`` holds more datasets than
    ``obs``): X dense or CSR, obs with a categorical, var, obsm, obsp, uns.
    Returns the expected per-cell columns."""
    rng = np.random.default_rng(3)
    x = rng.poisson(0.3, size=(n_obs, n_vars)).astype(np.float32)
    cells = [f"cell{i}" for i in range(n_obs)]
    codes = (np.arange(n_obs) % 3).astype(np.int8)
    n_genes = (x > 0).sum(axis=1).astype(np.int64)
    pca = rng.standard_normal((n_obs, 2)).astype(np.float32)
    with h5py.File(path, "w") as file:
        _encoding(file, "anndata", "0.1.0")
        if sparse:
            _csr(file, "X", x)
        else:
            _encoding(file.create_dataset("X", data=x, chunks=(8, n_vars)), "array", "0.2.0")
        _dataframe(
            file.create_group("obs"),
            cells,
            {"n_genes": n_genes, "cell_type": (["B", "NK", "T"], codes)},
        )
        _dataframe(
            file.create_group("var"),
            [f"gene{j}" for j in range(n_vars)],
            {
                "n_cells": (x > 0).sum(axis=0).astype(np.int64),
                "highly_variable": np.arange(n_vars) % 2 == 0,
                "means": x.mean(axis=0),
            },
        )
        obsm = file.create_group("obsm")
        _encoding(obsm, "dict", "0.1.0")
        _encoding(obsm.create_dataset("X_pca", data=pca), "array", "0.2.0")
        obsp = file.create_group("obsp")
        _encoding(obsp, "dict", "0.1.0")
        _csr(obsp, "distances", np.eye(n_obs, dtype=np.float32))
        for name in ("varm", "varp", "layers"):
            _encoding(file.create_group(name), "dict", "0.1.0")
        uns = file.create_group("uns")
        _encoding(uns, "dict", "0.1.0")
        _encoding(
            _strings(uns, "cell_type_colors", ["#1f77b4", "#ff7f0e", "#2ca02c"]),
            "string-array",
            "0.2.0",
        )
        uns.create_dataset("n_neighbors", data=15)
    return {
        "X": x,
        "obs/_index": [c.encode() for c in cells],
        "obs/n_genes": n_genes,
        "obs/cell_type/codes": codes,
        "obsm/X_pca": pca,
    }


NETCDF_DIM = "This is a netCDF dimension but not a netCDF variable."


def write_netcdf4(path: str, *, times: int = 10, lats: int = 10, lons: int = 6) -> dict[str, Any]:
    """A netCDF4 file as netCDF4-C writes it: dimension scales for ``time`` (as long
    as ``lat``, so only the dimension names tell them apart), ``lat``, ``lon`` and
    ``nv`` (a dimension without a variable), and variables attached to them."""
    rng = np.random.default_rng(5)
    values = {
        "time": np.arange(times, dtype=np.float64) * 24,
        "lat": np.linspace(-45, 45, lats).astype(np.float32),
        "lon": np.linspace(0, 300, lons).astype(np.float32),
        "temp": rng.standard_normal((times, lats, lons)).astype(np.float32),
        "time_bnds": np.stack([np.arange(times) * 24, np.arange(times) * 24 + 24], axis=1),
        "lat_weights": np.cos(np.linspace(-0.8, 0.8, lats)),
    }
    with h5py.File(path, "w", libver="earliest") as file:
        file.attrs["_NCProperties"] = np.bytes_(b"version=2,netcdf=4.9.2,hdf5=1.14.3")
        scales = {}
        for name in ("time", "lat", "lon"):
            maxshape = (None,) if name == "time" else None
            chunks = (512,) if name == "time" else None
            dataset = file.create_dataset(name, data=values[name], maxshape=maxshape, chunks=chunks)
            dataset.make_scale(name)
            scales[name] = dataset
        nv = file.create_dataset("nv", shape=(2,), dtype="f4")
        nv.make_scale(f"{NETCDF_DIM}         2")
        scales["nv"] = nv
        for name, dims in (
            ("temp", ("time", "lat", "lon")),
            ("time_bnds", ("time", "nv")),
            ("lat_weights", ("lat",)),
        ):
            dataset = file.create_dataset(name, data=values[name], compression="gzip")
            for axis, dim in enumerate(dims):
                dataset.dims[axis].attach_scale(scales[dim])
    return values


def _pytables_attrs(obj: Any, cls: str, version: str) -> None:
    obj.attrs["CLASS"] = np.bytes_(cls.encode())
    obj.attrs["VERSION"] = np.bytes_(version.encode())
    obj.attrs["TITLE"] = np.bytes_(b"")


def _pytables_file(file: h5py.File) -> None:
    _pytables_attrs(file, "GROUP", "1.0")
    file.attrs["PYTABLES_FORMAT_VERSION"] = np.bytes_(b"2.1")


def _table(group: h5py.Group, name: str, rows: np.ndarray) -> h5py.Dataset:
    table = group.create_dataset(name, data=rows, maxshape=(None,), chunks=(64,))
    _pytables_attrs(table, "TABLE", "2.7")
    for i, field in enumerate(rows.dtype.names or ()):
        table.attrs[f"FIELD_{i}_NAME"] = np.bytes_(field.encode())
    table.attrs["NROWS"] = np.int64(len(rows))
    return table


def _index(group: h5py.Group, name: str, column: np.ndarray) -> None:
    """A PyTables column index (``_i_<table>/<column>``): sorted values, their row
    numbers and the bounds tables, none as long as the table."""
    index = group.create_group(name)
    _pytables_attrs(index, "INDEX", "4.2")
    order = np.argsort(column, kind="stable")
    slice_size = len(column) + 3  # PyTables pads the last slice
    sorted_values = np.zeros((1, slice_size), dtype=column.dtype)
    sorted_values[0, : len(column)] = column[order]
    indices = np.zeros((1, slice_size), dtype=np.uint32)
    indices[0, : len(column)] = order
    for dataset, data in (
        ("sorted", sorted_values),
        ("indices", indices),
        ("ranges", np.array([[column.min(), column.max()]])),
        ("bounds", np.zeros((1, 3), dtype=column.dtype)),
        ("abounds", np.zeros(5, dtype=column.dtype)),
        ("zbounds", np.zeros(5, dtype=column.dtype)),
        ("mbounds", np.zeros(4, dtype=column.dtype)),
        ("mranges", np.zeros(2, dtype=column.dtype)),
        ("sortedLR", np.zeros(slice_size + 4, dtype=column.dtype)),
        ("indicesLR", np.zeros(slice_size + 4, dtype=np.uint32)),
    ):
        _pytables_attrs(index.create_dataset(dataset, data=data), "CACARRAY", "1.0")


READOUT = np.dtype([("name", "S16"), ("ADCcount", "<u2"), ("energy", "<f8")])


def write_pytables(path: str, n: int = 30) -> np.ndarray:
    """A PyTables file: ``/detector/readout`` indexed on two columns, an Array of
    another length beside it. Returns the table's rows."""
    rows = np.zeros(n, READOUT)
    rows["name"] = [f"particle{i}".encode() for i in range(n)]
    rows["ADCcount"] = (np.arange(n) * 37) % 256
    rows["energy"] = np.arange(n) ** 2 / 3
    with h5py.File(path, "w") as file:
        _pytables_file(file)
        detector = file.create_group("detector")
        _pytables_attrs(detector, "GROUP", "1.0")
        _table(detector, "readout", rows)
        indexes = detector.create_group("_i_readout")
        _pytables_attrs(indexes, "TINDEX", "1.0")
        _index(indexes, "energy", rows["energy"])
        _index(indexes, "ADCcount", rows["ADCcount"])
        columns = file.create_group("columns")
        _pytables_attrs(columns, "GROUP", "1.0")
        _pytables_attrs(columns.create_dataset("pressure", data=np.arange(7.0)), "ARRAY", "2.4")
    return rows


def write_pandas_table(path: str, n: int = 25) -> np.ndarray:
    """``df.to_hdf(path, key="df", format="table", data_columns=["a"])`` for a frame with
    an int64 index, a data column ``a`` (indexed) and two float columns in one block."""
    dtype = np.dtype([("index", "<i8"), ("values_block_0", "<f8", (2,)), ("a", "<i8")])
    rows = np.zeros(n, dtype)
    rows["index"] = np.arange(n) * 10
    rows["values_block_0"] = np.stack([np.arange(n) * 0.5, np.arange(n) * -1.0], axis=1)
    rows["a"] = np.arange(n) % 4
    with h5py.File(path, "w") as file:
        _pytables_file(file)
        frame = file.create_group("df")
        _pytables_attrs(frame, "GROUP", "1.0")
        for key, value in (
            ("pandas_type", b"frame_table"),
            ("pandas_version", b"0.15.2"),
            ("table_type", b"appendable_frame"),
            ("encoding", b"UTF-8"),
        ):
            frame.attrs[key] = np.bytes_(value)
        frame.attrs["levels"] = 1
        table = _table(frame, "table", rows)
        table.attrs["index_kind"] = np.bytes_(b"integer")
        table.attrs["values_block_0_kind"] = np.bytes_(b"(lp0\nVb\np1\naVc\np2\na.")
        indexes = frame.create_group("_i_table")
        _pytables_attrs(indexes, "TINDEX", "1.0")
        _index(indexes, "index", rows["index"])
        _index(indexes, "a", rows["a"])
    return rows


def write_time_types(path: str, n: int = 12) -> np.ndarray:
    """A dataset of HDF5's time type (H5T_UNIX_D64LE, as PyTables' Time64Col and some
    instruments write it), which numpy cannot hold, beside a plain one."""
    values = np.arange(n, dtype=np.float64)
    with h5py.File(path, "w") as file:
        file.create_dataset("value", data=values)
        space = h5py.h5s.create_simple((n,))
        h5py.h5d.create(file.id, b"when", h5py.h5t.UNIX_D64LE, space).close()
    return values


def write_blosc(path: str, n: int = 200) -> dict[str, np.ndarray]:
    """Blosc- and zstd-compressed datasets (hdf5plugin's filters 32001 and 32015)."""
    import hdf5plugin

    columns = {
        "x": np.arange(n * 8, dtype=np.float32).reshape(n, 8),
        "y": np.arange(n, dtype=np.int64) * 3,
    }
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=columns["x"], chunks=(16, 8), **hdf5plugin.Blosc())
        file.create_dataset("y", data=columns["y"], chunks=(32,), **hdf5plugin.Zstd())
    return columns


def write_corpus(directory: str) -> dict[str, str]:
    """Every layout above in ``directory``: name -> path."""
    paths = {
        name: os.path.join(directory, name)
        for name in (
            "dense.h5ad",
            "sparse.h5ad",
            "climate.nc",
            "indexed.h5",
            "frame.h5",
            "times.h5",
            "blosc.h5",
        )
    }
    write_anndata(paths["dense.h5ad"], sparse=False)
    write_anndata(paths["sparse.h5ad"], sparse=True)
    write_netcdf4(paths["climate.nc"])
    write_pytables(paths["indexed.h5"])
    write_pandas_table(paths["frame.h5"])
    write_time_types(paths["times.h5"])
    write_blosc(paths["blosc.h5"])
    return paths
