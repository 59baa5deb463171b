"""Worker hand-over: batches travel through reused shared-memory slots, safely."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shardio import ShardedDataset
from shardio.loading.handover import MAX_SLOTS, SLOTS, handover_stats
from shardio.tools.testing.groundtruth import SOURCES, Truth

torch.set_num_threads(1)

CHILD = os.path.join(os.path.dirname(os.path.dirname(__file__)), "handover_child.py")


def assert_same(batch: dict[str, Any], columns: dict[str, Any]) -> None:
    assert list(batch) == list(columns)
    for name, column in columns.items():
        if isinstance(column, np.ndarray):
            np.testing.assert_array_equal(batch[name].numpy(), column, err_msg=name)
        else:
            assert len(batch[name]) == len(column), name
            for got, want in zip(batch[name], column, strict=True):
                assert got == want if isinstance(want, bytes) else np.array_equal(got, want)


def check_kept(loader: DataLoader[Any], ds: ShardedDataset, order: list[int], size: int) -> int:
    """Every batch kept while later ones arrive still holds what read_batch reads."""
    kept = list(loader)
    starts = range(0, len(order), size)
    for batch, start in zip(kept, starts, strict=True):
        assert_same(batch, ds.read_batch(order[start : start + size]))
    return len(kept)


def test_kept_batches_stay_intact_while_slots_are_reused(tmp_path: Any) -> None:
    truth = SOURCES["mmap"](str(tmp_path))
    ds = ShardedDataset(truth.path)
    order = np.random.default_rng(4).permutation(len(ds)).tolist()
    before = handover_stats()["received"]
    # More batches than a ring has slots, several epochs of the same workers, a deep
    # prefetch (the ring grows) and batches of two sizes (the last one is short).
    loader = DataLoader(
        ds, batch_size=6, sampler=order, num_workers=2, persistent_workers=True, prefetch_factor=6
    )
    batches = -(-len(ds) // 6)
    assert batches > 2 * MAX_SLOTS // 2 > SLOTS
    for _ in range(2):
        assert check_kept(loader, ds, order, 6) == batches
    assert handover_stats()["received"] - before == 2 * batches  # all through slots
    # Views of a batch's tensors keep its memory as well: nothing reuses it meanwhile.
    fixed = [n for n in truth.names if n not in truth.variable]
    views = [{n: b[n][1:3] for n in fixed} for b in loader]
    for view, start in zip(views, range(0, len(order), 6), strict=True):
        want = ds.read_batch(order[start : start + 6])
        for name in fixed:
            np.testing.assert_array_equal(view[name].numpy(), want[name][1:3], err_msg=name)


def test_transformed_and_custom_collated_batches_stay_correct(tmp_path: Any) -> None:
    truth = SOURCES["mmap"](str(tmp_path))
    fixed = [n for n in truth.names if n not in truth.variable]
    label = next(n for n in fixed if n.endswith("label"))
    ds = ShardedDataset(truth.path, fields=fixed)
    # A collate_fn that never sends the batch: its slot is freed in the worker.
    sums = list(DataLoader(ds, batch_size=4, num_workers=1, collate_fn=lambda b: len(b)))
    assert sum(sums) == len(ds)
    # A collate_fn that sends the Batch itself: its columns travel by value, kept intact.
    kept = list(DataLoader(ds, batch_size=4, num_workers=2, collate_fn=lambda b: b))
    for batch, start in zip(kept, range(0, len(ds), 4), strict=True):
        for name, column in ds.read_batch(range(start, min(start + 4, len(ds)))).items():
            np.testing.assert_array_equal(batch.columns[name], column, err_msg=name)
    assert len(kept) == -(-len(ds) // 4)

    def double(batch: dict[str, Any]) -> dict[str, Any]:
        return {"y": batch[label] * 2, "x": batch[label]}

    doubled = ShardedDataset(truth.path, fields=fixed, batch_transform=double)
    got = torch.cat([b["x"] for b in DataLoader(doubled, batch_size=4, num_workers=2)])
    np.testing.assert_array_equal(got.numpy(), truth.columns[label])


@pytest.mark.parametrize(
    "source,context",
    [
        pytest.param(s, c, marks=pytest.mark.slow)
        for s in ("mmap", "sharded-lmdb", "hdf5", "zarr-variable")
        for c in ("forkserver", "spawn")
    ],
)
def test_started_workers_equal_read_batch(tmp_path: Any, source: str, context: str) -> None:
    truth: Truth = SOURCES[source](str(tmp_path))
    ds = ShardedDataset(truth.path, **truth.options)
    order = np.random.default_rng(5).permutation(len(ds)).tolist()
    loader = DataLoader(
        ds, batch_size=8, sampler=order, num_workers=2, multiprocessing_context=context
    )
    assert check_kept(loader, ds, order, 8) == -(-len(ds) // 8)


# ---------------------------------------------------------------- from outside
def _shm_of(pids: list[int]) -> list[str]:
    """Segments torch named for these processes that are still in /dev/shm."""
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return [n for n in names if any(n.startswith(f"torch_{pid}_") for pid in pids)]


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{pid}") for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _run_child(path: str, context: str, mode: str) -> tuple[list[int], str]:
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [sys.executable, CHILD, path, context, mode],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert process.stdout is not None
        first = process.stdout.readline().split()
        errors.seek(0)
        assert first[:1] == ["workers"], errors.read()
        workers = [int(p) for p in first[1:]]
        assert len(workers) == 2
        if mode == "hang":
            process.kill()  # kill -9 of the main process
            process.wait(timeout=30)
            return [process.pid, *workers], ""
        out = process.stdout.read()  # the same buffer as readline: nothing is skipped
        process.wait(timeout=120)
        errors.seek(0)
        assert process.returncode == 0, errors.read()
        return [process.pid, *workers], out


@pytest.mark.parametrize(
    "mode",
    ["kill-worker", *(pytest.param(m, marks=pytest.mark.slow) for m in ("end", "error", "break"))],
)
def test_nothing_left_behind(tmp_path: Any, mode: str) -> None:
    truth = SOURCES["mmap"](str(tmp_path))
    pids, out = _run_child(truth.path, "fork", mode)
    assert out.splitlines()[-1] == "done"
    if mode in ("error", "kill-worker"):
        assert "error" in out
    assert _gone(pids, timeout=20)
    assert _shm_of(pids) == []


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_nothing_left_after_kill_9_of_the_main_process(tmp_path: Any, context: str) -> None:
    truth = SOURCES["mmap"](str(tmp_path))
    pids, _ = _run_child(truth.path, context, "hang")
    assert _gone(pids, timeout=30)  # workers notice their parent is gone
    assert _shm_of(pids) == []


class _Pair(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


class _Box:
    """An object of the user's own class: the hand-over cannot look inside."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


