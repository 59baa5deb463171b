"""Prefetcher: read-ahead, structure, conversion, lifecycle, errors; CUDA tests marked gpu."""

from __future__ import annotations

import ast
import gc
import multiprocessing
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections import OrderedDict, defaultdict, namedtuple
from collections.abc import Callable, Iterator
from importlib.util import resolve_name
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

import shardio.loading.prefetch
from shardio import DeviceError, InvalidOptionError, Prefetcher
from shardio.loading.prefetch._staging import StagingPool
from shardio.loading.prefetch._structure import map_structure, to_tensor
from shardio.loading.prefetch.prefetcher import THREAD_NAME

Pair = namedtuple("Pair", ["image", "label"])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def prefetch_threads() -> int:
    return sum(thread.name == THREAD_NAME for thread in threading.enumerate())


def wait_for(condition: Callable[[], bool], deadline_s: float = 20.0) -> None:
    """Poll until ``condition`` holds; the deadline only guards against hanging forever."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.005)


class CountingLoader:
    """A re-iterable loader of numpy batches that counts how many batches were pulled."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0
        self.closed = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for i in range(self.n):
                self.pulled += 1
                yield {"x": np.full((2, 3), i, dtype=np.float32), "i": i}
        finally:
            self.closed += 1


class SquaresDataset(Dataset[dict[str, Any]]):
    """Sample i is {"x": [i, i*i], "index": i}; index 13 raises when ``fail`` is set."""

    def __init__(self, n: int, fail: bool = False) -> None:
        self.n = n
        self.fail = fail

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.fail and i == 13:
            raise ValueError(f"sample {i} is unreadable")
        return {"x": np.array([i, i * i], dtype=np.int64), "index": np.int64(i)}


def failing_loader() -> Iterator[np.ndarray]:
    yield np.zeros(2)
    yield np.ones(2)
    raise OSError("disk went away in failing_loader")


# --- structure and conversion ------------------------------------------------


def test_batches_arrive_in_order_as_tensors_with_their_structure() -> None:
    batches: list[dict[str, Any]] = [
        {
            "pair": Pair(np.full((2, 2), i, dtype=np.uint8), np.int64(i)),
            "list": [np.arange(3) + i, "caption", i],
            "tuple": (torch.full((1,), float(i)), b"raw"),
            "ordered": OrderedDict(b=np.float16(i), a=np.array([True, False])),
        }
        for i in range(4)
    ]
    got = list(Prefetcher(batches, device="cpu"))

    assert len(got) == 4
    for i, batch in enumerate(got):
        assert list(batch) == ["pair", "list", "tuple", "ordered"]
        pair = batch["pair"]
        assert type(pair) is Pair
        assert pair.image.dtype == torch.uint8 and torch.equal(
            pair.image, torch.full((2, 2), i, dtype=torch.uint8)
        )
        assert isinstance(pair.label, torch.Tensor) and pair.label.item() == i
        assert type(batch["list"]) is list
        assert torch.equal(batch["list"][0], torch.arange(3) + i)
        assert batch["list"][1:] == ["caption", i]
        assert type(batch["tuple"]) is tuple and batch["tuple"][1] == b"raw"
        assert batch["tuple"][0] is batches[i]["tuple"][0]  # CPU tensors pass through
        ordered = batch["ordered"]
        assert type(ordered) is OrderedDict and list(ordered) == ["b", "a"]
        assert ordered["b"].dtype == torch.float16 and ordered["b"].item() == i
        assert ordered["a"].tolist() == [True, False]


def test_mapping_subclass_keeps_its_state() -> None:
    batch: defaultdict[str, Any] = defaultdict(list, x=np.arange(2))
    out = map_structure(to_tensor, batch)
    assert type(out) is defaultdict and out.default_factory is list
    assert torch.equal(out["x"], torch.arange(2))


