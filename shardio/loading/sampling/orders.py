"""Epoch orders: permutations of a dataset's global indices.

Each order is a pure function of the layout and a numpy ``Generator``; the sampler
seeds the generator from (seed, epoch), so every rank computes the same order.

``shard-window`` trades some shuffle quality for locality: it cuts shards into
contiguous blocks, shuffles the blocks, and interleaves samples only among the
blocks inside a window of ``window`` bytes that slides along the shuffled blocks.
A reader that keeps a block resident from its first to its last sample therefore
never holds more than ``window`` bytes (see `interleave_blocks`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from shardio.core.errors import InvalidOptionError

from .layout import ShardLayout

__all__ = [
    "ORDERS",
    "OrderName",
    "BLOCKS_PER_WINDOW",
    "epoch_rng",
    "sequential_order",
    "random_order",
    "shard_window_order",
    "shard_window_plan",
    "shard_blocks",
    "interleave_blocks",
    "EpochPlan",
    "epoch_plan",
    "epoch_order",
    "order_digest",
]

OrderName = Literal["random", "sequential", "shard-window"]
ORDERS: tuple[OrderName, ...] = ("random", "sequential", "shard-window")

#: Blocks are at most ``window / BLOCKS_PER_WINDOW`` bytes, so about this many blocks
#: mix at any point of the order. Larger means better mixing, shorter sequential reads.
BLOCKS_PER_WINDOW = 8


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch: the same on every rank and every machine."""
    return np.random.default_rng([seed, epoch])


def _index_dtype(n: int) -> type[np.unsignedinteger] | type[np.signedinteger]:
    # Half the memory of int64 for any dataset below 4 billion samples.
    return np.uint32 if n <= np.iinfo(np.uint32).max + 1 else np.int64


def sequential_order(n: int) -> np.ndarray:
    """``0, 1, ..., n - 1``."""
    return np.arange(n, dtype=_index_dtype(n))


