"""One memory budget for a Mix: mapped reads of four real sources stay within it, as
measured from /proc, where the same reads without it map every source's pages."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from shardio import InvalidOptionError, Mix, MixSampler, ShardedDataset, ShardWriter
from shardio.memory import read_rss

torch.set_num_threads(1)

pytestmark = pytest.mark.skipif(read_rss() is None, reason="needs /proc to measure RSS")

VALUE = 16 * 1024
PER_SOURCE = 1024  # 16 MiB of values per source, 64 MiB in all
SOURCES = 4
BUDGET = 8 * 2**20
# Besides the budget: what one check lets through before the guard sees it (a piece
# of a batch, each page of it a fault that may map a whole 2 MiB folio), and pages of
# shared libraries first run during the reads.
ALLOWANCE = 8 * 2**20


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("mixbudget")
    out = []
    for s in range(SOURCES):
        path = root / f"s{s}"
        values = (np.arange(PER_SOURCE * VALUE, dtype=np.int64) % 251 + s).astype(np.uint8)
        with ShardWriter(path, format="mmap", shard_size="2MB") as writer:
            writer.write_batch({"x": values.reshape(PER_SOURCE, VALUE), "i": np.arange(PER_SOURCE)})
        out.append(path)
    return out


def _mix(paths: list[Path], **budget: object) -> Mix:
    # read_mode="map" (the user's option wins over the budget's pread): reads map pages
    sources = {f"s{s}": ShardedDataset(p, read_mode="map") for s, p in enumerate(paths)}
    return Mix(sources, seed=1, **budget)  # type: ignore[arg-type]


def _read_all(mix: Mix) -> tuple[int, list[int]]:
    """Peak growth of file-backed RSS, measured after every batch, and the ``i`` read."""
    before = read_rss()
    assert before is not None
    peak, seen = 0, []
    indices = list(MixSampler(mix, window="16MB", readahead=False))
    for start in range(0, len(indices), 64):
        columns = mix.read_batch(indices[start : start + 64])
        seen += columns["i"].tolist()
        after = read_rss()
        assert after is not None
        peak = max(peak, after.file - before.file)
    expected = mix.source_of(indices)[1].tolist()
    assert seen == expected
    return peak, indices


def test_a_mix_stays_within_one_budget_for_all_sources(paths: list[Path]) -> None:
    control = _mix(paths)
    unbounded, _ = _read_all(control)
    control.close()
    assert unbounded > 3 * BUDGET, unbounded / 2**20  # the pages do stay mapped

    mix = _mix(paths, max_rss=BUDGET)
    assert mix.budget is not None
    peak, indices = _read_all(mix)
    assert len(indices) == SOURCES * PER_SOURCE
    assert peak <= BUDGET + ALLOWANCE, peak / 2**20
    stats = [s.memory_stats() for s in mix.sources]
    # one guard: every source reports the same budget, checks and releases
    assert {st["budget"] for st in stats} == {BUDGET}
    assert len({st["checks"] for st in stats}) == 1 and stats[0]["checks"] > 0
    assert stats[0]["releases"] > 0 and stats[0]["advise_calls"] > 0
    assert all(st["bytes_read"] == PER_SOURCE * (VALUE + 8) for st in stats), stats
    # each backend is fitted to its shards' part of the budget, not to all of it
    shares = [s.reader.memory_policy.max_rss for s in mix.sources]
    assert sum(shares) <= BUDGET and max(shares) < BUDGET
    mix.close()


def test_a_mixed_batch_is_checked_once_not_once_per_source(paths: list[Path]) -> None:
    """Reading RSS costs a /proc read: a batch of every source is one check, as one
    dataset's batch of many shards is (32 MiB read before a check at the latest)."""
    mix = _mix(paths, max_rss="4GB")
    batches = [[s * PER_SOURCE + i for s in range(SOURCES)] * 2 for i in range(0, 40, 2)]
    for batch in batches:
        assert mix.read_batch(batch)["i"].tolist() == [i % PER_SOURCE for i in batch]
    stats = mix.sources[0].memory_stats()
    assert stats["checks"] == len(batches), stats  # not SOURCES per batch
    assert stats["bytes_read"] == len(batches) * 2 * (VALUE + 8)
    mix.close()


def test_the_budget_is_shared_after_pickling_and_refused_twice(paths: list[Path]) -> None:
    mix = pickle.loads(pickle.dumps(_mix(paths[:2], max_rss="8MB")))
    assert mix.budget is not None
    guards = [s.reader.guard for s in mix.sources]
    assert all(g.budget is mix.budget for g in guards)
    assert [r is s.reader for r, s in zip(mix.budget.readers, mix.sources, strict=True)] == [
        True,
        True,
    ]
    mix.read_batch([0, PER_SOURCE])
    assert mix.sources[0].memory_stats()["checks"] == mix.sources[1].memory_stats()["checks"]

    own = {"a": ShardedDataset(paths[0], max_rss="4MB"), "b": ShardedDataset(paths[1])}
    with pytest.raises(InvalidOptionError, match="source 'a' has a memory budget of its own"):
        Mix(own, max_rss="8MB")
    # refused before any source was changed
    assert own["b"].reader.memory_policy is None and own["b"].reader.max_open_shards > 1
    with pytest.raises(InvalidOptionError, match="under the memory budget of another Mix"):
        Mix({"again": mix.sources[0]}, max_rss="8MB")
    with pytest.raises(InvalidOptionError, match="max_rss= or memory_policy=, not both"):
        Mix({"b": own["b"]}, max_rss="8MB", memory_policy=mix.budget.policy)


def test_a_job_budget_is_split_between_the_sources_by_shards(paths: list[Path]) -> None:
    sources = {f"s{s}": ShardedDataset(p) for s, p in enumerate(paths[:3])}
    shards = [len(source.shard_lengths) for source in sources.values()]
    mix = Mix(sources, max_rss="total:4GB")
    assert mix.budget is not None and mix.budget.policy.job is not None
    whole = mix.budget.policy.job.provisional_share()
    parts = [s.reader.memory_policy.job.provisional_share() for s in mix.sources]
    for part, count in zip(parts, shards, strict=True):
        assert part == pytest.approx(whole * count / sum(shards), rel=0.01)
    # each backend's options follow: mmap maps only fields below 1/16 of a shard's part
    below = [s.reader.reader_options["map_below"] for s in mix.sources]
    assert below == pytest.approx([whole // sum(shards) // 2 // 16] * 3, rel=0.01)
    restored = pickle.loads(pickle.dumps(mix))
    assert restored.sources[0].reader.memory_policy.job.whole is restored.budget.policy.job
    assert restored.read_batch([0, PER_SOURCE])["i"].tolist() == [0, 0]
