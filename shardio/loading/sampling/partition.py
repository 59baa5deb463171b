"""Split one epoch order between ranks, with torch's DistributedSampler rules.

Every rank gets the same number of indices. Without ``drop_last`` the order is
padded by repeating its beginning; with ``drop_last`` its tail is cut, exactly as
`torch.utils.data.DistributedSampler` does. ``strided`` hands out every
``world_size``-th index (DistributedSampler's layout); ``contiguous`` hands out one
run per rank, so with a shard-window order each rank reads its own windows.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from shardio.core.errors import InvalidOptionError

__all__ = ["PARTITIONS", "PartitionName", "samples_per_rank", "rank_indices"]

PartitionName = Literal["contiguous", "strided"]
PARTITIONS: tuple[PartitionName, ...] = ("contiguous", "strided")


def samples_per_rank(n: int, world_size: int, drop_last: bool) -> int:
    """How many indices each rank gets from ``n`` (DistributedSampler's ``num_samples``)."""
    if drop_last and n % world_size != 0:
        return max(math.ceil((n - world_size) / world_size), 0)
    return math.ceil(n / world_size)


def rank_indices(
    order: np.ndarray,
    rank: int,
    world_size: int,
    drop_last: bool,
    partition: PartitionName = "contiguous",
) -> np.ndarray:
    """The part of ``order`` that ``rank`` reads, padded or cut to equal length."""
    n = len(order)
    per_rank = samples_per_rank(n, world_size, drop_last)
    if partition not in PARTITIONS:
        raise InvalidOptionError(
            f"partition should be one of {PARTITIONS}, but got partition={partition!r}"
        )
    total = per_rank * world_size
    if total <= n:  # no padding: a slice, copied so the whole order can be freed
        if partition == "contiguous":
            return order[rank * per_rank : (rank + 1) * per_rank].copy()
        return order[rank:total:world_size].copy()
    if partition == "contiguous":
        positions = np.arange(rank * per_rank, (rank + 1) * per_rank)
    else:
        positions = np.arange(rank, total, world_size)
    # Padding position p >= n repeats order[p - n], cycling when the order is shorter
    # than the padding, like DistributedSampler's ``indices * ceil(pad / n)``.
    return order[positions % n]
