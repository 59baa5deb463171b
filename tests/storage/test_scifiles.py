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
from scifiles import CORPUS, SciFile
from torch.utils.data import DataLoader

from shardio import ShardedDataset
from shardio.convert.check import verify
from shardio.convert.converter import convert
from shardio.core.errors import SchemaError, UnknownFormatError, UnsupportedFeatureError
from shardio.tools.cli import main

torch.set_num_threads(1)

_IDS = [f.name for f in CORPUS]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = str(tmp_path_factory.mktemp("scifiles"))
    return {f.name: f.write(directory) for f in CORPUS}


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
        assert value.dtype == expected.dtype, f"{where}: {name} {value.dtype} {expected.dtype}"
        nan = value.dtype.kind in "fcmM"
        assert np.array_equal(value, expected, equal_nan=nan), f"{where}: {name}"


@pytest.mark.parametrize("sci", CORPUS, ids=_IDS)
def test_opens_with_defaults_and_reads_the_producers_values(
    sci: SciFile, written: dict[str, str]
) -> None:
    path = written[sci.name]
    ds = _open(path)
    truth = sci.truth(path, False)
    columns = ds.read_batch(np.arange(len(ds)))
    _assert_same(columns, truth, path)
    picked = ds.read_batch([3, 0, 3])  # out of order, repeated
    first = next(iter(truth))
    assert np.array_equal(np.asarray(picked[first]), np.asarray(columns[first])[[3, 0, 3]])


@pytest.mark.parametrize("sci", [f for f in CORPUS if f.decodes], ids=lambda f: f.name)
def test_decode_cf_reads_what_xarray_decodes(sci: SciFile, written: dict[str, str]) -> None:
    path = written[sci.name]
    decoded = _open(path, decode_cf=True)
    truth = sci.truth(path, True)
    assert decoded.schema["air"].dtype == truth["air"].dtype
    assert np.isnan(truth["air"]).any()  # the _FillValue came back as NaN
    _assert_same(decoded.read_batch(np.arange(len(decoded))), truth, path)
    # ds[i] is the same path with one index.
    sample = decoded[4]
    assert np.array_equal(sample["air"], truth["air"][4], equal_nan=True)
    assert sample["time"] == truth["time"][4]


@pytest.mark.parametrize("sci", CORPUS, ids=_IDS)
def test_converts_and_verifies_against_the_source(
    sci: SciFile, written: dict[str, str], tmp_path: Path
) -> None:
    path = written[sci.name]
    out = str(tmp_path / "out.shardio")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(path, out, "lmdb")
        report = verify(out, against=path)
    assert report.ok if hasattr(report, "ok") else report
    _assert_same(_open(out).read_batch(np.arange(len(_open(out)))), sci.truth(path, False), out)


def test_decoded_conversion_stores_decoded_values(written: dict[str, str], tmp_path: Path) -> None:
    for name in ("netcdf3-classic-scipy", "netcdf4", "zarr-v3-xarray"):
        path, out = written[name], str(tmp_path / f"{name}.shardio")
        truth = next(f for f in CORPUS if f.name == name).truth(path, True)
        # Decoded times (datetime64) are refused by every writer: they are left out.
        times = [n for n, v in truth.items() if getattr(v, "dtype", None) is not None
                 and v.dtype.kind in "mM"]  # fmt: skip
        assert times, f"{name}: the corpus file should hold a time variable"
        with pytest.raises(SchemaError, match=r"datetime64.*not every backend stores"):
            convert(path, out + ".times", "zarr", source_options={"decode_cf": True})
        kept = [n for n in truth if n not in times]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert(path, out, "zarr", fields=kept, source_options={"decode_cf": True})
        truth = {n: truth[n] for n in kept}
        converted = _open(out)
        _assert_same(converted.read_batch(np.arange(len(converted))), truth, out)


def _worker_params() -> list[Any]:
    return ["fork", pytest.param("spawn", marks=pytest.mark.slow)]


@pytest.mark.parametrize("context", _worker_params())
def test_every_file_reads_in_workers(context: str, written: dict[str, str]) -> None:
    for sci in CORPUS:
        path = written[sci.name]
        ds = _open(path)
        loader = DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context=context)
        batches = list(loader)
        truth = sci.truth(path, False)
        first = next(n for n, v in truth.items() if not isinstance(v, list))
        got = torch.cat([b[first] for b in batches]).numpy()
        assert np.array_equal(got, truth[first]), f"{path}: {first}"


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
