"""Files scientists have, written by each producer's own package, open with defaults.

Each file of the corpus (tests/scifiles.py: xarray's netCDF3 through scipy and
netCDF4, netCDF4, Zarr v2 and v3; anndata's h5ad and Zarr; the AnnData 0.6 layout;
plain h5py) opens with no options, reads the values its producer's own reader reads
(as stored, and CF-decoded with ``decode_cf=True``), converts, verifies against the
source and reads in forked (and, slow, spawned) DataLoader workers.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scifiles import CORPUS, SciFile, available, start_netcdf4_files
from torch.utils.data import DataLoader

from shardio import ShardedDataset
from shardio.convert.check import verify
from shardio.convert.converter import convert
from shardio.core.errors import (
    FieldNotFoundError,
    SchemaError,
    UnknownFormatError,
    UnsupportedFeatureError,
)
from shardio.tools.cli import main

torch.set_num_threads(1)

#: Files opened with defaults whose producer's values are not all read, and why.
LIMITED = {"anndata-h5ad-csc": "csc_matrix"}
_READABLE = [f for f in CORPUS if f.name not in LIMITED]
_IDS = [f.name for f in _READABLE]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = str(tmp_path_factory.mktemp("scifiles"))
    start_netcdf4_files(directory)  # in another process, while the others write theirs
    return {f.name: f.write(directory) for f in CORPUS if available(f)}


def _path(sci: SciFile, written: dict[str, str]) -> str:
    if sci.name not in written:
        pytest.skip(f"{sci.requires} is not installed")
    return written[sci.name]


def _open(path: str, **options: Any) -> ShardedDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # which arrays were chosen: tested elsewhere
        return ShardedDataset(path, **options)


def _assert_same(got: dict[str, Any], truth: dict[str, Any], where: str) -> None:
    assert set(truth) <= set(got), f"{where}: fields {sorted(got)} lack {sorted(truth)}"
    for name, expected in truth.items():
        if isinstance(expected, list):
            assert list(got[name]) == expected, f"{where}: {name}"
            continue
        value = np.asarray(got[name])
        # Values come back in native byte order (torch has no big-endian types).
        native = expected.dtype.newbyteorder("=")
        assert value.dtype == native, f"{where}: {name} {value.dtype} {expected.dtype}"
        nan = value.dtype.kind in "fcmM"
        assert np.array_equal(value, expected, equal_nan=nan), f"{where}: {name}"


@pytest.mark.parametrize("sci", _READABLE, ids=_IDS)
def test_opens_with_defaults_and_reads_the_producers_values(
    sci: SciFile, written: dict[str, str]
) -> None:
    path = _path(sci, written)
    ds = _open(path)
    truth = sci.truth(path, False)
    columns = ds.read_batch(np.arange(len(ds)))
    _assert_same(columns, truth, path)
    rows = [len(ds) - 1, 0, len(ds) - 1]  # out of order, repeated
    picked = ds.read_batch(rows)
    first = next(iter(truth))
    expected = [columns[first][i] for i in rows] if isinstance(columns[first], list) else None
    if expected is not None:
        assert list(picked[first]) == expected
    else:
        value = np.asarray(picked[first])
        nan = value.dtype.kind in "fcmM"
        assert np.array_equal(value, np.asarray(columns[first])[rows], equal_nan=nan)


@pytest.mark.parametrize("sci", [f for f in CORPUS if f.decodes], ids=lambda f: f.name)
def test_decode_cf_reads_what_the_producer_decodes(sci: SciFile, written: dict[str, str]) -> None:
    path = _path(sci, written)
    decoded = _open(path, decode_cf=True)
    truth = sci.truth(path, True)
    _assert_same(decoded.read_batch(np.arange(len(decoded))), truth, path)
    for name, values in truth.items():
        assert decoded.schema[name].dtype == values.dtype.newbyteorder("=")
    if "air" in truth:
        assert np.isnan(truth["air"]).any()  # the _FillValue came back as NaN
        # ds[i] is the same path with one index.
        sample = decoded[4]
        assert np.array_equal(sample["air"], truth["air"][4], equal_nan=True)
        assert sample["time"] == truth["time"][4]


def test_minc_scaling_is_nibabels_per_slice(written: dict[str, str]) -> None:
    """MINC: stored integers, with image-min/image-max per slice, scale as nibabel scales."""
    sci = next(f for f in CORPUS if f.name == "minc2-4d")
    path = _path(sci, written)
    raw, decoded = _open(path), _open(path, decode_cf=True)
    name = "minc-2.0/image/0/image"
    assert raw.schema[name].dtype == np.uint8 and decoded.schema[name].dtype == np.float64
    batch = decoded.read_batch([1, 0])
    truth = sci.truth(path, True)[name]
    assert np.array_equal(batch[name], truth[[1, 0]])
    assert len(np.unique(batch[name][0].max(axis=(1, 2)))) > 1  # slices scale apart
    with pytest.raises(SchemaError, match=r"per-slice 'minc-2.0/image/0/image-m(in|ax)'.*--fields"):
        _open(path, decode_cf=True, fields=[name]).read_batch([0])


def test_anndata_csc_names_why_x_is_left_out(written: dict[str, str]) -> None:
    path = written["anndata-h5ad-csc"]
    ds = _open(path)
    assert "obs/n_genes" in ds.fields and "X" not in ds.fields
    with pytest.raises(SchemaError, match=r"'X'.*csc_matrix.*store it as CSR"):
        ShardedDataset(path, fields=["X"])


#: Converted in the default run: one file of each layout (every backend that reads
#: them, strings, compounds, big-endian, MINC); -m slow converts every file.
_CONVERTED_FAST = {
    "netcdf3-classic-scipy", "netcdf3-scipy-records", "netcdf4", "netcdf4-library",
    "zarr-v3-xarray", "anndata-h5ad-csr", "anndata-zarr2-csr", "anndata-0.6-layout-h5ad",
    "astropy-table-hdf5", "h5py-vlen-strings-utc", "h5py-s390x-big-endian", "h5py-complex",
    "minc1-4d", "minc2-4d", "matlab-v7.3",
}  # fmt: skip


@pytest.mark.parametrize(
    "sci",
    [
        f if f.name in _CONVERTED_FAST else pytest.param(f, marks=pytest.mark.slow)
        for f in _READABLE
    ],
    ids=_IDS,
)
def test_converts_and_verifies_against_the_source(
    sci: SciFile, written: dict[str, str], tmp_path: Path
) -> None:
    path = _path(sci, written)
    out = str(tmp_path / "out.shardio")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(path, out, "lmdb")
        report = verify(out, against=path)
    assert report.ok if hasattr(report, "ok") else report
    _assert_same(_open(out).read_batch(np.arange(len(_open(out)))), sci.truth(path, False), out)


def test_decoded_conversion_stores_decoded_values(written: dict[str, str], tmp_path: Path) -> None:
    """Decoded times (datetime64) are stored too, in every backend."""
    for name, fmt in (
        ("netcdf3-classic-scipy", "zarr"),
        ("netcdf4", "hdf5"),
        ("zarr-v3-xarray", "mmap"),
        ("minc1-4d", "lmdb"),
    ):
        if name not in written:  # MINC needs nibabel for its truth
            continue
        path, out = written[name], str(tmp_path / f"{name}.shardio")
        truth = next(f for f in CORPUS if f.name == name).truth(path, True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert(path, out, fmt, source_options={"decode_cf": True})
            assert verify(out, against=path, source_options={"decode_cf": True}).ok
        converted = _open(out)
        assert name == "minc1-4d" or converted.schema["time"].dtype == np.dtype("M8[ns]")
        _assert_same(converted.read_batch(np.arange(len(converted))), truth, out)


def _worker_params() -> list[Any]:
    return ["fork", pytest.param("spawn", marks=pytest.mark.slow)]


def _one_per_producer() -> list[SciFile]:
    seen: set[str] = set()
    return [
        f
        for f in _READABLE
        if not (f.producer.split()[0] in seen or seen.add(f.producer.split()[0]))
    ]


@pytest.mark.parametrize("context", _worker_params())
def test_every_file_reads_in_workers(
    context: str, written: dict[str, str], request: pytest.FixtureRequest
) -> None:
    # The default run reads one file per producing library; -m slow reads them all.
    slow = "slow" in request.node.keywords
    files = [f for f in (_READABLE if slow else _one_per_producer()) if f.name in written]
    assert len(files) >= 8
    for sci in files:
        path = written[sci.name]
        ds = _open(path)
        loader = DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context=context)
        batches = list(loader)
        truth = sci.truth(path, False)
        first = next(iter(truth))
        if isinstance(truth[first], list):  # strings: one list per batch
            assert [v for b in batches for v in b[first]] == truth[first], f"{path}: {first}"
            continue
        got = np.concatenate([np.asarray(b[first]) for b in batches])
        nan = got.dtype.kind in "fc"
        assert np.array_equal(got, truth[first], equal_nan=nan), f"{path}: {first}"


def test_netcdf3_read_as_hdf5_is_named_not_corrupt(written: dict[str, str]) -> None:
    path = written["netcdf3-classic-scipy"]
    with pytest.raises(UnknownFormatError, match=r"is a netcdf3 file, not HDF5.*format='netcdf3'"):
        ShardedDataset(path, format="hdf5")
    with pytest.raises(UnknownFormatError, match="is a hdf5 file, not netCDF3"):
        ShardedDataset(written["netcdf4"], format="netcdf3")


def test_cdf5_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "big.nc"
    path.write_bytes(b"CDF\x05" + bytes(60))
    with pytest.raises(UnsupportedFeatureError, match=r"CDF-5.*nccopy -k nc4"):
        ShardedDataset(str(path))


def test_the_hint_works_when_pasted(
    written: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = written["netcdf3-64bit-scipy"]
    assert main(["inspect", path]) == 0
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    assert hint.endswith("To read others, pass --fields lat"), hint
    assert main(["inspect", path, *hint.rsplit("pass ", 1)[1].split()]) == 0
    again = capsys.readouterr().out
    assert "4 samples" in again and "lat" in again


def test_old_anndata_layout_reads_cells_not_uns(written: dict[str, str]) -> None:
    path = written["anndata-0.6-layout-h5ad"]
    with pytest.warns(Warning) as caught:
        ds = ShardedDataset(path)
    assert len(ds) == 25 and "X" in ds.fields and "obs/louvain" in ds.fields
    assert not [f for f in ds.fields if f.startswith("uns/")]
    lines = [str(w.message) for w in caught]
    assert any("AnnData" in line for line in lines)
    assert all(w.filename == __file__ for w in caught)  # the user's line, not shardio's


def test_conversion_takes_what_the_reader_takes(written: dict[str, str], tmp_path: Path) -> None:
    # uns/rank_genes_groups/names (a compound of strings, as scanpy leaves it) cannot be
    # a field; it is not along the cells, so the reader leaves it out and so does convert.
    path = written["anndata-h5ad"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = convert(path, str(tmp_path / "cells.shardio"), "lmdb")
    assert result.manifest.schema.names == _open(path).fields
    skipped = str(result.manifest.to_json())
    assert "uns/rank_genes_groups/names" in skipped


def test_zarr_dim_picks_another_dimension(written: dict[str, str], tmp_path: Path) -> None:
    """``dim=`` (--dim) on a Zarr group, as on netCDF and HDF5 files."""
    import xarray as xr

    path = written["zarr-v3-xarray"]
    lat = _open(path, dim="lat")
    assert lat.fields == ("lat",) and len(lat) == 4
    with xr.open_zarr(path, consolidated=False) as reference:
        assert np.array_equal(lat.read_batch(range(4))["lat"], reference["lat"].values)
    with pytest.raises(FieldNotFoundError, match=r"no array has dimension 'depth'.*'lat'"):
        _open(path, dim="depth")
    assert (
        main(["convert", path, str(tmp_path / "lat"), "--format", "lmdb", "--dim", "lat", "-q"])
        == 0
    )
    assert _open(str(tmp_path / "lat")).fields == ("lat",)
