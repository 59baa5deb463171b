"""The mixture order: proportions within the stated bound, exactly once per source epoch,
resume at any point and world size, weights that change at a resume.

The sampler reads only the sources' shard sizes, so these tests describe sources by
their sizes (mix_helpers.Layouts); tests/loading/test_mix.py reads real datasets.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mix_helpers import Layouts, merged_pass, ranks

from shardio import InvalidOptionError, StateMismatchError
from shardio.loading.sampling import MixSampler
from shardio.loading.sampling.layout import resolve_layout
from shardio.loading.sampling.mixsampler import source_blocks, source_plan
from shardio.loading.sampling.mixture import (
    Interleave,
    normalize_weights,
    source_phase,
    source_seed,
    window_bound,
)
from shardio.loading.sampling.orders import BLOCKS_PER_WINDOW, epoch_plan


def _interleave(weights: list[float], seed: int) -> Interleave:
    names = [f"s{i}" for i in range(len(weights))]
    w = normalize_weights(names, dict(zip(names, weights, strict=True)))
    return Interleave(w, np.array([source_phase(seed, n) for n in names]))


weights_ = st.lists(
    st.one_of(st.just(0.0), st.floats(0.001, 1.0), st.integers(1, 50).map(float)),
    min_size=1,
    max_size=10,
).filter(lambda w: sum(w) > 0)


@settings(max_examples=150, deadline=None)
@given(weights_, st.integers(0, 2**32), st.integers(0, 20_000), st.integers(1, 3_000))
def test_every_window_holds_each_source_within_the_bound(
    weights: list[float], seed: int, start: int, size: int
) -> None:
    interleave = _interleave(weights, seed)
    sources, _ = interleave.slice(start, start + size)
    counts = np.bincount(sources, minlength=len(weights))
    deviation = np.abs(counts - size * interleave.weights)
    bound = window_bound(interleave.weights)
    assert len(sources) == size
    assert (deviation <= bound + 1e-6).all(), (counts, size * interleave.weights, bound)
    assert counts[interleave.weights == 0].sum() == 0  # weight 0: never read


@settings(max_examples=100, deadline=None)
@given(weights_, st.integers(0, 2**32), st.integers(0, 5_000), st.integers(0, 500))
def test_position_k_is_a_pure_function(weights: list[float], seed: int, a: int, size: int) -> None:
    interleave = _interleave(weights, seed)
    sources, samples = interleave.slice(0, a + size)
    part_sources, part_samples = interleave.slice(a, a + size)
    assert (part_sources == sources[a:]).all() and (part_samples == samples[a:]).all()
    assert (interleave.counts(a) == np.bincount(sources[:a], minlength=len(weights))).all()
    # each source's samples come in order 0, 1, 2, ...
    for s in range(len(weights)):
        assert (samples[sources == s] == np.arange((sources == s).sum())).all()
    for s in np.flatnonzero(interleave.weights > 0)[:3].tolist():
        j = int((sources[:a] == s).sum())
        position = interleave.position_of(s, j)
        assert position >= a
        if position < a + size:
            assert sources[position] == s and samples[position] == j


@settings(max_examples=100, deadline=None)
@given(
    weights_,
    st.integers(0, 2**32),
    st.integers(0, 3_000),
    st.integers(0, 400),
    st.integers(1, 70),
    st.data(),
)
def test_a_rank_s_slice_is_its_share_of_all_keys_merged(
    weights: list[float], seed: int, a: int, size: int, stride: int, data: st.DataObject
) -> None:
    """`slice` against the definition: every source's keys, sorted by (key, source)."""
    interleave = _interleave(weights, seed)
    offset = data.draw(st.integers(0, stride - 1))
    keys, sources, samples = [], [], []
    for s in np.flatnonzero(interleave.weights > 0).tolist():
        j = np.arange(int((a + size + 2) * interleave.weights[s]) + 2)
        keys.append(interleave.keys(s, j))
        sources.append(np.full(len(j), s))
        samples.append(j)
    order = np.lexsort((np.concatenate(sources), np.concatenate(keys)))[a : a + size]
    got_sources, got_samples = interleave.slice(a, a + size, offset, stride)
    assert len(order) == size
    assert got_sources.tolist() == np.concatenate(sources)[order][offset::stride].tolist()
    assert got_samples.tolist() == np.concatenate(samples)[order][offset::stride].tolist()


