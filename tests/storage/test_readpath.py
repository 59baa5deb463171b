"""The read path from `ShardedDataset.__getitems__` to a backend: its depth, and that a
memory budget never closes a shard another thread reads (docs/architecture.md)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest

import shardio
from shardio import ShardedDataset, ShardWriter
from shardio.loading.batches import Batch

#: The functions that call into the backend's library or the kernel: the adapters'
#: and the positioned-read layer's.
_BACKEND_CALLS = {"_read_by_offsets", "_read_through_map", "take_rows", "read_rows", "pread_rows"}
_ROOT = shardio.__path__[0]


def shardio_frames_to_backend(ds: ShardedDataset, indices: list[int]) -> list[str]:
    """The shardio frames on the stack when the backend is called, from `__getitems__`
    down to (and with) the function that makes the call: the deepest such stack."""
    seen: list[list[str]] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or frame.f_code.co_name not in _BACKEND_CALLS:
            return
        names: list[str] = []
        at: FrameType | None = frame
        while at is not None:
            if at.f_code.co_filename.startswith(_ROOT):
                names.append(at.f_code.co_qualname)
            if at.f_code.co_name == "__getitems__":
                break
            at = at.f_back
        seen.append(names[::-1])

    ds.__getitems__(indices)  # shards opened: the steady state is measured
    sys.setprofile(profile)
    try:
        ds.__getitems__(indices)
    finally:
        sys.setprofile(None)
    assert seen, "no backend call was seen"
    deepest = max(seen, key=len)
    assert deepest[0] == "ShardedDataset.__getitems__"
    return deepest


def _write(path: Any, fmt: str, rows: int = 60) -> np.ndarray:
    data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    with ShardWriter(path, format=fmt, shard_size=rows * 8) as writer:
        writer.write_batch({"x": data, "y": np.arange(rows)})
    return data


@pytest.mark.parametrize("fmt", ["lmdb", "mmap", "hdf5"])
@pytest.mark.parametrize("budget", [None, "64MB"])
def test_a_batch_reaches_the_backend_within_five_frames(
    tmp_path: Path, fmt: str, budget: str | None
) -> None:
    data = _write(tmp_path / "ds", fmt)
    options: dict[str, Any] = {} if budget is None else {"max_rss": budget}
    ds = ShardedDataset(tmp_path / "ds", **options)
    assert len(ds.shard_lengths) >= 3
    starts = np.cumsum((0, *ds.shard_lengths))
    indices = [int(starts[n]) + 1 for n in range(3)]  # one sample in each of 3 shards
    frames = shardio_frames_to_backend(ds, indices)
    assert len(frames) <= 5, frames
    batch = ds.__getitems__(indices)
    assert isinstance(batch, Batch)
    np.testing.assert_array_equal(np.asarray(batch.columns["x"]), data[indices])


def test_a_budget_closes_no_shard_another_thread_reads(tmp_path: Path) -> None:
    """max_rss=1 releases after every read; with HDF5 in pread mode a release closes
    the file, which must wait until no thread reads it (it was "Bad file descriptor")."""
    data = _write(tmp_path / "ds", "hdf5", rows=300)
    ds = ShardedDataset(tmp_path / "ds", max_rss=1)
    errors: list[BaseException] = []
    got: list[bool] = []

    def read(seed: int) -> None:
        order = np.random.default_rng(seed).permutation(len(data))
        try:
            for start in range(0, len(order), 7):
                chunk = order[start : start + 7]
                batch = ds.read_batch(chunk)
                got.append(bool(np.array_equal(batch["x"], data[chunk])))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(got) == 4 * 43 and all(got)
    assert ds.memory_stats()["reopens"] > 0  # the budget did close files


@pytest.mark.parametrize("fmt", ["lmdb", "mmap", "hdf5"])
def test_an_unknown_read_mode_is_refused_when_the_dataset_is_made(tmp_path: Path, fmt: str) -> None:
    """One check for every backend with a read mode: LMDB and HDF5 took any other
    value as "map"; the dataset refuses it before any shard opens."""
    _write(tmp_path / "ds", fmt)
    with pytest.raises(
        shardio.InvalidOptionError, match=r"'map' or 'pread', but got read_mode='mapped'"
    ):
        ShardedDataset(tmp_path / "ds", read_mode="mapped")


@pytest.mark.parametrize("fmt", ["lmdb", "mmap", "hdf5"])
@pytest.mark.parametrize("mode", ["map", "pread"])
def test_touching_mapped_pages_is_declared_without_opening(
    tmp_path: Path, fmt: str, mode: str
) -> None:
    """The budget asks a reader whether reads fault mapped pages: a declared answer
    (the class and its read mode) that opens nothing, and is true of the open reader."""
    data = _write(tmp_path / "ds", fmt)
    ds = ShardedDataset(tmp_path / "ds", read_mode=mode)
    path = ds.reader.shard_paths[0]
    reader = ds.reader._reader_class(path, read_mode=mode)
    assert reader.touches_mapped_pages == (mode == "map")
    assert not reader.is_open
    np.testing.assert_array_equal(reader.read_many(np.array([2, 0]))["x"], data[[2, 0]])
    assert reader.touches_mapped_pages == (mode == "map")  # the positioned rows' map
    reader.close()


@pytest.mark.parametrize("offset", [-8, 1000 - 7])
def test_a_mapped_row_outside_the_file_is_refused(tmp_path: Path, offset: int) -> None:
    """A damaged table of positions: a row past the end or before the start of the file
    is an error naming the file, not a short or wrapped copy."""
    from shardio.storage.adapters.positioned import PositionedFile

    path = tmp_path / "rows.bin"
    path.write_bytes(bytes(range(250)) * 4)
    rows = np.zeros((2, 8), dtype=np.uint8)
    values = PositionedFile(str(path), "map")
    try:
        values.read_rows(np.array([8, 16]), [rows])
        assert rows.tolist() == [list(range(8, 16)), list(range(16, 24))]
        with pytest.raises(shardio.ShardCorruptError, match=r"rows\.bin: a row lies outside"):
            values.read_rows(np.array([0, offset]), [rows])
    finally:
        values.close()


@pytest.mark.parametrize("mode", ["map", "pread"])
def test_positioned_rows_of_one_size_come_back_at_their_row_numbers(
    tmp_path: Path, mode: str
) -> None:
    """`take_rows` (raw mmap's fixed fields): rows by number, scattered or a run, into
    arrays of any dtype and row shape; `read_at` (its variable values): a byte range."""
    from shardio.storage.adapters.positioned import PositionedFile

    table = np.arange(40 * 6, dtype=np.float32).reshape(40, 2, 3)
    path = tmp_path / "rows.bin"
    path.write_bytes(table.tobytes())
    values = PositionedFile(str(path), mode)  # type: ignore[arg-type]
    try:
        assert values.mapped == (mode == "map")
        for rows in (np.array([39, 0, 7, 7]), np.arange(5, 12)):  # scattered, a run
            out = np.full((len(rows), 2, 3), -1, dtype=np.float32)
            assert values.take_rows(rows, out) is out
            np.testing.assert_array_equal(out, table[rows])
        flat = np.empty((2, 6), dtype=np.float32)  # another row shape: read as such
        np.testing.assert_array_equal(
            values.take_rows(np.array([3, 1]), flat), table[[3, 1]].reshape(2, 6)
        )
        as_bytes = values.take_rows(np.array([2]), np.empty((1, 24), np.uint8))
        assert as_bytes.tobytes() == table[2].tobytes()
        assert values.take_rows(np.array([], dtype=np.int64), np.empty((0, 2, 3))).shape == (
            0,
            2,
            3,
        )
        span = values.read_at(4 * 5, np.empty(4, dtype=np.float32))
        np.testing.assert_array_equal(span, table.reshape(-1)[5:9])
    finally:
        values.close()


def test_positioned_reads_refuse_a_file_truncated_since_it_was_mapped(tmp_path: Path) -> None:
    """Rows read past a mapped file's new end would kill the process (SIGBUS): the layer
    checks the size first and names the file; pread reads say it ended early."""
    from shardio.storage.adapters.positioned import PositionedFile

    path = tmp_path / "rows.bin"
    path.write_bytes(bytes(range(256)) * 16)
    mapped, read = PositionedFile(str(path), "map"), PositionedFile(str(path), "pread")
    try:
        out = np.empty((2, 16), np.uint8)
        rows = mapped.take_rows(np.array([1, 255]), out).tobytes()
        assert rows == bytes(range(16, 32)) + bytes(range(240, 256))
        os.truncate(path, 1024)
        with pytest.raises(shardio.ShardCorruptError, match=r"rows\.bin was truncated while open"):
            mapped.take_rows(np.array([0, 1]), out)
        with pytest.raises(shardio.ShardCorruptError, match=r"rows\.bin was truncated while open"):
            mapped.read_at(0, out)
        with pytest.raises(shardio.ShardCorruptError, match=r"rows\.bin ended early"):
            read.take_rows(np.array([63, 64]), out)  # a run
        with pytest.raises(shardio.ShardCorruptError, match=r"rows\.bin ends inside the row"):
            read.take_rows(np.array([70, 3]), out)
        np.testing.assert_array_equal(read.take_rows(np.array([3, 0]), out)[0], np.arange(48, 64))
    finally:
        mapped.close()
        read.close()


def test_closing_a_positioned_file_still_in_use_closes_its_descriptor(tmp_path: Path) -> None:
    """An array over the map keeps the map alive (BufferError), never the descriptor."""
    from shardio.storage.adapters.positioned import PositionedFile

    path = tmp_path / "rows.bin"
    path.write_bytes(bytes(64))
    values = PositionedFile(str(path), "map")
    held = values.array(np.dtype(np.uint8), 64)
    fd = values.fd
    with pytest.raises(BufferError):
        values.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    assert held.sum() == 0 and not values.mapped


def test_a_backend_librarys_error_names_the_shard_in_read_and_read_many(tmp_path: Path) -> None:
    """What zarr raises on a cut chunk (a ValueError) comes out of `read` and `read_many`
    as one `ShardCorruptError` naming the shard, the library's error chained."""
    _write(tmp_path / "ds", "zarr")
    for chunk in (tmp_path / "ds").glob("shard-00000.zarr/x/c/*/*"):
        os.truncate(chunk, 5)
    ds = ShardedDataset(tmp_path / "ds", verify="off", verify_sizes=False)
    shard = str(tmp_path / "ds" / "shard-00000.zarr")
    for read in (lambda: ds.read_batch([0, 1]), lambda: ds[1]):
        with pytest.raises(shardio.ShardCorruptError, match="cannot be read: ValueError") as error:
            read()
        assert shard in str(error.value)
        assert isinstance(error.value.__cause__, ValueError)
