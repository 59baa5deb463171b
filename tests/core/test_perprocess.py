"""PerProcess: one value per process, made once by racing threads, never shared with a
forked child or a pickled copy; and the shard readers that keep their handles in it."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest

import shardio
from shardio.core.perprocess import PerProcess
from shardio.storage.adapters.registry import reader_class

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _in_child(work: Any) -> str:
    """Run ``work()`` in a forked child (at most 20 s) and return what it printed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            signal.alarm(20)  # a hang fails the test instead of stalling the suite
            os.write(write, str(work()).encode())
        except BaseException as exc:  # reported to the parent, which fails the test
            os.write(write, f"error: {exc!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        out = handle.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child died: status {status}, said {out!r}"
    return out


def test_threads_racing_make_one_value() -> None:
    made: list[object] = []
    barrier = threading.Barrier(8)

    def make() -> object:
        time.sleep(0.05)  # long enough for every thread to arrive meanwhile
        made.append(object())
        return made[-1]

    holder: PerProcess[object] = PerProcess()
    got: list[object] = []

    def ask() -> None:
        barrier.wait()
        got.append(holder.get(make))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1
    assert len(got) == 8 and all(value is made[0] for value in got)


def test_forked_child_makes_its_own_and_leaves_the_parents_alone() -> None:
    holder: PerProcess[list[str]] = PerProcess()
    parent_value = holder.get(lambda: ["parent"])

    def child() -> str:
        assert holder.current() is None  # the parent's value is not the child's
        assert holder.take() is None  # nor handed out to close
        mine = holder.get(lambda: ["child"])
        return f"{mine[0]} {holder.get(lambda: ['again'])[0]}"

    assert _in_child(child) == "child child"
    assert holder.current() is parent_value
    assert parent_value == ["parent"]


def test_on_inherited_sees_the_parents_value_in_the_child() -> None:
    holder: PerProcess[dict[str, int]] = PerProcess()
    holder.get(lambda: {"parent": os.getpid()})

    def child() -> str:
        seen: list[dict[str, int]] = []
        value = holder.get(lambda: {"child": os.getpid()}, on_inherited=seen.append)
        return f"{sorted(seen[0])} {sorted(value)}"

    assert _in_child(child) == "['parent'] ['child']"


def test_a_pickled_copy_carries_no_value() -> None:
    holder: PerProcess[str] = PerProcess()
    holder.get(lambda: "handle")
    copy = pickle.loads(pickle.dumps(holder))
    assert copy.current() is None
    assert copy.get(lambda: "new") == "new"
    assert holder.take() == "handle"
    assert holder.current() is None


def test_a_lock_held_by_a_parent_thread_at_fork_does_not_hang_the_child() -> None:
    holder: PerProcess[str] = PerProcess()
    inside, release = threading.Event(), threading.Event()

    def slow_make() -> str:
        inside.set()
        release.wait(10)
        return "parent"

    thread = threading.Thread(target=lambda: holder.get(slow_make))
    thread.start()
    assert inside.wait(10)  # the thread holds the lock while it makes the value
    try:
        out = _in_child(lambda: holder.get(lambda: "child"))
    finally:
        release.set()
        thread.join()
    assert out == "child"
    assert holder.current() == "parent"


@pytest.mark.parametrize("fmt", ["lmdb", "mmap", "hdf5", "zarr"])
def test_threads_racing_to_open_one_shard_open_it_once(tmp_path, fmt: str) -> None:
    values = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    with shardio.ShardWriter(tmp_path / "ds", format=fmt) as writer:
        writer.write_batch({"x": values})
    shard = str(next(p for p in (tmp_path / "ds").iterdir() if p.name.startswith("shard-")))
    base = reader_class(fmt)
    opens: list[int] = []

    class Counting(base):  # type: ignore[misc, valid-type]
        def _open(self) -> Any:
            opens.append(threading.get_ident())
            time.sleep(0.05)
            return super()._open()

    reader = Counting(shard)
    barrier = threading.Barrier(6)
    rows: dict[int, np.ndarray] = {}

    def read(start: int) -> None:
        barrier.wait()
        indices = np.arange(start, 64, 6)
        rows[start] = reader.read_many(indices)["x"]

    threads = [threading.Thread(target=read, args=(start,)) for start in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader.close()
    assert len(opens) == 1
    assert sorted(rows) == list(range(6))
    for start, got in rows.items():
        np.testing.assert_array_equal(got, values[start::6])


def test_pickling_a_reader_after_reading_carries_no_handle(tmp_path) -> None:
    with shardio.ShardWriter(tmp_path / "ds", format="mmap") as writer:
        writer.write_batch({"x": np.arange(10, dtype=np.int64)})
    ds = shardio.ShardedDataset(tmp_path / "ds")
    assert int(ds[3]["x"]) == 3
    copy = pickle.loads(pickle.dumps(ds))
    reader = copy.reader.shard(0)
    assert not reader.is_open
    assert int(copy[7]["x"]) == 7 and reader.is_open
    ds.close()
    copy.close()


@pytest.mark.parametrize("fmt", ["lmdb", "mmap"])
def test_a_child_forked_while_a_thread_holds_the_readers_lock_reads(tmp_path, fmt: str) -> None:
    """A thread loader (or the Prefetcher) may hold a dataset's lock at the moment a
    DataLoader forks a worker over the same dataset: the worker must not hang."""
    with shardio.ShardWriter(tmp_path / "ds", format=fmt, shard_size="1KB") as writer:
        writer.write_batch({"x": np.arange(400, dtype=np.int64)})
    ds = shardio.ShardedDataset(tmp_path / "ds")
    assert int(ds[5]["x"]) == 5  # opened in the parent, as before a DataLoader forks
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ds.reader._lock:
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert inside.wait(10)
    try:
        out = _in_child(lambda: ds.read_batch([399, 0, 123])["x"].tolist())
    finally:
        release.set()
        thread.join()
    assert out == "[399, 0, 123]"