def test_returns_and_batch_transform_outputs_travel_through_slots(tmp_path: Any) -> None:
    """Tuples from returns=, new tensors from a batch_transform, named tuples and
    objects of the user's own class: every batch kept equals what read_batch reads."""
    truth = SOURCES["mmap"](str(tmp_path))
    fixed = [n for n in truth.names if n not in truth.variable]
    label = next(n for n in fixed if n.endswith("label"))
    order = np.random.default_rng(6).permutation(len(truth.columns[label])).tolist()
    want = [order[s : s + 4] for s in range(0, len(order), 4)]
    image = fixed[0]
    # (options, the batch's tensors as (tensor, field it should equal))
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"returns": (image, {"y": label})}, lambda b: [(b[0], image), (b[1]["y"], label)]),
        (
            {"batch_transform": lambda b: {"twice": b[label] * 2, "same": b[label]}},
            lambda b: [(b["twice"] // 2, label), (b["same"], label)],
        ),
        (
            {"batch_transform": lambda b: [b[image].double(), b[label][1:]]},
            lambda b: [(b[0].to(b[0].dtype), image), (b[1], label, 1)],
        ),
        (
            {"batch_transform": lambda b: _Pair(b[image], b[label] + 1)},
            lambda b: [(b.x, image), (b.y - 1, label)],
        ),
        ({"batch_transform": lambda b: _Box(b[label])}, lambda b: [(b.value, label)]),
    ]
    for options, unpack in cases:
        ds = ShardedDataset(truth.path, fields=fixed, **options)
        before = handover_stats()["received"]
        kept = list(DataLoader(ds, batch_size=4, sampler=order, num_workers=2))
        assert len(kept) == len(want) > MAX_SLOTS
        for batch, indices in zip(kept, want, strict=True):
            for got, name, *skip in unpack(batch):
                expected = truth.columns[name][indices][skip[0] if skip else 0 :]
                np.testing.assert_array_equal(got.numpy(), expected, err_msg=name)
        through_slots = handover_stats()["received"] - before
        kind = type(kept[0]).__name__
        assert through_slots == (len(want) if kind in ("tuple", "dict", "list") else 0), kind


def test_the_loop_holds_views_of_slots_until_it_frees_them(tmp_path: Any) -> None:
    """Batches arrive as views of their slots: a kept batch keeps its slot (workers grow
    their rings, then send fresh segments), a freed one gives it back."""
    truth = SOURCES["mmap"](str(tmp_path))
    ds = ShardedDataset(truth.path)
    order = np.random.default_rng(9).permutation(len(ds)).tolist()
    loader = DataLoader(ds, batch_size=1, sampler=order, num_workers=2, prefetch_factor=4)
    before = handover_stats()["received"]
    kept = list(loader)  # 97 batches held: more than the rings of 2 workers grow to
    assert len(kept) == len(ds) > 2 * (SLOTS + 2 * SLOTS + MAX_SLOTS)
    slots = handover_stats()["received"] - before
    assert 2 * SLOTS <= slots < len(ds)  # the rest came in fresh segments
    for batch, start in zip(kept, range(len(order)), strict=True):
        assert_same(batch, ds.read_batch(order[start : start + 1]))
    del kept, batch
    before = handover_stats()["received"]
    for batch, start in zip(loader, range(len(order)), strict=True):
        assert_same(batch, ds.read_batch(order[start : start + 1]))
    assert handover_stats()["received"] - before == len(ds)  # all through slots


def test_a_handed_batch_pickled_twice_is_copied_the_second_time() -> None:
    """A collate_fn that returns the same batch object twice (cached): the second
    message must not show a slot the first receiver may already have given back."""
    from shardio.loading.handover import SlotLease, _ring_for, hand_over

    found = _ring_for(4096)
    assert found is not None
    lease = SlotLease(*found)
    tensor = torch.from_numpy(found[0].bytes.numpy()[lease.start : lease.start + 8])
    tensor[:] = torch.arange(8, dtype=torch.uint8)
    handed = hand_over({"x": tensor}, lease)
    once = handed.__reduce__()
    assert once[0].__name__ == "_receive" and lease.sent
    again = handed.__reduce__()
    assert again[0].__name__ == "_same"
    copy = again[1][0]["x"]
    assert torch.equal(copy, tensor) and copy.data_ptr() != tensor.data_ptr()


def test_a_batch_of_the_slots_own_tensors_goes_as_a_short_message(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual batch (the slot's own tensors, after returns=) pickles as the slot's
    number and the layout's; a transform that changes a tensor in place sends the
    general message instead. Both arrive equal to what read_batch reads."""
    from multiprocessing.reduction import ForkingPickler

    from shardio.loading import handover
    from shardio.loading.batches import Batch

    monkeypatch.setattr(handover, "_ring", None)  # a ring of this test's own
    truth = SOURCES["mmap"](str(tmp_path))
    fixed = [n for n in truth.names if n not in truth.variable]
    image, label = fixed[0], next(n for n in fixed if n.endswith("label"))
    indices = [5, 0, 3, 2]

    def unsqueezed(batch: dict[str, Any]) -> dict[str, Any]:
        batch[label].unsqueeze_(1)
        return batch

    cases: list[tuple[dict[str, Any], str, Any]] = [
        ({}, "_receive_flat", lambda b: {n: b[n] for n in fixed}),
        ({"returns": (label, image)}, "_receive_flat", lambda b: {label: b[0], image: b[1]}),
        ({"returns": {"y": label}}, "_receive_flat", lambda b: {label: b["y"]}),
        ({"batch_transform": unsqueezed}, "_receive", lambda b: {n: b[n] for n in fixed}),
    ]
    for options, receiver, fields in cases:
        ds = ShardedDataset(truth.path, fields=fixed, **options)
        want = ds.reader.read_many(indices)
        for _ in range(3):  # the layout travels once per ring, then only its number
            arrays, tensors, lease = handover.slot_columns(ds.schema, len(indices))
            assert lease is not None
            columns = ds.reader.read_many(indices, out=arrays)
            batch = Batch(columns, len(indices), tensors, ds._per_batch, lease).collate()
            message = bytes(ForkingPickler.dumps(batch))
            assert (b"_receive_flat" in message) == (receiver == "_receive_flat")
            assert b"_receive" in message
            got = fields(ForkingPickler.loads(message))
            del batch
            for name, tensor in got.items():
                expected = want[name]
                if "batch_transform" in options and name == label:
                    expected = expected[:, None]
                np.testing.assert_array_equal(tensor.numpy(), expected, err_msg=name)


def test_a_mix_with_a_batch_transform_hands_over_through_slots(tmp_path: Any) -> None:
    """A `Mix` read by workers with a batch_transform uses the slots too (no segment per
    batch): every batch arrives through a slot, equal to what its sources hold."""
    from shardio import Mix, ShardWriter

    for number in range(2):
        with ShardWriter(tmp_path / str(number), format="mmap") as writer:
            writer.write_batch({"x": np.arange(40, dtype=np.int64) + 1000 * number})
    sources = {str(n): ShardedDataset(tmp_path / str(n)) for n in range(2)}
    mix = Mix(sources, weights={"0": 0.5, "1": 0.5}, seed=1, batch_transform=lambda b: b)
    order = np.random.default_rng(2).permutation(len(mix)).tolist()
    before = handover_stats()["received"]
    got = [b["x"] for b in DataLoader(mix, batch_size=8, sampler=order, num_workers=2)]
    assert handover_stats()["received"] - before == len(got) == len(order) // 8
    sources_of, local = mix.source_of(order)
    want = (sources_of * 1000 + local).tolist()
    assert torch.cat(got).tolist() == want


def test_many_batch_sizes_keep_their_own_layouts(tmp_path: Any) -> None:
    """More batch sizes than the layout caches hold (they are cleared and remade, rings
    grow for larger batches): each short message still names its own places."""
    truth = SOURCES["mmap"](str(tmp_path))
    ds = ShardedDataset(truth.path)
    rng = np.random.default_rng(10)
    sizes = [*range(1, 80), *range(79, 0, -3)]
    batches = [rng.integers(0, len(ds), size).tolist() for size in sizes]
    before = handover_stats()["received"]
    loader = DataLoader(ds, batch_sampler=batches, num_workers=2, persistent_workers=True)
    for _ in range(2):
        count = 0
        for batch, indices in zip(loader, batches, strict=True):
            assert_same(batch, ds.read_batch(indices))
            count += 1
        assert count == len(batches)
    assert handover_stats()["received"] - before == 2 * len(batches)


def test_a_layout_number_stands_for_its_places() -> None:
    """Layout numbers go by the places (a layout object's id may be reused once it is
    gone): equal places, one number; other places, another."""
    from shardio.loading.blocks import Layout
    from shardio.loading.handover import _Ring

    ring = _Ring(8192, 2)
    first: Layout = {"x": (0, np.dtype("<i8"), (4,))}
    number = ring.views_for(0, first).number
    assert ring.views_for(0, {"x": (0, np.dtype("<f4"), (4,))}).number != number
    assert ring.views_for(1, dict(first)).number == number
    assert ring.views_for(0, {"y": (0, np.dtype("<i8"), (4,))}).number == number  # keys travel