def test_writable_arrays_are_shared_and_awkward_ones_copied() -> None:
    writable = np.arange(6, dtype=np.int32)
    shared = to_tensor(writable)
    writable[0] = 100
    assert shared[0].item() == 100

    read_only = np.arange(6, dtype=np.int32)
    read_only.setflags(write=False)
    big_endian = np.arange(6, dtype=">f8")
    reversed_view = np.arange(6, dtype=np.int16)[::-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # from_numpy warns on read-only arrays
        outputs = [to_tensor(a) for a in (read_only, big_endian, reversed_view)]
    assert outputs[0].tolist() == list(range(6))
    outputs[0][0] = 7  # a private copy: writing must not touch the read-only array
    assert read_only[0] == 0
    assert outputs[1].dtype == torch.float64 and outputs[1].tolist() == list(range(6))
    assert outputs[2].tolist() == list(range(5, -1, -1))


def test_non_numeric_leaves_pass_through() -> None:
    strings = np.array(["a", "b"])
    objects = np.array([{"k": 1}], dtype=object)
    batch = {"s": strings, "o": objects, "n": None, "f": 1.5}
    out = map_structure(to_tensor, batch)
    assert out["s"] is strings and out["o"] is objects and out["n"] is None and out["f"] == 1.5


_leaves = st.one_of(
    st.integers(-5, 5).map(lambda n: np.arange(abs(n) + 1, dtype=np.int64) * n),
    st.floats(-1, 1, allow_nan=False).map(np.float32),
    st.text(max_size=3),
    st.integers(),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.tuples(children, children).map(lambda t: Pair(*t)),
        st.dictionaries(st.text(max_size=2), children, max_size=3),
    )


def _assert_converted(original: Any, converted: Any) -> None:
    if isinstance(original, (np.ndarray, np.generic)):
        assert isinstance(converted, torch.Tensor)
        np.testing.assert_array_equal(converted.numpy(), original)
    elif isinstance(original, dict):
        assert type(converted) is type(original) and list(converted) == list(original)
        for key in original:
            _assert_converted(original[key], converted[key])
    elif isinstance(original, (list, tuple)):
        assert type(converted) is type(original) and len(converted) == len(original)
        for a, b in zip(original, converted, strict=True):
            _assert_converted(a, b)
    else:
        assert converted == original


@settings(max_examples=60, deadline=None)
@given(st.recursive(_leaves, _containers, max_leaves=12))
def test_any_nesting_keeps_its_shape(batch: Any) -> None:
    _assert_converted(batch, map_structure(to_tensor, batch))


# --- read-ahead ----------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 3])
def test_reads_ahead_exactly_depth_batches(depth: int) -> None:
    loader = CountingLoader(20)
    iterator = iter(Prefetcher(loader, device="cpu", depth=depth))
    first = next(iterator)
    assert first["i"] == 0
    # 1 consumed + `depth` waiting + 1 prepared and blocked on the full channel.
    wait_for(lambda: loader.pulled == depth + 2)
    time.sleep(0.1)  # give an unbounded read-ahead the chance to show itself
    assert loader.pulled == depth + 2
    rest = [batch["i"] for batch in iterator]
    assert rest == list(range(1, 20))


def test_transform_runs_on_the_read_ahead_thread() -> None:
    threads: list[str] = []

    def to_half(batch: dict[str, Any]) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return {**batch, "x": batch["x"].to(torch.bfloat16)}

    got = list(Prefetcher(CountingLoader(5), device="cpu", transform=to_half))
    assert [b["x"].dtype for b in got] == [torch.bfloat16] * 5
    assert [b["x"][0, 0].item() for b in got] == [0, 1, 2, 3, 4]
    assert threads == [THREAD_NAME] * 5


def test_stats_count_batches() -> None:
    prefetcher = Prefetcher(CountingLoader(7), device="cpu")
    assert sum(1 for _ in prefetcher) == 7
    assert prefetcher.stats.batches == 7
    assert prefetcher.stats.wait_seconds >= 0.0
    assert prefetcher.stats.staged_bytes == 0  # no staging on the CPU


# --- length and lifecycle --------------------------------------------------------


def test_len_follows_the_loader() -> None:
    loader = DataLoader(SquaresDataset(10), batch_size=4)
    assert len(Prefetcher(loader, device="cpu")) == len(loader) == 3
    with pytest.raises(TypeError, match="has no len"):
        len(Prefetcher(iter([1, 2]), device="cpu"))
    # list() must still work without a length (it treats TypeError as "unknown").
    assert len(list(Prefetcher(iter([np.zeros(1)] * 3), device="cpu"))) == 3


def test_break_stops_the_thread_and_closes_the_loader_then_restarts() -> None:
    baseline = threading.active_count()
    loader = CountingLoader(50)
    prefetcher = Prefetcher(loader, device="cpu", depth=2)
    for epoch in range(3):
        for batch in prefetcher:
            assert prefetch_threads() == 1
            if batch["i"] == 4:
                break
        assert prefetch_threads() == 0
        assert threading.active_count() == baseline
        assert loader.closed == epoch + 1  # the generator's finally ran
    assert [b["i"] for b in prefetcher] == list(range(50))
    assert prefetch_threads() == 0


def test_an_error_in_the_loop_body_ends_the_pass() -> None:
    loader = CountingLoader(50)
    with pytest.raises(ZeroDivisionError) as excinfo:
        for batch in Prefetcher(loader, device="cpu"):
            if batch["i"] == 2:
                _ = 1 / 0
    # The traceback (still held here) keeps the loop's frame, but not the iterator.
    assert excinfo.value is not None
    assert prefetch_threads() == 0 and loader.closed == 1


def test_a_new_pass_ends_the_previous_one() -> None:
    prefetcher = Prefetcher(CountingLoader(30), device="cpu")
    stale = iter(prefetcher)
    assert next(stale)["i"] == 0
    fresh = iter(prefetcher)
    assert prefetch_threads() == 1
    assert next(fresh)["i"] == 0
    with pytest.raises(StopIteration):
        next(stale)
    del fresh
    assert prefetch_threads() == 0


def test_close_and_context_manager_stop_the_thread() -> None:
    with Prefetcher(CountingLoader(30), device="cpu") as prefetcher:
        iterator = iter(prefetcher)
        next(iterator)
        assert prefetch_threads() == 1
    assert prefetch_threads() == 0
    with pytest.raises(StopIteration):
        next(iterator)


def test_dataloader_with_workers_over_several_epochs_and_a_break() -> None:
    loader = DataLoader(SquaresDataset(40), batch_size=8, num_workers=2, shuffle=True)
    prefetcher = Prefetcher(loader, device="cpu", depth=2)
    for _ in range(2):
        seen = []
        for batch in prefetcher:
            assert batch["x"].dtype == torch.int64 and batch["x"].shape[1] == 2
            assert torch.equal(batch["x"][:, 1], batch["index"] ** 2)
            seen.extend(batch["index"].tolist())
        assert sorted(seen) == list(range(40))
    for _ in prefetcher:
        break
    assert prefetch_threads() == 0
    # The loader's iterator was closed with the pass, so its worker processes are gone.
    wait_for(lambda: not multiprocessing.active_children())


# --- errors ---------------------------------------------------------------------


def test_loader_exception_reaches_the_loop_with_its_traceback() -> None:
    got = []
    with pytest.raises(OSError, match="disk went away") as excinfo:
        for batch in Prefetcher(failing_loader(), device="cpu"):
            got.append(batch.tolist())
    assert got == [[0.0, 0.0], [1.0, 1.0]]
    frames = [frame.name for frame in traceback.extract_tb(excinfo.value.__traceback__)]
    assert "failing_loader" in frames
    assert prefetch_threads() == 0


def test_worker_exception_reaches_the_loop_and_frees_the_workers() -> None:
    loader = DataLoader(SquaresDataset(16, fail=True), batch_size=4, num_workers=2)
    prefetcher = Prefetcher(loader, device="cpu")
    with pytest.raises(ValueError, match="sample 13 is unreadable") as excinfo:
        for _ in prefetcher:
            pass
    assert "DataLoader worker" in str(excinfo.value)  # the worker's traceback, from torch
    assert prefetch_threads() == 0
    # The exception's traceback holds torch's iterator (in plain DataLoader use too),
    # so waiting for its collection could take forever: the workers are stopped when
    # the pass fails, while the caller still holds the exception, with no collection.
    gc.disable()
    try:
        wait_for(lambda: not multiprocessing.active_children())
        assert excinfo.value.__traceback__ is not None
    finally:
        gc.enable()
    assert prefetcher.stats.batches == 3


def test_persistent_workers_survive_a_break_and_serve_the_next_epoch() -> None:
    loader = DataLoader(SquaresDataset(40), batch_size=8, num_workers=2, persistent_workers=True)
    prefetcher = Prefetcher(loader, device="cpu")
    for _ in prefetcher:
        break
    workers = multiprocessing.active_children()
    assert len(workers) == 2  # the loader keeps them for its next pass
    seen = [i for batch in prefetcher for i in batch["index"].tolist()]
    assert seen == list(range(40))
    assert {w.pid for w in multiprocessing.active_children()} == {w.pid for w in workers}
    del prefetcher, loader
    gc.collect()
    wait_for(lambda: not multiprocessing.active_children())


def test_transform_exception_reaches_the_loop() -> None:
    def broken(batch: Any) -> Any:
        raise KeyError("no field 'image' in broken")

    with pytest.raises(KeyError, match="broken"):
        next(iter(Prefetcher(CountingLoader(3), device="cpu", transform=broken)))
    assert prefetch_threads() == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"depth": 0}, InvalidOptionError, r"depth should be an integer >= 1, but got depth=0"),
        ({"depth": True}, InvalidOptionError, r"but got depth=True"),
        ({"depth": "2"}, InvalidOptionError, r"but got depth='2'"),
        ({"transform": 5}, InvalidOptionError, r"transform should be a callable.*transform=5"),
        (
            {"device": "cdua"},
            DeviceError,
            r"device should be 'cpu', 'cuda' or 'cuda:N', but got device='cdua'",
        ),
        ({"device": "cuda:x"}, DeviceError, r"but got device='cuda:x'"),
        ({"device": "mps"}, DeviceError, r"CPU or a CUDA GPU.*device='mps'"),
        ({"device": 1.5}, DeviceError, r"device should be .* but got 1.5"),
    ],
)
def test_bad_options_name_the_option(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Prefetcher([np.zeros(1)], **kwargs)


def test_loader_must_be_iterable() -> None:
    with pytest.raises(InvalidOptionError, match=r"loader should be an iterable.*but got int"):
        Prefetcher(5)  # type: ignore[arg-type]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA"
)
def test_cuda_without_a_gpu_falls_back_to_cpu_with_one_warning() -> None:
    with pytest.warns(
        UserWarning, match="CUDA is not available.*falls back to device='cpu'"
    ) as record:
        prefetcher = Prefetcher(CountingLoader(3), device="cuda:1")
    assert len(record) == 1
    assert prefetcher.device == torch.device("cpu")
    assert [b["x"].device.type for b in prefetcher] == ["cpu"] * 3
    assert Prefetcher([], device=None).device == torch.device("cpu")