def test_two_sources_are_within_one_and_bursts_are_spread() -> None:
    interleave = _interleave([0.7, 0.3], seed=5)
    sources, _ = interleave.slice(0, 10_000)
    windows = np.lib.stride_tricks.sliding_window_view(sources == 1, 10).sum(axis=1)
    assert set(windows.tolist()) <= {2, 3, 4}  # 3 +- 1 in every 10 positions
    assert window_bound(interleave.weights).tolist() == [1.0, 1.0]


# ------------------------------------------------------------------ sampler
def _source_order(mix: Layouts, sampler: MixSampler, s: int, epochs: int) -> list[int]:
    """Source s's own orders of its first epochs, one after another (global indices)."""
    layout = resolve_layout(mix.sources[s])
    seed = source_seed(mix.seed, mix.names[s])
    out: list[int] = []
    for e in range(epochs):
        blocks = source_blocks(len(mix.names))
        plan = source_plan(sampler.order, layout, sampler.source_window, blocks, seed, e)
        out += (plan.indices.astype(np.int64) + mix.offsets[s]).tolist()
    return out


def _uninterrupted(mix: Layouts, epochs: int, **options: Any) -> list[int]:
    sampler = MixSampler(mix, rank=0, world_size=1, **options)
    out: list[int] = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out += list(sampler)
    return out


MIX = Layouts(
    {"web": [40, 40, 25], "code": [30, 13], "books": [17]}, {"web": 5, "code": 3, "books": 2}
)


def test_each_source_reads_its_own_orders_exactly_once_per_epoch() -> None:
    sampler = MixSampler(MIX, rank=0, world_size=1, window="2KB")
    stream = _uninterrupted(MIX, 4, window="2KB")
    assert len(stream) == 4 * 165 == 4 * len(sampler)
    sources, _ = MIX.split(stream)
    for s in range(3):
        mine = [i for i, src in zip(stream, sources, strict=True) if src == s]
        # the source's epochs one after another, each its own shuffle, cut where the run ends
        epochs = len(mine) // len(MIX.sources[s]) + 1
        assert mine == _source_order(MIX, sampler, s, epochs)[: len(mine)]
    assert sampler.order == "shard-window"
    # web, the largest source, went through 3+ of its own epochs at weight 0.5 of 660
    assert (sources == 0).sum() == 330 and (sources == 2).sum() == 132


def test_a_source_s_order_cuts_its_window_into_fewer_blocks_the_more_sources() -> None:
    assert [source_blocks(s) for s in (1, 2, 3, 4, 8, 9, 10, 100)] == [8, 4, 3, 2, 1, 1, 1, 1]
    layout = resolve_layout(Layouts({"a": [300, 200, 250]}).sources[0])
    alone = source_plan("shard-window", layout, 20_000, BLOCKS_PER_WINDOW, 7, 2)
    assert (
        alone.indices.tolist() == epoch_plan("shard-window", layout, 20_000, 7, 2).indices.tolist()
    )
    for blocks in (1, 2, 3):
        plan = source_plan("shard-window", layout, 20_000, blocks, 7, 2)
        order = plan.indices.astype(np.int64)
        assert sorted(order.tolist()) == list(range(750))  # a permutation
        assert plan.block_starts is not None
        # the bytes of the blocks begun and not finished never exceed the window
        block = np.searchsorted(plan.block_starts, order, side="right") - 1
        first = np.full(len(plan.block_starts), len(order))
        last = np.zeros(len(plan.block_starts), dtype=np.int64)
        np.minimum.at(first, block, np.arange(len(order)))
        np.maximum.at(last, block, np.arange(len(order)))
        sizes = np.diff(np.append(plan.block_starts, 750)) * 100
        live = [sizes[(first <= p) & (last >= p)].sum() for p in range(len(order))]
        assert max(live) <= 20_000, (blocks, max(live))
        assert len(plan.block_starts) >= 750 * 100 // (20_000 // blocks)


