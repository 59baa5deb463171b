"""Rank partitioning follows torch's DistributedSampler: sizes, padding, drop_last."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler

from shardio.core.errors import InvalidOptionError
from shardio.loading.sampling.partition import PARTITIONS, rank_indices, samples_per_rank

sizes = st.integers(0, 60)
worlds = st.integers(1, 9)


class _Range:
    """The smallest map-style dataset: DistributedSampler only needs len()."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


@given(sizes, worlds, st.booleans())
def test_strided_sequential_equals_distributed_sampler(n: int, world: int, drop_last: bool) -> None:
    order = np.arange(n)
    for rank in range(world):
        torch_sampler: DistributedSampler[int] = DistributedSampler(
            _Range(n),  # type: ignore[arg-type]
            num_replicas=world,
            rank=rank,
            shuffle=False,
            drop_last=drop_last,
        )
        ours = rank_indices(order, rank, world, drop_last, "strided")
        assert ours.tolist() == list(torch_sampler)
        assert samples_per_rank(n, world, drop_last) == len(torch_sampler)


@given(sizes, worlds, st.booleans(), st.sampled_from(PARTITIONS), st.integers(0, 2**16))
def test_ranks_cover_the_order_like_distributed_sampler(
    n: int, world: int, drop_last: bool, partition: str, seed: int
) -> None:
    order = np.random.default_rng(seed).permutation(n)
    parts = [rank_indices(order, r, world, drop_last, partition) for r in range(world)]  # type: ignore[arg-type]
    per_rank = samples_per_rank(n, world, drop_last)
    assert all(len(part) == per_rank for part in parts)
    counts = Counter(np.concatenate(parts).tolist() if parts else [])
    if drop_last:
        # Disjoint, and only the tail of the order beyond a multiple of world is cut.
        assert all(c == 1 for c in counts.values())
        assert sorted(counts) == sorted(order[: per_rank * world].tolist())
        assert n - per_rank * world < world
    else:
        # Every index at least once; the padding repeats the start of the order.
        assert set(counts) == set(order.tolist())
        padding = per_rank * world - n
        assert padding < world
        expected = Counter(order.tolist()) + Counter(np.resize(order, padding).tolist())
        assert counts == expected


def test_contiguous_hands_out_runs_of_the_order() -> None:
    order = np.arange(10) * 10
    assert rank_indices(order, 0, 3, False, "contiguous").tolist() == [0, 10, 20, 30]
    assert rank_indices(order, 2, 3, False, "contiguous").tolist() == [80, 90, 0, 10]
    assert rank_indices(order, 2, 3, True, "contiguous").tolist() == [60, 70, 80]


def test_padding_cycles_when_the_dataset_is_smaller_than_the_world() -> None:
    order = np.array([7, 3])
    parts = [rank_indices(order, r, 5, False, "strided").tolist() for r in range(5)]
    assert parts == [[7], [3], [7], [3], [7]]
    assert [rank_indices(order, r, 5, True, "strided").tolist() for r in range(5)] == [[]] * 5


def test_unknown_partition_is_an_error() -> None:
    with pytest.raises(InvalidOptionError, match="partition should be one of"):
        rank_indices(np.arange(4), 0, 2, False, "blocks")  # type: ignore[arg-type]