# --- staging buffers (the CUDA path's pool, exercised with pageable memory) -------


class RecordingFence:
    def __init__(self) -> None:
        self.waited = 0

    def synchronize(self) -> None:
        self.waited += 1


def test_staging_pool_reuses_buffers_round_robin() -> None:
    pool = StagingPool(slots=2, pin_memory=False)
    first = pool.next_slot()
    a = first.take(torch.float32, (4, 5))
    b = first.take(torch.int64, (3,))
    fence = RecordingFence()
    first.fence = fence
    second = pool.next_slot()
    c = second.take(torch.float32, (4, 5))
    assert c.data_ptr() != a.data_ptr()

    again = pool.next_slot()
    assert again is first and fence.waited == 1  # waited for the copies out of it
    smaller = again.take(torch.float32, (2, 5))
    same_bytes = again.take(torch.bool, (24,))
    assert smaller.data_ptr() == a.data_ptr() and smaller.shape == (2, 5)
    assert same_bytes.data_ptr() == b.data_ptr() and same_bytes.dtype == torch.bool
    assert pool.nbytes == 80 + 24 + 80

    pool.next_slot()
    grown = pool.next_slot().take(torch.float32, (30,))  # 120 bytes > 80: reallocated
    assert grown.data_ptr() != a.data_ptr() and grown.shape == (30,)
    assert pool.nbytes == 160 + 24 + 80  # grew geometrically to 2 x 80