def test_a_batch_of_ten_sources_touches_about_as_many_shards_as_one_dataset() -> None:
    """Locality: the sources share the window and about BLOCKS_PER_WINDOW live blocks
    between them, so a batch of 256 reads about as many shards as one dataset's."""
    ten = Layouts({f"s{i}": [400] * 3 for i in range(10)}, sample_bytes=16384)
    one = Layouts({"all": [400] * 30}, sample_bytes=16384)

    def shards_per_batch(mix: Layouts) -> float:
        order = np.asarray(list(MixSampler(mix, rank=0, world_size=1, window="64MB")))
        shard = order // 400  # every shard of either holds 400 samples
        batches = shard[: len(shard) // 256 * 256].reshape(-1, 256)
        return float(np.mean([len(np.unique(b)) for b in batches]))

    mixed, alone = shards_per_batch(ten), shards_per_batch(one)
    assert mixed <= 1.5 * alone, (mixed, alone)
    assert mixed >= 10  # every batch holds every source (weights equal)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(0, 3),
    st.integers(0, 200),
    st.sampled_from(["shard-window", "random", "sequential"]),
)
def test_resume_at_any_point_and_world_size_equals_the_uninterrupted_order(
    world: int, new_world: int, epoch: int, taken: int, order: str
) -> None:
    options = {"window": "2KB", "order": order}
    reference = _uninterrupted(MIX, 6, **options)
    samplers = ranks(MIX, world, **options)
    read: list[int] = []
    for e in range(epoch):
        for s in samplers:
            s.set_epoch(e)
        read += merged_pass(samplers)
    for s in samplers:
        s.set_epoch(epoch)
    taken = min(taken, len(samplers[0]))
    shares = [list(s)[:taken] for s in samplers]  # every rank took `taken` of its share
    read += [i for row in zip(*shares, strict=True) for i in row]
    state = json.loads(json.dumps(samplers[0].state_dict(consumed=taken)))

    resumed = ranks(MIX, new_world, **options)
    for s in resumed:
        s.load_state_dict(state)
        s.set_epoch(epoch)
    lengths = [len(s) for s in resumed]
    rest = merged_pass(resumed)
    # len() is the epoch's share as frameworks count it: taken before, plus the rest
    assert lengths == [taken + len(rest) // new_world] * new_world
    read += rest
    for s in resumed:
        s.set_epoch(epoch + 1)
    read += merged_pass(resumed)
    assert read == reference[: len(read)]
    assert len(read) >= len(reference) // 6 * (epoch + 1)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(0, 150),
    st.lists(st.integers(0, 5), min_size=3, max_size=3).filter(lambda w: sum(w) > 0),
)
def test_new_weights_at_a_resume_keep_every_source_exactly_once(
    world: int, new_world: int, taken: int, new_weights: list[int]
) -> None:
    options = {"window": "2KB"}
    samplers = ranks(MIX, world, **options)
    shares = [list(s)[:taken] for s in samplers]
    read = [i for row in zip(*shares, strict=True) for i in row]
    state = samplers[0].state_dict(consumed=min(taken, len(samplers[0])))

    changed = MIX.with_weights(dict(zip(MIX.names, new_weights, strict=True)))
    resumed = ranks(changed, new_world, **options)
    after: list[int] = []
    for s in resumed:
        s.load_state_dict(state)
    for epoch in range(3):
        for s in resumed:
            s.set_epoch(epoch)
        after += merged_pass(resumed)
    sources, _ = MIX.split(read + after)
    stream = read + after
    for s in range(3):
        mine = [i for i, src in zip(stream, sources, strict=True) if src == s]
        epochs = len(mine) // len(MIX.sources[s]) + 1
        assert mine == _source_order(MIX, resumed[0], s, epochs)[: len(mine)]
    # from the resume on, the new proportions
    new_sources, _ = MIX.split(after)
    w = np.array(new_weights) / sum(new_weights)
    counts = np.bincount(new_sources, minlength=3)
    assert (np.abs(counts - len(after) * w) <= window_bound(w) + 1e-6).all()
    assert resumed[0].state_dict()["weights"] == pytest.approx(w.tolist())


def test_stop_ends_the_epoch_where_the_first_source_runs_out() -> None:
    mix = Layouts({"a": [10, 10], "b": [30]}, {"a": 1, "b": 1}, exhausted="stop")
    sampler = MixSampler(mix, rank=0, world_size=1, window="1KB")
    epoch0 = list(sampler)
    sources, local = mix.split(epoch0)
    assert len(epoch0) == len(sampler) and (sources == 0).sum() == 20  # a: all once
    assert sorted(local[sources == 0].tolist()) == list(range(20))
    assert len(set(epoch0)) == len(epoch0)
    b_read = int((sources == 1).sum())
    assert sampler.source_positions() == {"a": (1, 0), "b": (0, b_read)}  # a ran out
    sampler.set_epoch(1)
    assert sampler.source_positions() == {"a": (1, 0), "b": (1, 0)}  # b's rest is skipped
    epoch1 = list(sampler)
    sources1, _ = mix.split(epoch1)
    assert (sources1 == 0).sum() == 20 and epoch1 != epoch0
    # two ranks: the tail that does not split evenly is cut
    two = ranks(mix, 2, window="1KB")
    merged = merged_pass(two)
    assert merged == epoch0[: len(merged)] and len(epoch0) - len(merged) < 2


