"""Epoch orders: permutations, determinism and the shard-window locality bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from order_helpers import live_bytes

from shardio.core.errors import InvalidOptionError
from shardio.loading.sampling.layout import ShardLayout
from shardio.loading.sampling.orders import (
    BLOCKS_PER_WINDOW,
    epoch_order,
    epoch_rng,
    interleave_blocks,
    random_order,
    sequential_order,
    shard_blocks,
    shard_window_order,
)

shard_lengths = st.lists(st.integers(0, 40), min_size=1, max_size=12)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    lengths = draw(shard_lengths)
    per_sample = draw(st.lists(st.integers(0, 1000), min_size=len(lengths), max_size=len(lengths)))
    return lengths, [n * b for n, b in zip(lengths, per_sample, strict=True)]


def unit_index(lengths: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(lengths)), lengths)


@given(layouts(), st.integers(1, 50_000), st.integers(0, 2**32), st.integers(0, 100))
def test_shard_window_is_a_deterministic_permutation(
    layout: tuple[list[int], list[int]], window: int, seed: int, epoch: int
) -> None:
    lengths, nbytes = layout
    first = shard_window_order(lengths, nbytes, window, epoch_rng(seed, epoch))
    again = shard_window_order(lengths, nbytes, window, epoch_rng(seed, epoch))
    assert sorted(first.tolist()) == list(range(sum(lengths)))
    np.testing.assert_array_equal(first, again)


@given(
    st.lists(st.integers(1, 30), min_size=1, max_size=30),
    st.lists(st.integers(0, 500), min_size=30, max_size=30),
    st.integers(1, 5000),
    st.integers(0, 2**16),
)
def test_live_blocks_never_exceed_the_window(
    lengths: list[int], block_nbytes: list[int], window: int, seed: int
) -> None:
    length = np.array(lengths)
    nbytes = np.array(block_nbytes[: len(lengths)], dtype=np.float64)
    starts = np.cumsum(length) - length
    order = interleave_blocks(starts, length, nbytes, window, np.random.default_rng(seed))
    assert sorted(order.tolist()) == list(range(length.sum()))
    live = live_bytes(order, unit_index(length), nbytes)
    assert live.max() <= max(window, nbytes.max()) + 1e-6


@settings(max_examples=200)
@given(
    st.lists(st.integers(1, 40), min_size=2, max_size=40),
    st.integers(1, 100),
    st.integers(0, 2**16),
)
def test_small_shards_stay_within_the_window(
    lengths: list[int], window_shards: int, seed: int
) -> None:
    """The observable bound: shards small enough not to be split are live <= window."""
    length = np.array(lengths)
    nbytes = length * 10  # 10 bytes per sample
    window = int(nbytes.max()) * BLOCKS_PER_WINDOW * window_shards
    order = shard_window_order(lengths, nbytes.tolist(), window, np.random.default_rng(seed))
    live = live_bytes(order, unit_index(length), nbytes.astype(np.float64))
    assert live.max() <= window


@given(layouts(), st.integers(1, 10_000), st.integers(0, 2**16))
def test_blocks_cut_shards_into_contiguous_pieces(
    layout: tuple[list[int], list[int]], block_bytes: int, seed: int
) -> None:
    lengths, nbytes = layout
    starts, length, sizes = shard_blocks(lengths, nbytes, block_bytes, np.random.default_rng(seed))
    ends = starts + length
    assert (length >= 1).all()
    assert starts.tolist() == sorted(starts.tolist())
    np.testing.assert_array_equal(starts[1:], ends[:-1])  # no gaps, no overlaps
    assert (starts[0] if len(starts) else 0) == 0
    assert int(length.sum()) == sum(lengths)
    shard_end = np.cumsum(lengths)
    for start, end, size in zip(starts.tolist(), ends.tolist(), sizes.tolist(), strict=True):
        shard = int(np.searchsorted(shard_end, start, side="right"))
        assert end <= shard_end[shard]  # a block never spans two shards
        per_sample = nbytes[shard] / lengths[shard]
        assert size <= max(block_bytes, per_sample) + 1e-6


def test_a_shard_that_fits_a_block_stays_whole() -> None:
    for epoch in range(10):
        starts, lengths, _ = shard_blocks([5, 3], [50, 30], 50, epoch_rng(0, epoch))
        assert starts.tolist() == [0, 5] and lengths.tolist() == [5, 3]


def test_blocks_move_between_epochs() -> None:
    """The random phase changes which samples share a block from epoch to epoch."""
    cuts = {
        tuple(shard_blocks([1000], [1000], 100, epoch_rng(0, epoch))[0].tolist())
        for epoch in range(5)
    }
    assert len(cuts) > 1


def test_window_holding_the_dataset_is_a_full_shuffle() -> None:
    rng_a, rng_b = epoch_rng(3, 1), epoch_rng(3, 1)
    np.testing.assert_array_equal(
        shard_window_order([10, 20], [100, 200], 300, rng_a), random_order(30, rng_b)
    )


def test_shard_window_mixes_shards_but_keeps_them_local() -> None:
    lengths, nbytes = [100] * 50, [1000] * 50
    order = shard_window_order(lengths, nbytes, 4000, epoch_rng(0, 0))
    shards = order // 100
    # Locally mixed: the first 100 indices come from several shards ...
    assert len(set(shards[:100].tolist())) > 1
    # ... but from few of them, unlike a random permutation.
    assert len(set(shards[:100].tolist())) <= 16
    assert len(set((random_order(5000, epoch_rng(0, 0))[:100] // 100).tolist())) > 30


def test_orders_differ_between_epochs_and_seeds() -> None:
    layout = ShardLayout((50, 50), (5000, 5000))
    base = epoch_order("shard-window", layout, 2000, seed=0, epoch=0)
    assert not np.array_equal(base, epoch_order("shard-window", layout, 2000, seed=0, epoch=1))
    assert not np.array_equal(base, epoch_order("shard-window", layout, 2000, seed=1, epoch=0))
    assert not np.array_equal(base, epoch_order("random", layout, 2000, seed=0, epoch=0))


def test_sequential_and_empty_orders() -> None:
    assert sequential_order(5).tolist() == [0, 1, 2, 3, 4]
    assert shard_window_order([0, 0], [0, 0], 10, epoch_rng(0, 0)).tolist() == []
    assert epoch_order("random", ShardLayout((), ()), 10, 0, 0).tolist() == []


def test_one_sample_larger_than_the_window_still_permutes() -> None:
    order = shard_window_order([4, 4], [4000, 40], 100, epoch_rng(0, 0))
    assert sorted(order.tolist()) == list(range(8))


def test_shard_window_without_sizes_is_an_error() -> None:
    with pytest.raises(InvalidOptionError, match="shard_nbytes"):
        epoch_order("shard-window", ShardLayout((10,), None), 100, 0, 0)
    with pytest.raises(InvalidOptionError, match="order should be one of"):
        epoch_order("shuffled", ShardLayout((10,), None), 100, 0, 0)  # type: ignore[arg-type]