def random_order(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``range(n)``."""
    order = sequential_order(n)
    rng.shuffle(order)
    return order


def shard_blocks(
    lengths: Sequence[int], nbytes: Sequence[int], block_bytes: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut every shard into contiguous blocks of at most ``block_bytes`` bytes.

    Returns ``(starts, lengths, nbytes)`` of the blocks in global index order. Sizes
    assume the samples of a shard are about equally large; a block holds at least
    one sample. Block boundaries get a random phase per shard so that the same
    samples do not end up together every epoch.
    """
    shard_len = np.asarray(lengths, dtype=np.int64)
    shard_bytes = np.asarray(nbytes, dtype=np.float64)
    shard_start = np.cumsum(shard_len) - shard_len
    per_sample = shard_bytes / np.maximum(shard_len, 1)
    with np.errstate(divide="ignore"):
        fit = np.floor(block_bytes / per_sample)
    block_len = np.where(per_sample > 0, np.clip(fit, 1, np.maximum(shard_len, 1)), shard_len)
    block_len = np.maximum(block_len, 1).astype(np.int64)
    phase = rng.integers(0, block_len)  # one draw per shard, split or not

    starts: list[np.ndarray] = []
    for s in np.flatnonzero(shard_len > 0):
        if block_len[s] >= shard_len[s]:  # the shard fits in one block: keep it whole
            cuts = np.zeros(0, dtype=np.int64)
        else:
            first = phase[s] if phase[s] > 0 else block_len[s]
            cuts = np.arange(first, shard_len[s], block_len[s], dtype=np.int64)
        starts.append(shard_start[s] + np.concatenate(([0], cuts)))
    if not starts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    block_start = np.concatenate(starts)
    ends = np.append(block_start[1:], shard_start[-1] + shard_len[-1])
    # A block never spans two shards: the next start is this shard's cut or the next
    # non-empty shard's first sample, which equals this shard's end.
    block_length = ends - block_start
    shard_of_block = np.searchsorted(shard_start + shard_len, block_start, side="right")
    return block_start, block_length, block_length * per_sample[shard_of_block]


def shard_window_order(
    lengths: Sequence[int], nbytes: Sequence[int], window: int, rng: np.random.Generator
) -> np.ndarray:
    """Blocks of at most ``window / BLOCKS_PER_WINDOW`` bytes, interleaved within ``window``.

    A full random permutation when the window holds the whole dataset.
    """
    return shard_window_plan(lengths, nbytes, window, rng).indices


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """An epoch's order and, for ``shard-window``, the blocks it reads together."""

    indices: np.ndarray
    #: Sorted global first index of each block; block ``b`` is
    #: ``[block_starts[b], block_starts[b + 1])`` (the last one ends at the dataset's
    #: end). ``None`` where the order has no blocks.
    block_starts: np.ndarray | None = None


def shard_window_plan(
    lengths: Sequence[int], nbytes: Sequence[int], window: int, rng: np.random.Generator
) -> EpochPlan:
    """`shard_window_order` with the blocks it cut (for readahead)."""
    n = int(sum(lengths))
    if n == 0 or window >= sum(nbytes):
        return EpochPlan(random_order(n, rng))
    starts, block_len, block_bytes = shard_blocks(lengths, nbytes, window / BLOCKS_PER_WINDOW, rng)
    return EpochPlan(interleave_blocks(starts, block_len, block_bytes, window, rng), starts)


def interleave_blocks(
    starts: np.ndarray,
    lengths: np.ndarray,
    nbytes: np.ndarray,
    window: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Shuffle the blocks, then interleave their samples within a sliding window of bytes.

    Block ``p`` (in shuffled order) starts at byte ``c_p`` of the shuffled stream; its
    samples get sort keys drawn uniformly from ``[c_p, c_p + w)``, with
    ``w = window - largest block``. The blocks live at key ``t`` (some samples read,
    some not) have ``c_p`` in ``(t - w, t]``, so together they hold at most
    ``w + largest block = window`` bytes (the largest block, if that is more).
    """
    n = int(lengths.sum())
    perm = rng.permutation(len(starts))
    starts, lengths, nbytes = starts[perm], lengths[perm], nbytes[perm]
    stream_pos = np.cumsum(nbytes, dtype=np.float64) - nbytes
    span = max(float(window) - float(nbytes.max(initial=0)), 0.0)
    keys = np.empty(n)
    samples = np.empty(n, dtype=_index_dtype(int(starts.max(initial=0)) + n))
    end = 0
    # Each block becomes a sorted run of keys over a random permutation of its
    # samples, so the final stable sort merely merges runs: about twice as fast as
    # sorting n independent keys, for the same distribution.
    for start, length, pos in zip(
        starts.tolist(), lengths.tolist(), stream_pos.tolist(), strict=True
    ):
        draws = rng.random(length)
        rank = np.argsort(draws)
        keys[end : end + length] = draws[rank] * span + pos
        samples[end : end + length] = rank + start
        end += length
    # Stable, so ties (span == 0 when one sample outgrows the window) keep block order.
    position = np.argsort(keys, kind="stable")
    del keys  # before the gather: peak memory stays near 20 bytes per sample
    return samples[position]


def epoch_order(
    order: OrderName, layout: ShardLayout, window: int, seed: int, epoch: int
) -> np.ndarray:
    """The global order of one epoch, identical on every rank."""
    return epoch_plan(order, layout, window, seed, epoch).indices


def epoch_plan(
    order: OrderName, layout: ShardLayout, window: int, seed: int, epoch: int
) -> EpochPlan:
    """`epoch_order` with the blocks of a ``shard-window`` order."""
    n = len(layout)
    if order == "sequential":
        return EpochPlan(sequential_order(n))
    rng = epoch_rng(seed, epoch)
    if order == "random":
        return EpochPlan(random_order(n, rng))
    if order == "shard-window":
        if layout.nbytes is None:
            raise InvalidOptionError(
                "order='shard-window' needs the bytes of every shard: pass a ShardedDataset "
                "or shard_nbytes=, or use order='random'"
            )
        return shard_window_plan(layout.lengths, layout.nbytes, window, rng)
    raise InvalidOptionError(f"order should be one of {ORDERS}, but got order={order!r}")


def order_digest(order: np.ndarray) -> str:
    """A short hash of an order, so a resume can check it sees the same order.

    Guards against what the settings cannot show: a numpy or shardio version
    whose generator or algorithm yields another order for the same seed.
    """
    data = np.ascontiguousarray(order).data.cast("B")  # the dtype follows from the length
    return hashlib.blake2b(data, digest_size=8).hexdigest()
