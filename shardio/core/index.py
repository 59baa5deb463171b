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

    def normalize(self, index: object) -> int:
        """A non-negative index, Python-style for negative ones; raises if out of range."""
        total = len(self)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise SampleIndexError(
                f"sample index should be an integer, but got {type(index).__name__} {index!r}"
            )
        position = int(index) + total if index < 0 else int(index)
        if not 0 <= position < total:
            raise self._out_of_range(int(index))
        return position

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, local index) of one global index."""
        position = self.normalize(index)
        shard = int(np.searchsorted(self.starts, position, side="right")) - 1
        return shard, position - int(self.starts[shard])

    def locate_many(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorized `locate`: arrays of shard numbers and local indices."""
        array = self.check_many(indices)
        shards = np.searchsorted(self.starts, array, side="right") - 1
        return shards, array - self.starts[shards]

    def check_many(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``indices`` as non-negative int64 positions, or `SampleIndexError`.

        The one rule every read follows (`ds[i]`, `read_batch`, a `Loader`'s sampler):
        integers in range, negative ones counted from the end; nothing is coerced, so
        bools, boolean masks, floats, strings, None and integers past int64 are refused
        rather than read as some other sample."""
        if isinstance(indices, (list, tuple)):  # np.asarray would turn True into 1
            for kind in set(map(type, indices)):  # a few types, not one check per index
                if issubclass(kind, (bool, np.bool_)) or not issubclass(kind, (int, np.integer)):
                    self.normalize(next(v for v in indices if type(v) is kind))  # raises
        array = np.asarray(indices)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iuO"):
            raise SampleIndexError(
                "sample indices should be a 1-D sequence of integers, but got dtype "
                f"{array.dtype} and shape {array.shape}"
                + (" (a boolean mask is not an index list)" if array.dtype.kind == "b" else "")
            )
        if array.size == 0:
            return np.empty(0, np.int64)
        if array.dtype.kind == "O":
            return np.fromiter((self.normalize(i) for i in array), np.int64, count=array.size)
        total = len(self)
        lowest, highest = int(array.min()), int(array.max())
        if array.dtype.kind == "u" and highest >= total:
            raise self._out_of_range(highest)
        if lowest >= 0 and highest < total:  # the usual case: no negative index
            return array.astype(np.int64, copy=False)  # nothing below changes it in place
        positions = array.astype(np.int64, copy=True)
        positions[positions < 0] += total
        bad = (positions < 0) | (positions >= total)
        if bad.any():
            raise self._out_of_range(int(array[np.argmax(bad)]))
        return positions

    def _out_of_range(self, index: int) -> SampleIndexError:
        total = len(self)
        return SampleIndexError(
            f"sample index {index} is out of range for a dataset of {total} samples "
            f"(valid: {-total} to {total - 1})"
        )
