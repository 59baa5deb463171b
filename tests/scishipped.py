"""Real files that the producing libraries ship with their own packages.

h5py's, nibabel's (MINC1 and MINC2, written by the MINC tools), astropy's, xarray's,
scipy's (netCDF3, and a MATLAB v7.3 file) test data: files shardio did not write, read
here in place. Each entry's truth is what the producer's own reader reads (nibabel's
scaled image for MINC with ``decoded=True``). Skipped where the package is absent.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

__all__ = ["shipped"]


def package_file(module: str, *parts: str) -> str:
    """The path of a file shipped inside ``module``'s installed package ("" if absent)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = os.path.join(next(iter(spec.submodule_search_locations)), *parts)
    return path if os.path.exists(path) else ""


def _at(module: str, *parts: str) -> Callable[[str], str]:
    def where(directory: str) -> str:
        path = package_file(module, *parts)
        assert path, f"{module} ships no {'/'.join(parts)}"
        return path

    return where


def _h5py_truth(names: tuple[str, ...]) -> Callable[[str, bool], dict[str, Any]]:
    def truth(path: str, decoded: bool) -> dict[str, Any]:
        with h5py.File(path, "r") as f:
            values = {}
            for name in names:
                data = f[name][()]
                values[name] = list(data) if data.dtype.kind == "O" else data
            return values

    return truth


def _netcdf3_truth(names: tuple[str, ...]) -> Callable[[str, bool], dict[str, Any]]:
    """scipy's netCDF3 reader as stored; xarray's decoding with ``decoded``."""

    def truth(path: str, decoded: bool) -> dict[str, Any]:
        if decoded:
            import xarray as xr

            with xr.open_dataset(path, engine="scipy") as ds:
                return {n: _ns(ds[n].values) for n in names}
        from scipy.io import netcdf_file

        with netcdf_file(path, "r", mmap=False, maskandscale=False) as nc:
            return {n: nc.variables[n][:].copy() for n in names}

    return truth


def _ns(values: np.ndarray) -> np.ndarray:
    return values.astype("datetime64[ns]") if values.dtype.kind == "M" else values


def _minc_truth(image: str, names: tuple[str, ...]) -> Callable[[str, bool], dict[str, Any]]:
    """The image as stored (scipy or h5py), or scaled by nibabel (``decoded``)."""

    def truth(path: str, decoded: bool) -> dict[str, Any]:
        if decoded:
            import nibabel

            return {image: np.asarray(nibabel.load(path).dataobj)}
        if image == "image":
            return _netcdf3_truth(names)(path, False)
        return _h5py_truth(names)(path, False)

    return truth


_MINC2 = "minc-2.0/image/0/"


def _minc2(*names: str) -> tuple[str, ...]:
    return tuple(_MINC2 + n for n in names)


def _astropy_truth(path: str, decoded: bool) -> dict[str, Any]:
    from astropy.table import Table

    rows = Table.read(path, path="the_table").as_array()
    return {"the_table": np.asarray(rows, dtype=rows.dtype)}


