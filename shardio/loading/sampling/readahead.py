"""Readahead for the shard-window order: hint each block shortly before it is read.

Within a block the order is random, so the kernel's own readahead (which follows
sequential reads) never starts, and every small sample would be one disk read. A
block is contiguous on disk, so hinting it as a whole turns those reads into a few
large sequential ones, queued while the blocks before it are still being read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from shardio.core.warn import warn_user

from .orders import BLOCKS_PER_WINDOW

__all__ = ["BlockReadahead", "Hint", "lookahead_indices", "order_chunks"]

Hint = Callable[[int, int], object]
"""``hint(start, stop)``: read global indices ``[start, stop)`` ahead (ShardedDataset.readahead)."""


def lookahead_indices(window: int, total_nbytes: int, count: int, stride: int = 1) -> int:
    """How many indices ahead to look: about two blocks' bytes of the order, for a
    process that reads one index in ``stride`` of it."""
    per_sample = max(total_nbytes / max(count, 1), 1.0)
    return max(1, int(2 * window / BLOCKS_PER_WINDOW / per_sample / max(stride, 1)))


def order_chunks(
    indices: np.ndarray, readahead: BlockReadahead | None, start: int = 0, chunk: int = 8192
) -> Iterator[list[int]]:
    """``indices[start:]`` as lists of Python ints, at most ``chunk`` at a time, hinting
    the blocks coming up before each list when ``readahead`` is given."""
    step = chunk if readahead is None else min(chunk, readahead.step)
    for begin in range(start, len(indices), step):
        if readahead is not None:
            readahead.advance(begin)
        yield indices[begin : begin + step].tolist()


class BlockReadahead:
    """Hints every block of an order once, ``lookahead`` indices before its first sample.

    Args:
        indices: the order this process yields (its rank's share).
        block_starts: sorted first global index of each block; blocks tile the dataset.
        total: the dataset's length (where the last block ends).
        hint: called as ``hint(start, stop)`` for each block.
        lookahead: how many indices ahead of the current position to look.
    """

    def __init__(
        self,
        indices: np.ndarray,
        block_starts: np.ndarray,
        total: int,
        hint: Hint,
        lookahead: int,
    ) -> None:
        self.indices = indices
        self.starts = np.asarray(block_starts, dtype=np.int64)
        self.stops = np.append(self.starts[1:], total)
        self.hint = hint
        self.lookahead = max(1, int(lookahead))
        self.hinted = np.zeros(len(self.starts), dtype=bool)
        self.disabled = False
        self._upto = 0  # positions below this have been looked at

    @property
    def step(self) -> int:
        """How often (in indices) `advance` should be called to keep ahead."""
        return max(1, self.lookahead // 4)

    def advance(self, position: int) -> None:
        """Hint the blocks whose first sample at or after ``position`` is within reach."""
        target = min(len(self.indices), position + self.lookahead)
        start = max(self._upto, position)
        if target <= start or self.disabled:
            return
        ahead = self.indices[start:target]
        blocks = np.unique(np.searchsorted(self.starts, ahead, side="right") - 1)
        new = blocks[~self.hinted[blocks]]
        self.hinted[new] = True
        self._upto = target
        for block in new.tolist():
            if not self._hint(int(self.starts[block]), int(self.stops[block])):
                return

    def _hint(self, start: int, stop: int) -> bool:
        """One hint; False (and no more hints this pass) if it failed.

        A hint only makes reads faster, so its failure must not stop training: the
        read of those samples reports any real problem itself."""
        if self.disabled:
            return False
        try:
            self.hint(start, stop)
        except Exception as error:  # any failure of an optional speed-up
            self.disabled = True
            warn_user(
                f"readahead hint for samples [{start}, {stop}) failed ({error!r}); "
                "reading on without readahead for the rest of this pass",
                RuntimeWarning,
            )
            return False
        return True
