"""Helpers for the mixture tests: mixtures described by their shard sizes, global streams."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardio.loading.sampling import MixSampler


@dataclass(frozen=True)
class Sizes:
    """A sharded source as the sampler sees it (the ShardedSource protocol)."""

    shard_lengths: tuple[int, ...]
    shard_nbytes: tuple[int, ...]

    def __len__(self) -> int:
        return sum(self.shard_lengths)


class Layouts:
    """What MixSampler reads of a Mix, for sources given by their shard lengths."""

    def __init__(
        self,
        shards: Mapping[str, Sequence[int]],
        weights: Mapping[str, float] | None = None,
        *,
        seed: int = 0,
        exhausted: str = "restart",
        sample_bytes: int = 100,
    ) -> None:
        self.names = tuple(shards)
        self.sources = tuple(
            Sizes(tuple(lengths), tuple(n * sample_bytes for n in lengths))
            for lengths in shards.values()
        )
        self.weights = None if weights is None else dict(weights)
        self.seed = seed
        self.exhausted = exhausted
        self.offsets = np.cumsum([len(s) for s in self.sources]) - [len(s) for s in self.sources]

    def with_weights(self, weights: Mapping[str, float]) -> Layouts:
        other = Layouts.__new__(Layouts)
        other.__dict__.update(self.__dict__)
        other.weights = dict(weights)
        return other

    def split(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(source, source-local index) of global indices."""
        array = np.asarray(indices, dtype=np.int64)
        ends = np.cumsum([len(s) for s in self.sources])
        sources = np.searchsorted(ends, array, side="right")
        return sources, array - self.offsets[sources]


def merged_pass(samplers: Sequence[MixSampler]) -> list[int]:
    """One pass of every rank's sampler, merged back into mixture order (rank r holds
    positions r, r + W, ...)."""
    shares = [list(s) for s in samplers]
    lengths = {len(share) for share in shares}
    assert len(lengths) == 1, f"ranks yielded different counts: {lengths}"
    out: list[int] = []
    for row in zip(*shares, strict=True):
        out.extend(row)
    return out


def ranks(mix: Any, world: int, **options: Any) -> list[MixSampler]:
    return [MixSampler(mix, rank=r, world_size=world, **options) for r in range(world)]
