"""An open registry: a backend is one module plus one registration (tests/npy_backend.py,
the example of docs/backends.md), and it passes the conformance harness unchanged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from npy_backend import NpyReader, NpyWriter
from torch.utils.data import DataLoader

import shardio
from shardio.storage.adapters import (
    Backend,
    formats,
    get_backend,
    reader_class,
    register_backend,
    unregister_backend,
    writer_class,
)
from shardio.storage.adapters.registry import detect_format
from shardio.tools.testing import AdapterTests, Truth
from shardio.tools.testing.groundtruth import read_back

ROOT = Path(__file__).resolve().parents[2]
NPY = Backend(name="npy", suffixes=(".npyd",), reader=NpyReader, writer=NpyWriter)


@pytest.fixture
def npy() -> Any:
    register_backend(NPY)
    yield NPY
    unregister_backend("npy")


def _columns(n: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "image": rng.integers(0, 255, size=(n, 4, 3), dtype=np.uint8),
        "label": np.arange(n, dtype=np.int64),
        "weight": rng.random(n).astype(">f4"),  # big-endian, as another tool may write
    }


def test_the_docs_example_is_this_module() -> None:
    page = (ROOT / "docs" / "backends.md").read_text(encoding="utf-8")
    source = (ROOT / "tests" / "npy_backend.py").read_text(encoding="utf-8")
    code = source[source.index("import os") :]
    assert code in page, "docs/backends.md should show tests/npy_backend.py from 'import os' on"


def test_a_registered_backend_writes_reads_detects_and_converts(tmp_path, npy) -> None:
    columns = _columns()
    with shardio.ShardWriter(tmp_path / "ds", format="npy", shard_size=256) as writer:
        writer.write_batch(columns)
    shards = sorted(p.name for p in (tmp_path / "ds").iterdir() if p.name != "manifest.json")
    assert len(shards) > 1 and shards[0] == "shard-00000.npyd"
    ds = shardio.ShardedDataset(tmp_path / "ds")
    assert ds.format == "npy" and len(ds) == 40
    got = ds.read_batch([39, 0, 17])
    for name, values in columns.items():
        np.testing.assert_array_equal(got[name], values[[39, 0, 17]])
    assert detect_format(str(tmp_path / "ds" / shards[0])) == "npy"
    single = shardio.ShardedDataset(tmp_path / "ds" / shards[1])  # one shard, no manifest
    assert int(single[0]["label"]) == ds.shard_lengths[0]
    with h5py.File(tmp_path / "src.h5", "w") as file:
        for name, values in columns.items():
            file[name] = values
    shardio.convert(tmp_path / "src.h5", tmp_path / "converted", format="npy")
    converted = shardio.ShardedDataset(tmp_path / "converted")
    np.testing.assert_array_equal(converted.read_batch(range(40))["image"], columns["image"])
    assert converted.read_batch([3])["weight"].dtype == np.dtype("f4")  # native order
    assert shardio.convert.verify(tmp_path / "converted").ok


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_workers_read_a_registered_backend(tmp_path, npy, context: str) -> None:
    columns = _columns()
    with shardio.ShardWriter(tmp_path / "ds", format="npy", shard_size=256) as writer:
        writer.write_batch(columns)
    loader = DataLoader(
        shardio.ShardedDataset(tmp_path / "ds"),
        batch_size=8,
        num_workers=2,
        multiprocessing_context=context,
    )
    labels = np.concatenate([batch["label"].numpy() for batch in loader])
    np.testing.assert_array_equal(labels, columns["label"])


def test_names_are_checked_when_registering(npy) -> None:
    with pytest.raises(shardio.InvalidOptionError, match=r"'npy' is taken.*replace=True"):
        register_backend(NPY)
    with pytest.raises(shardio.InvalidOptionError, match="'raw' is taken"):
        register_backend(
            Backend(name="other", suffixes=(".o",), reader=NpyReader, aliases=("raw",))
        )
    with pytest.raises(shardio.InvalidOptionError, match="'shardio' is taken"):
        register_backend(Backend(name="shardio", suffixes=(".o",), reader=NpyReader))
    with pytest.raises(shardio.InvalidOptionError, match="suffixes should be strings starting"):
        register_backend(Backend(name="other", suffixes=("npyd",), reader=NpyReader))
    with pytest.raises(shardio.InvalidOptionError, match="name should be a word"):
        register_backend(Backend(name="a b", suffixes=(".o",), reader=NpyReader))
    assert "other" not in formats()
    replaced = Backend(name="npy", suffixes=(".npy2",), reader=NpyReader, aliases=("numpy",))
    register_backend(replaced, replace=True)
    assert get_backend("numpy") is replaced and get_backend("NPY") is replaced
    unregister_backend("numpy")  # by an alias: the backend and its aliases go
    with pytest.raises(shardio.UnknownFormatError, match="format should be one of"):
        get_backend("numpy")
    register_backend(NPY)  # for the fixture to remove


def test_a_read_only_backend_refuses_to_write(tmp_path) -> None:
    register_backend(Backend(name="npy-ro", suffixes=(".npyro",), reader=NpyReader))
    assert reader_class("npy-ro") is NpyReader
    with pytest.raises(shardio.UnsupportedFeatureError, match="npy-ro backend is read-only"):
        writer_class("npy-ro")
    with pytest.raises(shardio.UnsupportedFeatureError, match="read-only"):
        shardio.ShardWriter(tmp_path / "out", format="npy-ro")
    assert not os.path.exists(tmp_path / "out")  # refused before anything was created


def test_a_missing_package_gives_an_install_hint(tmp_path) -> None:
    register_backend(
        Backend(
            name="exotic",
            suffixes=(".exo",),
            reader="exotic_storage_lib.shardio_adapter.ExoticReader",
            package="exotic-storage",
        )
    )
    (tmp_path / "a.exo").write_bytes(b"x")
    with pytest.raises(shardio.BackendNotInstalledError, match="pip install exotic-storage"):
        shardio.ShardedDataset(tmp_path / "a.exo")
    with pytest.raises(ImportError):  # BackendNotInstalledError is an ImportError too
        reader_class("exotic")


def test_a_compressor_for_an_uncompressed_backend_is_refused(tmp_path, npy) -> None:
    with h5py.File(tmp_path / "src.h5", "w") as file:
        file["x"] = np.arange(10)
    with pytest.raises(shardio.InvalidOptionError, match="npy stores samples uncompressed"):
        shardio.convert(tmp_path / "src.h5", tmp_path / "out", format="npy", compressor="zstd")


class TestNpyBackend(AdapterTests):
    """The harness, unchanged, on the example backend's files written with numpy."""

    @pytest.fixture(autouse=True)
    def _registered(self, npy: Backend) -> None:
        return None

    def write_truth(self, directory: str) -> Truth:
        columns = _columns()
        path = os.path.join(directory, "one.npyd")
        os.makedirs(path)
        for name, values in columns.items():
            np.save(os.path.join(path, f"{name}.npy"), values)
        with open(os.path.join(path, "fields.txt"), "w") as listing:
            listing.write("\n".join(columns) + "\n")
        return Truth(read_back(columns), path)


def test_an_alias_names_the_same_backend_everywhere(tmp_path) -> None:
    with shardio.ShardWriter(tmp_path / "ds", format="RAW") as writer:
        writer.write_batch({"x": np.arange(6)})
    ds = shardio.ShardedDataset(tmp_path / "ds")
    assert ds.format == "mmap"  # manifests and messages use the canonical name
    assert sorted(os.listdir(tmp_path / "ds")) == ["manifest.json", "shard-00000.mmap"]
    assert get_backend("raw") is get_backend("mmap")
    np.testing.assert_array_equal(ds.read_batch(range(6))["x"], np.arange(6))


def test_a_dataset_of_an_unregistered_backend_says_to_register_it(tmp_path, npy) -> None:
    with shardio.ShardWriter(tmp_path / "ds", format="npy") as writer:
        writer.write_batch({"x": np.arange(6)})
    unregister_backend("npy")
    try:
        with pytest.raises(shardio.ManifestError, match=r"got 'npy' .*register_backend"):
            shardio.ShardedDataset(tmp_path / "ds")
    finally:
        register_backend(NPY)  # for the fixture to remove
