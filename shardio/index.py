"""Global sample index -> (shard, local index), by binary search over cumulative counts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidOptionError, SampleIndexError

__all__ = ["ShardIndex"]


class ShardIndex:
    """Maps global sample indices onto shards holding ``lengths[k]`` samples each."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.lengths = tuple(int(n) for n in lengths)
        if any(n < 0 for n in self.lengths):
            raise InvalidOptionError(
                f"shard lengths should be integers >= 0, but got {list(self.lengths)[:8]}"
            )
        # starts[k] is the global index of shard k's first sample; starts[-1] the total.
        self.starts = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.starts[1:])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def normalize(self, index: int) -> int:
        """A non-negative index, Python-style for negative ones; raises if out of range."""
        total = len(self)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise SampleIndexError(
                f"sample index should be an integer, but got {type(index).__name__} {index!r}"
            )
        position = int(index) + total if index < 0 else int(index)
        if not 0 <= position < total:
            raise SampleIndexError(
                f"sample index {int(index)} is out of range for a dataset of {total} samples "
                f"(valid: {-total} to {total - 1})"
            )
        return position

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, local index) of one global index."""
        position = self.normalize(index)
        shard = int(np.searchsorted(self.starts, position, side="right")) - 1
        return shard, position - int(self.starts[shard])

    def locate_many(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorized :meth:`locate`: arrays of shard numbers and local indices."""
        array = np.asarray(indices)
        if array.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if array.dtype.kind not in "iu" or array.ndim != 1:
            if array.ndim == 1 and array.dtype == object:
                array = np.array([self.normalize(i) for i in array], dtype=np.int64)
            else:
                raise SampleIndexError(
                    "sample indices should be a 1-D sequence of integers, "
                    f"but got dtype {array.dtype} and shape {array.shape}"
                )
        array = array.astype(np.int64, copy=True)
        total = len(self)
        array[array < 0] += total
        bad = (array < 0) | (array >= total)
        if bad.any():
            first = int(np.asarray(indices)[np.argmax(bad)])
            raise SampleIndexError(
                f"sample index {first} is out of range for a dataset of {total} samples "
                f"(valid: {-total} to {total - 1})"
            )
        shards = np.searchsorted(self.starts, array, side="right") - 1
        return shards, array - self.starts[shards]