def test_the_state_says_where_each_source_is_and_is_small() -> None:
    sampler = MixSampler(MIX, rank=0, world_size=1, samples_per_epoch=1000)
    it = iter(sampler)
    for _ in range(300):
        next(it)
    state = sampler.state_dict()
    resumed = MixSampler(MIX, rank=0, world_size=64, samples_per_epoch=1000)
    resumed.load_state_dict(state)
    positions = resumed.source_positions()
    assert positions == {"web": (1, 150 - 105), "code": (2, 90 - 86), "books": (3, 60 - 51)}
    assert len(json.dumps(state)) < 1000  # O(sources): no index lists


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": 1}, "seed=0 (this sampler has 1)"),
        ({"shards": {"web": [40, 40, 26], "code": [30, 13], "books": [17]}}, "'web' of 105"),
        ({"shards": {"web": [105], "code": [43]}}, "sources ['web', 'code', 'books']"),
        ({"exhausted": "stop"}, "exhausted='restart'"),
    ],
)
def test_a_state_of_another_mixture_is_refused(changes: dict[str, Any], message: str) -> None:
    state = MixSampler(MIX, rank=0, world_size=1).state_dict()
    shards = changes.pop("shards", {"web": [40, 40, 25], "code": [30, 13], "books": [17]})
    other = Layouts(shards, None, **changes)
    with pytest.raises(StateMismatchError, match=re.escape(message)):
        MixSampler(other, rank=0, world_size=1).load_state_dict(state)


def test_bad_input_names_the_option() -> None:
    with pytest.raises(InvalidOptionError, match="no weight for"):
        MixSampler(MIX.with_weights({"web": 1}), rank=0, world_size=1)
    with pytest.raises(InvalidOptionError, match=r"weights\['web'\] should be a finite number"):
        MixSampler(MIX.with_weights({"web": -1, "code": 1, "books": 1}), rank=0, world_size=1)
    with pytest.raises(InvalidOptionError, match=r"MixSampler\.state_dict"):
        MixSampler(MIX, rank=0, world_size=1).load_state_dict({"epoch": 0})
    with pytest.raises(InvalidOptionError, match="consumed should count"):
        sampler = MixSampler(MIX, rank=0, world_size=1)
        next(iter(sampler))
        sampler.state_dict(consumed=5)
    empty = Layouts({"a": [0], "b": [5]})
    with pytest.raises(InvalidOptionError, match="source 'a' has no samples"):
        MixSampler(empty, rank=0, world_size=1)
    assert len(list(MixSampler(empty.with_weights({"a": 0, "b": 1}), rank=0, world_size=1))) == 5


@pytest.mark.parametrize("new_world", [1, 3])
def test_a_state_saved_at_the_end_of_an_epoch_goes_on_with_the_next(new_world: int) -> None:
    reference = _uninterrupted(MIX, 3)
    samplers = ranks(MIX, 2)
    read = merged_pass(samplers)
    state = samplers[0].state_dict()  # after the whole pass: its end
    resumed = ranks(MIX, new_world)
    for s in resumed:
        s.load_state_dict(state)
        s.set_epoch(1)  # the loop's next epoch, without reading the rest of epoch 0
    read += merged_pass(resumed)
    assert read == reference[: len(read)] and len(read) > 300


def test_len_does_not_move_where_new_weights_begin() -> None:
    sampler = MixSampler(MIX, rank=0, world_size=1)
    first = list(sampler)
    sampler.set_weights({"web": 1, "code": 0, "books": 0})
    assert len(sampler) == 165  # asked between the pass and set_epoch
    sampler.set_epoch(1)
    second = list(sampler)
    sources, _ = MIX.split(first + second)
    assert set(sources[165:].tolist()) == {0}
    web = [i for i, s in zip(first + second, sources, strict=True) if s == 0]
    assert web == _source_order(MIX, sampler, 0, 4)[: len(web)]