def test_staging_views_hold_their_values() -> None:
    slot = StagingPool(slots=1, pin_memory=False).next_slot()
    x = slot.take(torch.float64, (2, 3))
    x.copy_(torch.arange(6.0).reshape(2, 3))
    y = slot.take(torch.int8, ())
    y.fill_(-3)
    empty = slot.take(torch.float32, (0, 4))
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]] and y.item() == -3 and empty.shape == (0, 4)


# --- layering ---------------------------------------------------------------------


def test_import_layering() -> None:
    """`import shardio` stays torch-free, and the prefetcher imports no storage layer."""
    code = (
        "import sys, shardio\nassert 'torch' not in sys.modules, 'import shardio pulled in torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    package = Path(shardio.loading.prefetch.__file__).parent
    higher = (
        "shardio.storage.adapters",
        "shardio.loading.dataset",
        "shardio.convert",
        "shardio.storage.reader",
    )
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                relative = "." * node.level + (node.module or "")
                resolved = resolve_name(relative, shardio.loading.prefetch.__name__)
                assert not resolved.startswith(higher), f"{module.name} imports {resolved}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith(higher) for a in node.names), module.name


# --- CUDA ---------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_batches_are_on_the_device_and_ready() -> None:
    batches = [
        {"x": np.full((256, 1024), i, dtype=np.float32), "y": torch.full((8,), i), "name": f"b{i}"}
        for i in range(24)
    ]
    for i, batch in enumerate(Prefetcher(batches, device="cuda", depth=2)):
        assert batch["x"].device.type == "cuda" and batch["y"].device.type == "cuda"
        # Enqueued on the compute stream right after the event wait: reads a half-copied
        # batch if the wait is missing.
        assert bool((batch["x"] == i).all()) and bool((batch["y"] == i).all())
        assert batch["name"] == f"b{i}"
        torch.cuda._sleep(2_000_000)  # keep the compute stream busy while copies run ahead


@pytest.mark.gpu
@needs_cuda
def test_cuda_memory_is_not_reused_while_the_step_reads_it() -> None:
    batches = [np.full((512, 1024), i, dtype=np.float32) for i in range(24)]
    sums = []
    for batch in Prefetcher(batches, device="cuda", depth=1):
        torch.cuda._sleep(20_000_000)  # the step's reads run after this on the compute stream
        sums.append(batch.sum())
        del batch  # without record_stream the side stream could now overwrite it
    torch.cuda.synchronize()
    assert [int(s.item()) for s in sums] == [i * 512 * 1024 for i in range(24)]


@pytest.mark.gpu
@needs_cuda
def test_cuda_pinned_staging_is_reused() -> None:
    batch_bytes = 4 * 64 * 64 + 8 * 64
    batches = [
        (np.ones((64, 64), np.float32), torch.ones(64, dtype=torch.int64)) for _ in range(10)
    ]
    prefetcher = Prefetcher(batches, device="cuda")
    assert sum(1 for _ in prefetcher) == 10
    assert prefetcher.stats.staged_bytes == 2 * batch_bytes  # two slots, not ten batches
    slot = StagingPool(slots=1, pin_memory=True).next_slot()
    assert slot.take(torch.float32, (4,)).is_pinned()


@pytest.mark.gpu
@needs_cuda
def test_cuda_transform_runs_on_the_side_stream() -> None:
    on_side_stream = []

    def normalize(x: torch.Tensor) -> torch.Tensor:
        on_side_stream.append(torch.cuda.current_stream() != torch.cuda.default_stream())
        return (x.to(torch.bfloat16) - 1) / 2

    got = list(Prefetcher([np.full(4, 3.0)] * 3, device="cuda", transform=normalize))
    assert on_side_stream == [True] * 3
    assert all(
        t.dtype == torch.bfloat16 and t.device.type == "cuda" and t.tolist() == [1.0] * 4
        for t in got
    )


@pytest.mark.gpu
@needs_cuda
def test_cuda_from_a_pinned_dataloader_with_workers_and_a_break() -> None:
    loader = DataLoader(SquaresDataset(64), batch_size=8, num_workers=2, pin_memory=True)
    prefetcher = Prefetcher(loader, device="cuda")
    seen = []
    for batch in prefetcher:
        assert batch["x"].is_cuda and torch.equal(batch["x"][:, 1], batch["index"] ** 2)
        seen.extend(batch["index"].tolist())
    assert seen == list(range(64))
    for _ in prefetcher:
        break
    assert prefetch_threads() == 0


@pytest.mark.gpu
@needs_cuda
def test_cuda_index_past_the_last_gpu_is_an_error() -> None:
    count = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=rf"{count} CUDA device.*device='cuda:{count}'"):
        Prefetcher([], device=f"cuda:{count}")


@pytest.mark.gpu
@needs_cuda
def test_worker_batches_reach_the_gpu_from_pinned_memory_copied_once(tmp_path: Path) -> None:
    """The read-ahead thread receives worker batches straight into pinned memory."""
    from shardio import ShardedDataset
    from shardio.loading.handover import handover_stats
    from shardio.tools.testing.groundtruth import SOURCES

    truth = SOURCES["mmap"](str(tmp_path))
    fixed = [n for n in truth.names if n not in truth.variable]
    ds = ShardedDataset(truth.path, fields=fixed)
    order = np.random.default_rng(8).permutation(len(ds)).tolist()
    before = handover_stats()["received_pinned"]
    loader = DataLoader(ds, batch_size=4, sampler=order, num_workers=2)
    batches = [
        {k: v.cpu() for k, v in b.items()} for b in Prefetcher(loader, device="cuda", depth=2)
    ]
    starts = range(0, len(order), 4)
    assert len(batches) == len(starts) > 2
    for batch, start in zip(batches, starts, strict=True):
        for name, column in ds.read_batch(order[start : start + 4]).items():
            np.testing.assert_array_equal(batch[name].numpy(), column, err_msg=name)
    assert handover_stats()["received_pinned"] - before == len(fixed) * len(batches)
