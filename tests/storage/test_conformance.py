"""Every adapter against ground truth written without it (shardio.tools.testing's harness)."""

from __future__ import annotations

import gc
import mmap
import os
import subprocess
import sys
from pathlib import Path

from shardio import ShardedDataset
from shardio.tools.testing import SOURCES, AdapterTests, Truth, assert_sample_equal


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


def test_lmdb_advise_after_another_readers_map_of_the_file_is_gone(tmp_path: Path) -> None:
    """The harness found it: madvise on a map of data.mdb that another reader closed."""
    truth = SOURCES["lmdb"](str(tmp_path))
    mapping_reader = ShardedDataset(truth.path)  # maps data.mdb itself (offsets table)
    mapping_reader[0]
    budgeted = ShardedDataset(truth.path, max_rss=1)  # the same environment, read by pread
    budgeted[0]
    reader = budgeted.reader.shard(0)
    assert len(reader.handle.mapped()) == 2
    del mapping_reader
    gc.collect()
    assert reader.release_memory("advise").advise_calls == 1
    assert_sample_equal(budgeted[5], truth.sample(5))


def test_importing_shardio_loads_neither_the_harness_nor_pytest() -> None:
    code = (
        "import sys, shardio, shardio.tools.cli, shardio.convert, shardio.loading.sampling\n"
        "print(sorted(m for m in ('pytest', 'shardio.tools.testing') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_lmdb_advise_never_touches_memory_mapped_where_an_old_map_was(tmp_path: Path) -> None:
    """A map of data.mdb another reader closed may leave its addresses to new memory (an
    anonymous map the allocator makes there): madvise(DONTNEED) on a mapping found
    before would zero that memory. The mappings are looked up at each release."""
    truth = SOURCES["lmdb"](str(tmp_path))
    mapping_reader = ShardedDataset(truth.path)  # maps data.mdb itself (offsets table)
    mapping_reader[0]
    budgeted = ShardedDataset(truth.path, max_rss=1)
    budgeted[0]
    reader = budgeted.reader.shard(0)
    found = reader.handle.mapped()
    own = [m for m in found if m.length == os.path.getsize(reader.handle.data_file)]
    assert own  # shardio's own map of the file, among the environment's
    del mapping_reader
    gc.collect()
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS  # as malloc maps large blocks
    ballasts = [mmap.mmap(-1, m.length, flags=private) for m in own for _ in range(4)]
    for ballast in ballasts:
        ballast.write(b"\1" * len(ballast))
    reader.release_memory("advise")
    assert all(ballast[:] == b"\1" * len(ballast) for ballast in ballasts)
    assert_sample_equal(budgeted[5], truth.sample(5))
