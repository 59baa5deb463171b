"""Mix over real datasets: the source column, DataLoader workers (fork and spawn), Loader,
Prefetcher, the doctor, and a resume through each."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import shardio
from shardio import (
    Field,
    Mix,
    MixSampler,
    Schema,
    SchemaError,
    ShardedDataset,
    ShardSampler,
    ShardWriter,
)
from shardio.loading.handover import handover_stats
from shardio.loading.sampling import find_sampler_state

torch.set_num_threads(1)

SIZES = {"web": 120, "code": 60, "books": 30}  # x = 1000 * source number + local index
WEIGHTS = {"web": 0.5, "code": 0.3, "books": 0.2}


def _write(path: Path, values: np.ndarray, formats: str = "mmap", extra: bool = False) -> None:
    columns: dict[str, Any] = {"x": values, "v": np.stack([values, -values], 1).astype(np.float32)}
    if extra:
        columns["tokens"] = [np.arange(int(v) % 5, dtype=np.int32) for v in values]
    schema = None
    if extra:
        schema = Schema(
            (
                Field("x", np.int64),
                Field("v", np.float32, (2,)),
                Field("tokens", np.int32, kind="ragged"),
            )
        )
    with ShardWriter(path, format=formats, shard_size=400, schema=schema) as writer:
        writer.write_batch(columns)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mix")
    for i, (name, size) in enumerate(SIZES.items()):
        fmt = ("mmap", "lmdb", "hdf5")[i]
        _write(root / name, np.arange(size, dtype=np.int64) + 1000 * i, fmt, extra=True)
    return root


def _mix(data: Path, **options: Any) -> Mix:
    sources = {name: ShardedDataset(data / name) for name in SIZES}
    return Mix(sources, weights=options.pop("weights", WEIGHTS), seed=3, **options)


def _expected(mix: Mix, indices: list[int]) -> tuple[list[int], list[int]]:
    sources, local = mix.source_of(indices)
    return (sources * 1000 + local).tolist(), sources.tolist()


def test_a_batch_says_where_each_sample_came_from(data: Path) -> None:
    mix = _mix(data)
    assert len(mix) == 210 and mix.fields == ("x", "v", "tokens", "source")
    assert len(mix.shard_lengths) > 3
    indices = [205, 0, 130, 119, 181]
    batch = mix.__getitems__(indices)
    assert batch[0]["x"] == 2025 and batch[2]["source"] == 1
    collated = torch.utils.data.default_collate(batch)
    x, sources = _expected(mix, indices)
    assert collated["x"].tolist() == x and collated["source"].tolist() == sources
    assert collated["v"][:, 1].tolist() == [-float(v) for v in x]
    assert [t.tolist() for t in collated["tokens"]] == [list(range(v % 5)) for v in x]
    assert mix[130]["x"] == 1010 and int(mix[130]["source"]) == 1
    with pytest.raises(shardio.SampleIndexError, match="210"):
        mix[210]


def test_a_batch_across_many_shards_of_every_source_is_in_order(data: Path) -> None:
    """Read shard by shard, all sources at once, into the caller's arrays or new ones."""
    mix = _mix(data)
    indices = np.random.default_rng(0).permutation(210)[:150].tolist()
    x, sources = _expected(mix, indices)
    out = {"x": np.zeros(150, np.int64), "v": np.zeros((150, 2), np.float32)}
    out["source"] = np.full(150, -1, np.int64)
    for target in (None, out):
        columns = mix.read_batch(indices, out=target)
        assert columns["x"].tolist() == x and columns["source"].tolist() == sources
        assert columns["v"][:, 1].tolist() == [-float(v) for v in x]
        assert [t.tolist() for t in columns["tokens"]] == [list(range(v % 5)) for v in x]
    assert out["x"].tolist() == x and out["source"].tolist() == sources  # read into out
    one_source = [5, 119, 0, 64]  # web's shards only: one read of that source
    assert mix.read_batch(one_source)["x"].tolist() == [5, 119, 0, 64]