def shipped(make: Callable[..., Any]) -> tuple[Any, ...]:
    """The shipped files as ``make(name, write, truth, decodes, producer, requires)``."""
    minc = "MINC tools (nibabel test data)"
    entries = [
        # h5py's test data
        ("h5py-vlen-strings", ("h5py", "tests", "data_files", "vlen_string_dset.h5"),
         _h5py_truth(("DS1",)), False, "h5py test data"),
        ("h5py-vlen-strings-utc", ("h5py", "tests", "data_files", "vlen_string_dset_utc.h5"),
         _h5py_truth(("ds1",)), False, "h5py test data"),
        ("h5py-s390x-big-endian", ("h5py", "tests", "data_files", "vlen_string_s390x.h5"),
         _h5py_truth(("DSBEfloat", "DSBEint", "DSLEfloat", "DSLEint", "DSvariable")), False,
         "h5py test data (IBM s390x)"),
        ("h5py-complex", ("h5py", "tests", "data_files", "compound-dtype-complex.h5"),
         _h5py_truth(("<c16", "<c8", ">c16", ">c8", "c16", "c8")), False, "h5py test data"),
        # MINC1 (netCDF3) and MINC2 (HDF5), written by the MINC tools, shipped by nibabel
        ("minc1-tiny", ("nibabel", "tests", "data", "tiny.mnc"),
         _minc_truth("image", ("image", "image-max", "image-min")), True, minc),
        ("minc1-4d", ("nibabel", "tests", "data", "minc1_4d.mnc"),
         _minc_truth("image", ("image", "image-max", "image-min", "time")), True, minc),
        ("minc1-1-scale", ("nibabel", "tests", "data", "minc1_1_scale.mnc"),
         _minc_truth("image", ("image",)), True, minc),
        ("minc1-no-att", ("nibabel", "tests", "data", "minc1-no-att.mnc"),
         _minc_truth("image", ("image",)), True, minc),
        ("minc2-small", ("nibabel", "tests", "data", "small.mnc"),
         _minc_truth(_MINC2 + "image", _minc2("image", "image-max", "image-min")), True, minc),
        ("minc2-4d", ("nibabel", "tests", "data", "minc2_4d.mnc"),
         _minc_truth(_MINC2 + "image", _minc2("image", "image-max", "image-min")), True, minc),
        ("minc2-4d-d", ("nibabel", "tests", "data", "minc2-4d-d.mnc"),
         _minc_truth(_MINC2 + "image", _minc2("image")), True, minc),
        ("minc2-1-scale", ("nibabel", "tests", "data", "minc2_1_scale.mnc"),
         _minc_truth(_MINC2 + "image", _minc2("image")), True, minc),
        ("minc2-no-att", ("nibabel", "tests", "data", "minc2-no-att.mnc"),
         _minc_truth(_MINC2 + "image", _minc2("image")), True, minc),
        ("minc2-baddim", ("nibabel", "tests", "data", "minc2_baddim.mnc"),
         _minc_truth(_MINC2 + "image", _minc2("image")), False, minc),
        # astropy's own HDF5 table (an older metadata layout)
        ("astropy-old-meta", ("astropy", "io", "misc", "tests", "data", "old_meta_example.hdf5"),
         _astropy_truth, False, "astropy test data"),
        # netCDF3 shipped by xarray and scipy
        ("xarray-example-1", ("xarray", "tests", "data", "example_1.nc"),
         _netcdf3_truth(("rh", "temp", "time")), True, "xarray test data"),
        ("xarray-bears", ("xarray", "tests", "data", "bears.nc"),
         _netcdf3_truth(("aloan", "cross", "i", "order", "shot")), False, "xarray test data"),
        ("scipy-example-1", ("scipy", "io", "tests", "data", "example_1.nc"),
         _netcdf3_truth(("rh", "temp", "time")), False, "scipy test data"),
        ("scipy-example-2", ("scipy", "io", "tests", "data", "example_2.nc"),
         _netcdf3_truth(("Temperature",)), False, "scipy test data"),
        ("scipy-masked-values", ("scipy", "io", "tests", "data", "example_3_maskedvals.nc"),
         _netcdf3_truth(("var1_fillval0", "var2_noFillval", "var3_fillvalAndMissingValue",
                         "var4_missingValue", "var5_fillvalNaN", "var7_2d")), True,
         "scipy test data"),
        # MATLAB v7.3 (HDF5 with a 512-byte user block), shipped by scipy
        ("matlab-v7.3", ("scipy", "io", "matlab", "tests", "data", "testhdf5_7.4_GLNX86.mat"),
         _h5py_truth(("testdouble",)), False, "MATLAB 7.4 save -v7.3 (scipy test data)"),
    ]  # fmt: skip
    return tuple(
        make(name, _at(*parts), truth, decodes, producer, parts[0])
        for name, parts, truth, decodes, producer in entries
    )
