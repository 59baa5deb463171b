"""Every adapter against ground truth written without it (shardio.testing's harness)."""

from __future__ import annotations

from shardio.testing import SOURCES, AdapterTests, Truth


class TestHDF5(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["hdf5"](directory)


class TestHDF5ShardioLayout(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["hdf5-shardio"](directory)


class TestZarr(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["zarr"](directory)


class TestZarrShardioLayout(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["zarr-shardio"](directory)


class TestZarrVariableLength(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["zarr-variable"](directory)


class TestLMDBWithOffsets(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["lmdb"](directory)


class TestLMDBWithoutOffsets(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["lmdb-btree"](directory)


class TestLMDBForeign(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["lmdb-foreign"](directory)


class TestMmap(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["mmap"](directory)


class TestShardedMmap(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["sharded-mmap"](directory)


class TestShardedLMDB(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return SOURCES["sharded-lmdb"](directory)