def test_scratch_buffers_begin_half_a_page_in() -> None:
    from shardio.loading.mix import _mid_page_array

    for dtype, shape in ((np.uint8, (3, 16384)), (np.float64, (5, 7)), (np.int32, (1,))):
        array = _mid_page_array(shape, np.dtype(dtype))
        assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous
        assert array.ctypes.data % 4096 == 2048
        array[...] = 1  # writable, the size it says
        assert int(array.sum()) == int(np.prod(shape))
    assert _mid_page_array((0, 4), np.dtype(np.int16)).shape == (0, 4)


@pytest.mark.parametrize(
    "context",
    ["fork", pytest.param("spawn", marks=pytest.mark.slow)],  # spawn: 9 s of imports
)
def test_dataloader_workers_read_the_right_samples(data: Path, context: str) -> None:
    mix = _mix(data)
    sampler = MixSampler(mix, window="4KB")
    workers = 2 if context == "fork" else 1
    loader = DataLoader(
        mix, batch_size=16, sampler=sampler, num_workers=workers, multiprocessing_context=context
    )
    indices = list(MixSampler(mix, window="4KB"))
    x, sources = _expected(mix, indices)
    got_x: list[int] = []
    got_sources: list[int] = []
    received = handover_stats()["received"]
    for batch in loader:
        got_x += batch["x"].tolist()
        got_sources += batch["source"].tolist()
    assert got_x == x and got_sources == sources
    # the workers handed every batch over in their reused shared-memory slots
    assert handover_stats()["received"] - received == -(-len(indices) // 16)
    counts = Counter(sources)
    assert [counts[i] for i in range(3)] == [105, 63, 42]  # 210 positions at 0.5/0.3/0.2


def test_loader_resumes_with_new_weights_and_prefetcher_and_doctor_read_it(data: Path) -> None:
    mix = _mix(data)
    sampler = MixSampler(mix, window="4KB", samples_per_epoch=100)
    loader = shardio.Loader(mix, batch_size=10, sampler=sampler, threads=2)
    head: list[int] = []
    for step, batch in enumerate(loader):
        head += batch["x"].tolist()
        if step == 3:
            break
    state = loader.state_dict()
    assert state["position"] == 40

    changed = _mix(data, weights={"web": 0, "code": 0, "books": 1})  # phase 2: books only
    resumed = MixSampler(changed, window="4KB", samples_per_epoch=100)
    resumed.load_state_dict(state)
    loader2 = DataLoader(changed, batch_size=10, sampler=resumed, num_workers=0)
    with shardio.trace(shardio.Prefetcher(loader2, device="cpu")) as tr:
        tail = [v for batch in tr for v in batch["x"].tolist()]
    assert len(tr.records) == 6 and tr.report()
    assert len(tail) == 60 and {v // 1000 for v in tail} == {2}
    books = [v - 2000 for v in head + tail if v >= 2000]
    # books: its own epoch order goes on; 30 samples per epoch, each once per epoch
    assert sorted(books[:30]) == list(range(30)) and sorted(books[30:60]) == list(range(30))
    assert len(set(head)) == len(head)


def test_the_doctor_traces_a_mixture_read_by_workers(data: Path) -> None:
    """The traced twin of the loader holds a proxy of the Mix in each worker: the
    batches are the same, with their sources, and every one is recorded by worker."""
    mix = _mix(data)
    loader = DataLoader(
        mix,
        batch_size=21,
        sampler=MixSampler(mix, window="4KB"),
        num_workers=2,
        multiprocessing_context="fork",
    )
    indices = list(MixSampler(mix, window="4KB"))
    x, sources = _expected(mix, indices)
    got_x: list[int] = []
    got_sources: list[int] = []
    with shardio.trace(loader) as tr:
        for batch in tr:
            got_x += batch["x"].tolist()
            got_sources += batch["source"].tolist()
    assert got_x == x and got_sources == sources
    assert len(tr.records) == 10 and {r.worker for r in tr.records} == {0, 1}
    assert tr.summary().batches == 10 and tr.report()


def test_sources_with_other_fields_are_refused(data: Path, tmp_path: Path) -> None:
    _write(tmp_path / "other", np.arange(5), "mmap")  # no tokens field
    sources = {"web": ShardedDataset(data / "web"), "other": ShardedDataset(tmp_path / "other")}
    with pytest.raises(SchemaError, match="source 'other' has"):
        Mix(sources)
    with pytest.raises(shardio.InvalidOptionError, match="exhausted should be one of"):
        Mix({"web": ShardedDataset(data / "web")}, exhausted="never")
    with pytest.raises(shardio.InvalidOptionError, match="unknown"):
        Mix({"web": ShardedDataset(data / "web")}, weights={"web": 1, "wbe": 1})


@pytest.mark.filterwarnings("ignore:.set_vital. is deprecated")
def test_stateful_dataloader_with_workers_resumes_a_mixture_exactly(data: Path) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    mix = _mix(data)
    full, _ = _expected(mix, list(MixSampler(mix, window="4KB")))

    def loader(sampler: MixSampler) -> StatefulDataLoader:
        return StatefulDataLoader(
            mix, batch_size=8, sampler=sampler, num_workers=2, multiprocessing_context="fork"
        )

    first = MixSampler(mix, window="4KB")
    it = iter(stateful := loader(first))
    head = [v for _ in range(5) for v in next(it)["x"].tolist()]
    state = stateful.state_dict()
    assert first.state_dict()["position"] > len(head)  # the workers read ahead
    del it, stateful

    second = loader(MixSampler(mix, window="4KB"))
    second.load_state_dict(state)
    assert len(second) == -(-len(full) // 8)  # the whole epoch's, as frameworks count
    tail = [v for batch in second for v in batch["x"].tolist()]
    assert head + tail == full

    # the sampler's own state, pulled out of the loader's (e.g. to change the workers)
    found = find_sampler_state(state)
    assert found["kind"] == "shardio.MixSampler" and found["done"] == len(head)
    alone = MixSampler(mix, window="4KB")
    alone.load_state_dict(found)
    assert len(alone) == len(full)
    assert head + _expected(mix, list(alone))[0] == full
    shard_state = ShardSampler(mix, seed=1).state_dict()
    with pytest.raises(shardio.InvalidOptionError, match="2 different"):
        find_sampler_state({"a": state, "b": [shard_state]})


def test_sources_share_one_limit_of_open_shards(data: Path) -> None:
    mix = _mix(data, max_open_shards=3)
    assert [s.reader.max_open_shards for s in mix.sources] == [1, 1, 1]
    assert all(len(s.shard_lengths) > 1 for s in mix.sources)
    indices = list(MixSampler(mix, order="random"))
    x, _ = _expected(mix, indices)
    got = [v for i in range(0, len(indices), 32) for v in mix.read_batch(indices[i : i + 32])["x"]]
    assert got == x
    assert sum(len(s.reader.open_readers) for s in mix.sources) <= 3
    default = _mix(data)  # one dataset's default limit, shared
    assert sum(s.reader.max_open_shards for s in default.sources) <= default.max_open_shards


def test_reading_a_mixture_starts_no_thread_or_pool(data: Path) -> None:
    """Nothing per source but its reader: a batch is one read per source in it, in the
    thread that asks (with readahead hints from the sampler's thread)."""
    before = {t.ident for t in threading.enumerate()}
    mix = _mix(data, max_rss="64MB")
    indices = list(MixSampler(mix, window="4KB"))
    got = [v for i in range(0, len(indices), 32) for v in mix.read_batch(indices[i : i + 32])["x"]]
    assert got == _expected(mix, indices)[0]
    assert {t.ident for t in threading.enumerate()} == before


def test_each_source_s_blocks_are_read_ahead(data: Path) -> None:
    mix = _mix(data)
    sampler = MixSampler(mix, window="4KB")
    assert sampler.source_window == 4000 // 3
    assert len(list(sampler)) == 210
    hinted = {name: stats["readahead_bytes"] for name, stats in mix.memory_stats().items()}
    assert all(hinted[name] > 0 for name in SIZES), hinted
    quiet = _mix(data)
    list(MixSampler(quiet, window="4KB", readahead=False))
    assert all(stats["readahead_bytes"] == 0 for stats in quiet.memory_stats().values())
    # a range across two sources hints the end of one and the start of the next
    assert quiet.readahead(110, 130) > 0 and quiet.readahead(-5, 0) == 0
    after = {name: stats["readahead_bytes"] for name, stats in quiet.memory_stats().items()}
    assert after["web"] > 0 and after["code"] > 0 and after["books"] == 0, after
