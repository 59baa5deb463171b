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
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np


@dataclass(frozen=True)
class SciFile:
    name: str
    write: Callable[[str], str]  # directory -> path
    truth: Callable[[str, bool], dict[str, Any]]  # path, decoded -> field -> values
    decodes: bool = False  # CF attributes to decode


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
            if not os.path.exists(path):
                _elsewhere(f"_write_with_netcdf4({directory!r})")
        else:
            _climate().to_netcdf(path, engine=engine, format=format, encoding=_ENCODING)
        return path

    return write


def _write_with_netcdf4(directory: str) -> None:
    """Both netCDF4-engine files, and what xarray reads back from the netCDF4 one."""
    import xarray as xr

    for format in ("NETCDF3_CLASSIC", "NETCDF4"):
        path = os.path.join(directory, f"air-netcdf4-{format.lower()}.nc")
        _climate().to_netcdf(path, engine="netcdf4", format=format, encoding=_ENCODING)
    for decoded in (False, True):
        with xr.open_dataset(path, decode_cf=decoded, engine="netcdf4") as ds:
            values = {name: ds[name].values for name in ("air", "time")}
        if decoded:
            values["time"] = values["time"].astype("datetime64[ns]")
        np.savez(f"{path}.{int(decoded)}.npz", **values)


def _elsewhere(statement: str) -> None:
    """Run ``statement`` (with this module's names) in a fresh interpreter.

    NOTE: the netCDF4 package carries its own HDF5 library; once imported, h5py's
    filter plugins (hdf5plugin's blosc) fail in that process. The netCDF4 engine is
    kept out of the test process."""
    code = f"import scifiles; exec({statement!r}, vars(scifiles))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_HERE, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


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
    elif "netcdf4-netcdf4" in path:  # netCDF4 (HDF5 inside): read in another process
        with np.load(f"{path}.{int(decoded)}.npz") as values:
            return {name: values[name] for name in ("air", "time")}
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


CORPUS: tuple[SciFile, ...] = (
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
    SciFile("h5py", _write_h5py, _h5py_truth),
)