@pytest.mark.parametrize(("world", "new_world", "taken"), [(2, 3, 7), (3, 1, 0), (1, 4, 10)])
def test_stop_resumes_at_another_world_size(world: int, new_world: int, taken: int) -> None:
    mix = Layouts({"a": [12, 9], "b": [40]}, {"a": 2, "b": 1}, exhausted="stop")
    alone = MixSampler(mix, rank=0, world_size=1)
    epoch0 = list(alone)
    alone.set_epoch(1)
    epoch1 = list(alone)
    samplers = ranks(mix, world)
    shares = [list(s)[:taken] for s in samplers]
    read = [i for row in zip(*shares, strict=True) for i in row]
    state = samplers[0].state_dict(consumed=taken)
    resumed = ranks(mix, new_world)
    for s in resumed:
        s.load_state_dict(state)
    read += merged_pass(resumed)
    # the epoch ends where `a` runs out; what does not split between the ranks is cut
    assert read == epoch0[: len(read)] and len(epoch0) - len(read) < new_world
    for s in resumed:
        s.set_epoch(1)
    again = merged_pass(resumed)
    assert again == epoch1[: len(again)] and len(epoch1) - len(again) < new_world


def test_a_state_whose_source_order_differs_is_refused() -> None:
    sampler = MixSampler(MIX, rank=0, world_size=1)
    it = iter(sampler)
    head = [next(it) for _ in range(20)]
    state = sampler.state_dict()
    # each source's digest of the last order it built (the chunk ahead may reach epoch 1)
    assert all(d[:2] in ("0:", "1:") and len(d) == 18 for d in state["digests"])
    resumed = MixSampler(MIX, rank=0, world_size=2)
    resumed.load_state_dict(state)
    assert len(head) == 20 and next(iter(resumed)) == _uninterrupted(MIX, 1)[20]
    epoch = state["digests"][1][0]
    state["digests"][1] = f"{epoch}:0000000000000000"  # as if numpy shuffled code otherwise
    changed = MixSampler(MIX, rank=0, world_size=2)
    changed.load_state_dict(state)
    with pytest.raises(StateMismatchError, match=f"source 'code': its epoch {epoch} order differs"):
        list(changed)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None)
@given(weights_, st.integers(0, 2**32), st.integers(0, 10**9), st.integers(1, 20_000))
def test_the_bound_holds_far_into_long_runs(
    weights: list[float], seed: int, start: int, size: int
) -> None:
    interleave = _interleave(weights, seed)
    sources, _ = interleave.slice(start, start + size)
    counts = np.bincount(sources, minlength=len(weights))
    assert len(sources) == size
    bound = window_bound(interleave.weights)
    assert (np.abs(counts - size * interleave.weights) <= bound + 1e-6).all()


class _Hinted(Layouts):
    """A mixture whose readahead records the ranges it is asked to hint."""

    def __init__(self) -> None:
        super().__init__(
            {"web": [400, 400], "code": [300, 130]}, {"web": 3, "code": 2}, sample_bytes=1000
        )
        self.ranges: list[tuple[int, int]] = []

    def readahead(self, start: int, stop: int) -> int:
        self.ranges.append((start, stop))
        return stop - start


def test_the_ranks_of_a_node_split_the_hints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank reads from every block of many samples; the node's ranks hint each
    block once between them. (1000 positions: both sources stay in their first epoch;
    a block begun in the first 600 is read by every rank, the ones begun later may
    not be.)"""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = _Hinted()
    order = list(MixSampler(alone, rank=0, world_size=1, window="400KB", samples_per_epoch=1000))
    blocks = set(alone.ranges)
    assert len(blocks) == len(alone.ranges) > 20  # each block once
    rank1 = _Hinted()
    list(MixSampler(rank1, rank=1, world_size=4, window="400KB", samples_per_epoch=1000))
    big = {(a, b) for a, b in blocks if b - a >= 8 and any(a <= i < b for i in order[:600])}
    assert len(big) > 10
    assert big <= set(rank1.ranges) <= blocks  # without LOCAL_WORLD_SIZE: all it reaches

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    parts = []
    for rank in (2, 3):  # the second node of two
        mix = _Hinted()
        indices = list(
            MixSampler(mix, rank=rank, world_size=4, window="400KB", samples_per_epoch=1000)
        )
        reference = MixSampler(
            _Hinted(),
            rank=rank,
            world_size=4,
            window="400KB",
            samples_per_epoch=1000,
            readahead=False,
        )
        assert indices == list(reference)  # hints change nothing of the order
        parts.append(set(mix.ranges))
    assert not parts[0] & parts[1] and len(parts[0]) > 5 and len(parts[1]) > 5
    assert big <= parts[0] | parts[1] <= blocks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # does not divide the world: all hints
    odd = _Hinted()
    list(MixSampler(odd, rank=1, world_size=4, window="400KB", samples_per_epoch=1000))
    assert odd.ranges == rank1.ranges
