"""Files written by each producing library's own package, and that library's reading.

Each entry writes one file (xarray to netCDF3 through scipy and netCDF4, to netCDF4,
to Zarr v2 and v3; anndata to h5ad and Zarr; h5py) and says what its producer reads
back for each field shardio should read with defaults, as stored (``decoded=False``)
and CF-decoded (``decoded=True``). Importable by spawned workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import h5py
import numpy as np


@dataclass(frozen=True)
class SciFile:
    name: str
    write: Callable[[str], str]  # directory -> path
    truth: Callable[[str, bool], dict[str, Any]]  # path, decoded -> field -> values
    decodes: bool = False  # attributes to decode (CF, MINC scaling)
    producer: str = ""  # the library (and call) that wrote it
    requires: str = ""  # a module the writer or the truth needs, else skipped


def _climate() -> Any:
    import xarray as xr

    rng = np.random.default_rng(3)
    air = (250 + rng.random((9, 4, 3)) * 40).astype("f4")
    air[0, 0, 0] = np.nan  # a missing value, written as _FillValue
    times = np.datetime64("2001-01-01T00:00") + np.arange(9) * np.timedelta64(6, "h")
    return xr.Dataset(
        {"air": (("time", "lat", "lon"), air, {"units": "K"})},
        coords={"time": times, "lat": np.linspace(10.0, 40.0, 4), "lon": np.arange(3.0)},
    )


_ENCODING = {
    "air": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 270.0, "_FillValue": -32767},
    "time": {"units": "hours since 2001-01-01", "dtype": "int32"},
}


def _netcdf(engine: str, format: str) -> Callable[[str], str]:
    def write(directory: str) -> str:
        path = os.path.join(directory, f"air-{engine}-{format.lower()}.nc")
        if engine == "netcdf4":
            _netcdf4_files(directory)
        else:
            _climate().to_netcdf(path, engine=engine, format=format, encoding=_ENCODING)
        return path

    return write


def _write_with_netcdf4(directory: str) -> None:
    """Every file the netCDF4 package writes, and what it (or xarray on it) reads back.

    Run in a fresh interpreter (`_elsewhere`); each truth is saved beside its file as
    ``<path>.<decoded>.npz`` (a string field's key ends in ``.list``)."""
    import xarray as xr

    for format in ("NETCDF3_CLASSIC", "NETCDF4", "NETCDF4_CLASSIC"):
        path = os.path.join(directory, f"air-netcdf4-{format.lower()}.nc")
        _climate().to_netcdf(path, engine="netcdf4", format=format, encoding=_ENCODING)
        if format != "NETCDF3_CLASSIC":
            for decoded in (False, True):
                with xr.open_dataset(path, decode_cf=decoded, engine="netcdf4") as ds:
                    _save(path, decoded, {name: ds[name].values for name in ("air", "time")})
    _write_posterior(os.path.join(directory, "posterior-groups.nc"))
    for format in ("NETCDF4", "NETCDF3_64BIT_OFFSET"):
        _write_stations(os.path.join(directory, f"stations-{format.lower()}.nc"), format)


def _save(path: str, decoded: bool, values: dict[str, Any]) -> None:
    stored = {}
    for name, value in values.items():
        if isinstance(value, list):
            stored[f"{name}.list"] = np.array(value, dtype=object).astype(bytes)
        elif value.dtype.kind == "M":
            stored[name] = value.astype("datetime64[ns]")
        else:
            stored[name] = value
    np.savez(f"{path}.{int(decoded)}.npz", **stored)


def _npz_truth(path: str, decoded: bool) -> dict[str, Any]:
    """What the producer read back in its own process (`_write_with_netcdf4`)."""
    with np.load(f"{path}.{int(decoded)}.npz") as saved:
        return {
            name.removesuffix(".list"): list(saved[name]) if name.endswith(".list") else saved[name]
            for name in saved.files
        }


def _write_posterior(path: str) -> None:
    """An ArviZ ``InferenceData.to_netcdf`` layout: one netCDF4 group per inference
    stage (``posterior``, ``sample_stats``, ``observed_data``), each written by
    ``xarray.Dataset.to_netcdf(group=..., mode="a")`` as ArviZ does."""
    import xarray as xr

    rng = np.random.default_rng(11)
    chain, draw, school = np.arange(4), np.arange(50), ["A", "B", "C", "D", "E"]
    posterior = xr.Dataset(
        {
            "mu": (("chain", "draw"), rng.standard_normal((4, 50))),
            "theta": (("chain", "draw", "school"), rng.standard_normal((4, 50, 5))),
        },
        coords={"chain": chain, "draw": draw, "school": school},
        attrs={"inference_library": "pymc"},
    )
    stats = xr.Dataset(
        {"lp": (("chain", "draw"), rng.standard_normal((4, 50)))},
        coords={"chain": chain, "draw": draw},
    )
    observed = xr.Dataset({"obs": (("school",), rng.standard_normal(5))}, coords={"school": school})
    for mode, (group, data) in zip(
        "waa",
        (("posterior", posterior), ("sample_stats", stats), ("observed_data", observed)),
        strict=True,
    ):
        data.to_netcdf(path, mode=mode, group=group, engine="netcdf4")
    truth = {}
    for group in ("posterior", "sample_stats"):
        with xr.open_dataset(path, group=group, engine="netcdf4") as ds:
            for name in ("mu", "theta", "lp", "chain"):
                if name in ds.variables:
                    truth[f"{group}/{name}"] = ds[name].values
    _save(path, False, truth)


def _write_stations(path: str, format: str) -> None:
    """A file written with the netCDF4 package's own API: an unlimited (record)
    dimension, a packed ``short`` with ``scale_factor``, ``add_offset`` and
    ``_FillValue``, a time coordinate, a ``char`` variable of one name per record, a
    scalar; in NETCDF4 also a variable-length string and a group."""
    import netCDF4
    import xarray as xr

    rng = np.random.default_rng(13)
    records = 7
    names = [f"st{i:02d}".encode() for i in range(records)]
    with netCDF4.Dataset(path, "w", format=format) as nc:
        nc.createDimension("time", None)
        nc.createDimension("station", 3)
        nc.createDimension("nchar", 6)
        time = nc.createVariable("time", "f8", ("time",))
        time.units = "days since 2000-01-01 00:00:00"
        temp = nc.createVariable("temp", "i2", ("time", "station"), fill_value=-999)
        temp.scale_factor = 0.1
        temp.add_offset = 20.0
        name = nc.createVariable("name", "S1", ("time", "nchar"))
        nc.createVariable("crs", "i4").grid_mapping_name = "latitude_longitude"
        nc.createVariable("elevation", "f4", ("station",))[:] = [10.0, 250.0, 1200.0]
        nc.set_auto_maskandscale(False)
        packed = rng.integers(-300, 300, (records, 3)).astype("i2")
        packed[2, 1] = -999
        time[:] = np.arange(records) * 0.25
        temp[:] = packed
        name[:] = netCDF4.stringtochar(np.array(names, dtype="S6"))
        if format == "NETCDF4":
            label = nc.createVariable("label", str, ("time",))
            label[:] = np.array([f"label-{i}" for i in range(records)], dtype=object)
            forecast = nc.createGroup("forecast")
            forecast.createDimension("lead", 4)
            forecast.createVariable("lead", "i4", ("lead",))[:] = np.arange(4)
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_maskandscale(False)
        nc.set_auto_chartostring(False)
        raw: dict[str, Any] = {n: nc[n][:] for n in ("time", "temp")}
        chars = nc["name"][:]  # netCDF4 reads chars as they lie; scipy's backend joins them
        raw["name"] = chars if format == "NETCDF4" else [b"".join(r).rstrip(b"\0") for r in chars]
        if format == "NETCDF4":
            raw["label"] = [s.encode() for s in nc["label"][:]]
    _save(path, False, {n: np.asarray(v) if not isinstance(v, list) else v for n, v in raw.items()})
    with xr.open_dataset(path, engine="netcdf4") as ds:
        _save(path, True, {n: ds[n].values for n in ("time", "temp")})


def _netcdf4_files(directory: str) -> None:
    """Writes the netCDF4 package's files once per directory (in another process)."""
    start_netcdf4_files(directory)
    done = _PENDING.pop(directory, None)
    if done is not None:
        _, stderr = done.communicate()
        assert done.returncode == 0, stderr


#: The netCDF4 writers running in another process, by directory.
_PENDING: dict[str, subprocess.Popen[str]] = {}


def start_netcdf4_files(directory: str) -> None:
    """Start writing the netCDF4 package's files, so that the other producers write
    theirs meanwhile (the first entry that needs them waits)."""
    if directory in _PENDING or os.path.exists(os.path.join(directory, "stations-netcdf4.nc")):
        return
    _PENDING[directory] = _elsewhere(f"_write_with_netcdf4({directory!r})")


def _netcdf4_writer(name: str) -> Callable[[str], str]:
    def write(directory: str) -> str:
        _netcdf4_files(directory)
        return os.path.join(directory, name)

    return write


def _elsewhere(statement: str) -> subprocess.Popen[str]:
    """Start ``statement`` (with this module's names) in a fresh interpreter.

    NOTE: the netCDF4 package carries its own HDF5 library; once imported, h5py's
    filter plugins (hdf5plugin's blosc) fail in that process. The netCDF4 engine is
    kept out of the test process."""
    code = f"import scifiles; exec({statement!r}, vars(scifiles))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_HERE, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


_HERE = os.path.dirname(os.path.abspath(__file__))


def _zarr(zarr_format: int) -> Callable[[str], str]:
    def write(directory: str) -> str:
        path = os.path.join(directory, f"air-v{zarr_format}.zarr")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _climate().to_zarr(
                path, zarr_format=zarr_format, encoding=_ENCODING, consolidated=False
            )
        return path

    return write


def _xarray_truth(path: str, decoded: bool) -> dict[str, Any]:
    import xarray as xr

    if path.endswith(".zarr"):
        opened = xr.open_zarr(path, decode_cf=decoded, consolidated=False)
    elif os.path.exists(f"{path}.{int(decoded)}.npz"):  # read by netCDF4 elsewhere
        return _npz_truth(path, decoded)
    elif "h5netcdf" in path:
        opened = xr.open_dataset(path, decode_cf=decoded, engine="h5netcdf")
    else:
        opened = xr.open_dataset(path, decode_cf=decoded, engine="scipy")
    with opened as ds:
        values = {name: ds[name].values for name in ("air", "time")}
    if decoded:
        values["time"] = values["time"].astype("datetime64[ns]")
    return values


def _cells() -> Any:
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(5)
    obs = pd.DataFrame(
        {"kind": pd.Categorical(rng.choice(["B", "T", "NK"], 30)), "n_genes": np.arange(30)},
        index=[f"cell{i}" for i in range(30)],
    )
    adata = ad.AnnData(
        X=rng.random((30, 7)).astype("f4"),
        obs=obs,
        var=pd.DataFrame(index=[f"gene{i}" for i in range(7)]),
    )
    adata.obsm["X_pca"] = rng.random((30, 2))
    # What scanpy's rank_genes_groups leaves: a record array of strings, not per cell.
    adata.uns["rank_genes_groups"] = {
        "names": np.rec.fromarrays([np.array(["g1", "g2"]), np.array(["g3", "g4"])], names="B,T")
    }
    return adata


def _anndata(kind: str, sparse: bool = False) -> Callable[[str], str]:
    def write(directory: str) -> str:
        adata = _cells()
        suffix = ""
        if sparse:  # scanpy's usual X: counts in CSR
            import scipy.sparse

            dense = np.asarray(adata.X)
            dense[dense < 0.6] = 0
            adata.X = scipy.sparse.csr_matrix(dense)
            suffix = "-csr"
        if kind == "h5ad":
            path = os.path.join(directory, f"cells{suffix}.h5ad")
            adata.write_h5ad(path)
        else:
            path = os.path.join(directory, f"cells-{kind}{suffix}.zarr")
            import anndata as ad

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ad.settings.zarr_write_format = 3 if kind == "zarr3" else 2
                try:
                    adata.write_zarr(path)
                finally:
                    ad.settings.zarr_write_format = 2
        return path

    return write


def _anndata_truth(path: str, decoded: bool) -> dict[str, Any]:
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.read_zarr(path) if path.endswith(".zarr") else ad.read_h5ad(path)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return {
        "X": x,
        "obs/n_genes": adata.obs["n_genes"].to_numpy(),
        "obs/kind/codes": adata.obs["kind"].cat.codes.to_numpy(),
        "obsm/X_pca": adata.obsm["X_pca"],
        "obs/_index": [name.encode() for name in adata.obs_names],
    }


def _write_old_anndata(directory: str) -> str:
    """The layout anndata 0.6 wrote (scanpy's `pbmc68k_reduced.h5ad`): obs and obsm
    compound datasets, no encoding-type, categories in uns. anndata 0.12 cannot write
    it, so h5py lays it out."""
    path = os.path.join(directory, "old-layout.h5ad")
    rng = np.random.default_rng(9)
    n = 25
    obs = np.zeros(n, dtype=[("index", "S8"), ("louvain", "i1"), ("n_counts", "f4")])
    obs["index"] = [f"cell{i}".encode() for i in range(n)]
    obs["louvain"] = rng.integers(0, 3, n)
    obs["n_counts"] = rng.random(n)
    obsm = np.zeros(n, dtype=[("X_pca", "f4", (4,))])
    obsm["X_pca"] = rng.random((n, 4))
    var = np.zeros(6, dtype=[("index", "S8")])
    with h5py.File(path, "w") as f:
        f["X"] = rng.random((n, 6)).astype("f4")
        f["obs"] = obs
        f["obsm"] = obsm
        f["var"] = var
        uns = f.create_group("uns")
        for key in ("louvain_categories", "louvain_colors", "pca_variance", "neighbors_k"):
            uns[key] = np.arange(3)
    return path


def _old_anndata_truth(path: str, decoded: bool) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        obs, obsm = f["obs"][:], f["obsm"][:]
        return {
            "X": f["X"][:],
            "obs/louvain": obs["louvain"],
            "obs/n_counts": obs["n_counts"],
            "obs/index": list(obs["index"]),
            "obsm/X_pca": obsm["X_pca"],
        }


def _write_anndata_07(directory: str) -> str:
    """The layout anndata 0.7 wrote: ``obs`` a group of column datasets named by an
    ``_index`` attribute, categoricals as codes with their categories under
    ``obs/__categories``, X dense (anndata 0.12 cannot write it, so h5py lays it out)."""
    path = os.path.join(directory, "layout-0.7.h5ad")
    rng = np.random.default_rng(21)
    n = 18
    strings = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f["X"] = rng.random((n, 5)).astype("f4")
        obs = f.create_group("obs")
        obs.attrs["_index"] = "index"
        obs.attrs["column-order"] = np.array(["leiden", "n_counts"], dtype=object)
        obs.attrs["encoding-type"] = "dataframe"
        obs.attrs["encoding-version"] = "0.1.0"
        obs.create_dataset("index", data=np.array([f"c{i}" for i in range(n)], dtype=object),
                           dtype=strings)  # fmt: skip
        obs["leiden"] = rng.integers(0, 3, n).astype("i1")
        obs["n_counts"] = rng.random(n).astype("f4")
        categories = obs.create_group("__categories")
        categories.create_dataset("leiden", data=np.array(["0", "1", "2"], dtype=object),
                                  dtype=strings)  # fmt: skip
        obs["leiden"].attrs["categories"] = categories["leiden"].ref  # as 0.7 linked them
        var = f.create_group("var")
        var.attrs["_index"] = "index"
        var.create_dataset("index", data=np.array([f"g{j}" for j in range(5)], dtype=object),
                           dtype=strings)  # fmt: skip
        f.create_group("obsm")["X_umap"] = rng.random((n, 2))
        f.create_group("uns")["leiden_colors"] = np.array([b"#1f77b4", b"#ff7f0e", b"#279e68"])
    return path


def _anndata_07_truth(path: str, decoded: bool) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {
            "X": f["X"][:],
            "obs/leiden": f["obs/leiden"][:],
            "obs/n_counts": f["obs/n_counts"][:],
            "obs/index": list(f["obs/index"][:]),
            "obsm/X_umap": f["obsm/X_umap"][:],
        }


def _write_h5py(directory: str) -> str:
    path = os.path.join(directory, "plain.h5")
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        f["image"] = rng.integers(0, 255, (20, 2, 3), dtype=np.uint8)
        f["label"] = np.arange(20, dtype=np.int64)
    return path


def _h5py_truth(path: str, decoded: bool) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {"image": f["image"][:], "label": f["label"][:]}


def _write_h5netcdf(directory: str) -> str:
    path = os.path.join(directory, "air-h5netcdf.nc")
    _climate().to_netcdf(path, engine="h5netcdf", encoding=_ENCODING)
    return path


def _write_scipy_records(directory: str) -> str:
    """scipy's own netCDF3 writer (`scipy.io.netcdf_file`): a record dimension whose
    variables scipy interleaves record by record, one of them ``char``."""
    from scipy.io import netcdf_file

    path = os.path.join(directory, "records-scipy.nc")
    rng = np.random.default_rng(17)
    with netcdf_file(path, "w", version=2) as nc:
        nc.createDimension("time", None)
        nc.createDimension("beam", 4)
        nc.createDimension("nchar", 5)
        nc.createVariable("time", "i4", ("time",))[:] = np.arange(12) * 60
        echo = nc.createVariable("echo", "i2", ("time", "beam"))
        echo[:] = rng.integers(-1000, 1000, (12, 4))
        nc.createVariable("gain", "f8", ("time",))[:] = rng.random(12)
        mode = nc.createVariable("mode", "c", ("time", "nchar"))
        mode[:] = np.array([list(f"m{i:04d}") for i in range(12)], dtype="S1")
        nc.createVariable("beam", "f4", ("beam",))[:] = [0.0, 90.0, 180.0, 270.0]
    return path


def _scipy_truth(path: str, decoded: bool) -> dict[str, Any]:
    from scipy.io import netcdf_file

    with netcdf_file(path, "r", mmap=False, maskandscale=False) as nc:
        return {
            "time": nc.variables["time"][:].copy(),
            "echo": nc.variables["echo"][:].copy(),
            "gain": nc.variables["gain"][:].copy(),
            "mode": [row.tobytes() for row in nc.variables["mode"][:]],
        }


def _write_zarr_appended(directory: str) -> str:
    """``to_zarr`` (v2, consolidated, chunked) then ``to_zarr(append_dim="time")``: the
    way a growing archive is written."""
    path = os.path.join(directory, "air-appended.zarr")
    climate = _climate()
    encoding = {name: {**value, "chunks": None} for name, value in _ENCODING.items()}
    encoding["air"]["chunks"] = (4, 4, 3)
    encoding["time"]["chunks"] = (4,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        climate.isel(time=slice(0, 5)).to_zarr(path, zarr_format=2, encoding=encoding)
        climate.isel(time=slice(5, None)).to_zarr(path, append_dim="time")
    return path


def _xarray_zarr_truth(path: str, decoded: bool) -> dict[str, Any]:
    import xarray as xr

    with xr.open_zarr(path, decode_cf=decoded) as ds:
        values = {name: ds[name].values for name in ("air", "time")}
    if decoded:
        values["time"] = values["time"].astype("datetime64[ns]")
    return values


def _write_anndata_layers(directory: str) -> str:
    """anndata with ``layers``, ``obsp``, ``varm``, written gzip-compressed."""
    import scipy.sparse

    adata = _cells()
    adata.layers["counts"] = np.rint(np.asarray(adata.X) * 10).astype("i4")
    adata.obsp["distances"] = scipy.sparse.csr_matrix(np.eye(30, dtype="f4"))
    adata.varm["loadings"] = np.ones((7, 2))
    path = os.path.join(directory, "cells-layers-gzip.h5ad")
    adata.write_h5ad(path, compression="gzip")
    return path


def _anndata_layers_truth(path: str, decoded: bool) -> dict[str, Any]:
    import anndata as ad

    truth = _anndata_truth(path, decoded)
    truth["layers/counts"] = ad.read_h5ad(path).layers["counts"]
    return truth


def _write_anndata_csc(directory: str) -> str:
    """X as CSC (column-compressed), as some pipelines leave it."""
    import scipy.sparse

    adata = _cells()
    adata.X = scipy.sparse.csc_matrix(np.where(np.asarray(adata.X) < 0.6, 0, adata.X))
    path = os.path.join(directory, "cells-csc.h5ad")
    adata.write_h5ad(path)
    return path


def _write_astropy(directory: str) -> str:
    """astropy's `Table.write` to HDF5 (``serialize_meta``: units and meta beside it)."""
    import astropy.units as u
    from astropy.table import Table

    rng = np.random.default_rng(19)
    table = Table(
        {
            "flux": rng.random(40) * u.Jy,
            "band": np.array(["g", "r", "i", "z"] * 10),
            "id": np.arange(40),
        },
        meta={"survey": "test"},
    )
    path = os.path.join(directory, "catalog-astropy.hdf5")
    table.write(path, path="catalog", serialize_meta=True, compression=True)
    return path


def _astropy_truth(path: str, decoded: bool) -> dict[str, Any]:
    from astropy.table import Table

    rows = Table.read(path, path="catalog").as_array()
    return {"catalog": np.asarray(rows, dtype=rows.dtype)}


_WRITTEN: tuple[SciFile, ...] = (
    SciFile("netcdf3-classic-scipy", _netcdf("scipy", "NETCDF3_CLASSIC"), _xarray_truth, True),
    SciFile("netcdf3-64bit-scipy", _netcdf("scipy", "NETCDF3_64BIT"), _xarray_truth, True),
    SciFile("netcdf3-classic-netcdf4", _netcdf("netcdf4", "NETCDF3_CLASSIC"), _xarray_truth, True),
    SciFile("netcdf4", _netcdf("netcdf4", "NETCDF4"), _xarray_truth, True),
    SciFile("zarr-v2-xarray", _zarr(2), _xarray_truth, True),
    SciFile("zarr-v3-xarray", _zarr(3), _xarray_truth, True),
    SciFile("anndata-h5ad", _anndata("h5ad"), _anndata_truth),
    SciFile("anndata-zarr2", _anndata("zarr2"), _anndata_truth),
    SciFile("anndata-zarr3", _anndata("zarr3"), _anndata_truth),
    SciFile("anndata-h5ad-csr", _anndata("h5ad", sparse=True), _anndata_truth),
    SciFile("anndata-zarr2-csr", _anndata("zarr2", sparse=True), _anndata_truth),
    SciFile("anndata-zarr3-csr", _anndata("zarr3", sparse=True), _anndata_truth),
    SciFile("anndata-0.6-layout-h5ad", _write_old_anndata, _old_anndata_truth),
    SciFile("anndata-0.7-layout-h5ad", _write_anndata_07, _anndata_07_truth),
    SciFile("h5py", _write_h5py, _h5py_truth),
    SciFile("netcdf4-classic-netcdf4", _netcdf4_writer("air-netcdf4-netcdf4_classic.nc"),
            _xarray_truth, True),
    SciFile("netcdf4-h5netcdf", _write_h5netcdf, _xarray_truth, True, requires="h5netcdf"),
    SciFile("netcdf4-groups-arviz-layout", _netcdf4_writer("posterior-groups.nc"), _npz_truth),
    SciFile("netcdf4-library", _netcdf4_writer("stations-netcdf4.nc"), _npz_truth, True),
    SciFile("netcdf3-64bit-netcdf4-library",
            _netcdf4_writer("stations-netcdf3_64bit_offset.nc"), _npz_truth, True),
    SciFile("netcdf3-scipy-records", _write_scipy_records, _scipy_truth),
    SciFile("zarr-v2-xarray-appended", _write_zarr_appended, _xarray_zarr_truth, True),
    SciFile("anndata-h5ad-layers-gzip", _write_anndata_layers, _anndata_layers_truth),
    SciFile("anndata-h5ad-csc", _write_anndata_csc, _anndata_truth),
    SciFile("astropy-table-hdf5", _write_astropy, _astropy_truth, requires="astropy"),
)  # fmt: skip

_PRODUCERS = {
    "netcdf3-classic-scipy": "xarray to_netcdf(engine='scipy')",
    "netcdf3-64bit-scipy": "xarray to_netcdf(engine='scipy', NETCDF3_64BIT)",
    "netcdf3-classic-netcdf4": "xarray to_netcdf(engine='netcdf4', NETCDF3_CLASSIC)",
    "netcdf4": "xarray to_netcdf(engine='netcdf4')",
    "zarr-v2-xarray": "xarray to_zarr(zarr_format=2)",
    "zarr-v3-xarray": "xarray to_zarr(zarr_format=3)",
    "anndata-h5ad": "anndata write_h5ad",
    "anndata-zarr2": "anndata write_zarr (v2)",
    "anndata-zarr3": "anndata write_zarr (v3)",
    "anndata-h5ad-csr": "anndata write_h5ad (CSR X)",
    "anndata-zarr2-csr": "anndata write_zarr (v2, CSR X)",
    "anndata-zarr3-csr": "anndata write_zarr (v3, CSR X)",
    "anndata-0.6-layout-h5ad": "h5py, in anndata 0.6's layout",
    "anndata-0.7-layout-h5ad": "h5py, in anndata 0.7's layout",
    "h5py": "h5py",
    "netcdf4-classic-netcdf4": "xarray to_netcdf(engine='netcdf4', NETCDF4_CLASSIC)",
    "netcdf4-h5netcdf": "xarray to_netcdf(engine='h5netcdf')",
    "netcdf4-groups-arviz-layout": "xarray to_netcdf(group=..., mode='a'), as ArviZ",
    "netcdf4-library": "netCDF4.Dataset (NETCDF4)",
    "netcdf3-64bit-netcdf4-library": "netCDF4.Dataset (NETCDF3_64BIT_OFFSET)",
    "netcdf3-scipy-records": "scipy.io.netcdf_file",
    "zarr-v2-xarray-appended": "xarray to_zarr(append_dim='time')",
    "anndata-h5ad-layers-gzip": "anndata write_h5ad(compression='gzip')",
    "anndata-h5ad-csc": "anndata write_h5ad (CSC X)",
    "astropy-table-hdf5": "astropy Table.write (HDF5)",
}


def _shipped() -> tuple[SciFile, ...]:
    from scishipped import shipped

    def make(*args: Any) -> SciFile:
        name, write, truth, decodes, producer, requires = args
        return SciFile(name, write, truth, decodes, producer, requires)

    return shipped(make)


#: Every file: those written here by their producers, then those the producers ship.
CORPUS: tuple[SciFile, ...] = (
    tuple(replace(f, producer=_PRODUCERS[f.name]) for f in _WRITTEN) + _shipped()
)


def available(sci: SciFile) -> bool:
    """Whether the module the file's writer or truth needs is installed."""
    import importlib.util

    return not sci.requires or importlib.util.find_spec(sci.requires) is not None
