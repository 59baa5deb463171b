"""Elastic resume: which positions of an epoch's order are consumed, and who reads the rest.

Positions index the epoch's global order (the same for every world size). A *pass*
is one iteration over what is left of an epoch at one world size: the positions not
yet consumed, in order, then padding to a multiple of the world size (or cut, with
``drop_last``), split between the ranks by a partition (see `.partition`).

Every rank consumes the same count ``k`` of its share, so what a pass consumed is a
function of ``k``: the first ``k * world_size`` indices of the pass when strided, a
run of ``k`` at the start of each rank's part when contiguous. Mapped back to
positions, that is at most a few runs per rank, so the consumed set of an epoch is
kept as sorted runs ``[start, stop)``: O(world size) numbers per resume, never a
list of indices.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .partition import PartitionName, rank_indices, samples_per_rank

__all__ = [
    "NO_RUNS",
    "normalize_runs",
    "runs_total",
    "complement",
    "pass_size",
    "pass_share",
    "fold_pass",
]

#: The empty set of positions: shape ``(0, 2)``.
NO_RUNS = np.zeros((0, 2), dtype=np.int64)


def normalize_runs(runs: Iterable[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """Sorted, disjoint, non-adjacent, non-empty ``[start, stop)`` runs as an ``(m, 2)`` array."""
    array = np.asarray(list(runs) if not isinstance(runs, np.ndarray) else runs, dtype=np.int64)
    array = array.reshape(-1, 2)
    array = array[array[:, 1] > array[:, 0]]
    if len(array) == 0:
        return NO_RUNS
    array = array[np.argsort(array[:, 0], kind="stable")]
    # A run starts a new group when it begins after every earlier run has ended.
    reach = np.maximum.accumulate(array[:, 1])
    new_group = np.ones(len(array), dtype=bool)
    new_group[1:] = array[1:, 0] > reach[:-1]
    group = np.cumsum(new_group) - 1
    starts = array[new_group, 0]
    stops = np.zeros(len(starts), dtype=np.int64)
    np.maximum.at(stops, group, array[:, 1])
    return np.stack([starts, stops], axis=1)


def runs_total(runs: np.ndarray) -> int:
    """How many positions the runs hold."""
    return int((runs[:, 1] - runs[:, 0]).sum())


def complement(runs: np.ndarray, n: int) -> np.ndarray:
    """The runs of ``[0, n)`` not in ``runs`` (normalized, within ``[0, n)``)."""
    edges = np.concatenate(([0], runs.reshape(-1), [n]))
    return normalize_runs(edges.reshape(-1, 2))


def pass_size(n: int, consumed: np.ndarray, world_size: int, drop_last: bool) -> int:
    """Indices each rank reads in a pass over what ``consumed`` leaves of ``n``."""
    return samples_per_rank(n - runs_total(consumed), world_size, drop_last)


def pass_share(
    order: np.ndarray,
    consumed: np.ndarray,
    rank: int,
    world_size: int,
    drop_last: bool,
    partition: PartitionName,
) -> np.ndarray:
    """The indices ``rank`` reads in a pass over the positions of ``order`` not ``consumed``.

    Padding repeats consumed positions first (so a sample not yet consumed is read
    once), then the order from its start; with nothing consumed that is exactly
    `rank_indices`, DistributedSampler's padding.
    """
    if len(consumed) == 0:
        return rank_indices(order, rank, world_size, drop_last, partition)
    n = len(order)
    per_rank = pass_size(n, consumed, world_size, drop_last)
    if partition == "contiguous":
        pass_indices = np.arange(rank * per_rank, (rank + 1) * per_rank, dtype=np.int64)
    else:
        pass_indices = np.arange(rank, per_rank * world_size, world_size, dtype=np.int64)
    return order[_positions(pass_indices, consumed, n)]


def fold_pass(
    consumed: np.ndarray,
    n: int,
    world_size: int,
    drop_last: bool,
    partition: PartitionName,
    count: int,
) -> np.ndarray:
    """``consumed`` plus the positions a pass over the rest consumed when every rank took
    the first ``count`` indices of its share (padding counts: it was read)."""
    per_rank = pass_size(n, consumed, world_size, drop_last)
    count = min(count, per_rank)
    if count == 0:
        return consumed
    if partition == "contiguous":
        taken = [(r * per_rank, r * per_rank + count) for r in range(world_size)]
    else:
        taken = [(0, count * world_size)]
    remaining = complement(consumed, n)
    pieces = [consumed]
    for first, stop in taken:
        pieces.append(_pass_runs(first, stop, remaining, consumed, n))
    return normalize_runs(np.concatenate(pieces))


def _pass_runs(
    first: int, stop: int, remaining: np.ndarray, consumed: np.ndarray, n: int
) -> np.ndarray:
    """The positions of pass indices ``[first, stop)``, as runs."""
    real = runs_total(remaining)
    pieces = [_select_runs(remaining, first, min(stop, real))]
    pad_first, pad_stop = max(first, real) - real, stop - real
    if pad_stop > pad_first:
        used = runs_total(consumed)
        pieces.append(_select_runs(consumed, pad_first, min(pad_stop, used)))
        wrap_first, wrap_stop = max(pad_first, used) - used, pad_stop - used
        if wrap_stop > wrap_first:  # beyond the consumed positions: the order from its start
            pieces.append(_wrapped_runs(wrap_first, wrap_stop, n))
    return np.concatenate(pieces)


def _select_runs(runs: np.ndarray, first: int, stop: int) -> np.ndarray:
    """Positions ``[first, stop)`` of the sequence the runs list in order, as runs."""
    if stop <= first:
        return NO_RUNS
    lengths = runs[:, 1] - runs[:, 0]
    ends = np.cumsum(lengths)
    begins = ends - lengths
    lo = int(np.searchsorted(ends, first, side="right"))
    hi = int(np.searchsorted(begins, stop, side="left"))
    part = runs[lo:hi].copy()
    part[:, 0] += np.maximum(first - begins[lo:hi], 0)
    part[:, 1] -= np.maximum(ends[lo:hi] - stop, 0)
    return part


def _wrapped_runs(first: int, stop: int, n: int) -> np.ndarray:
    """Positions ``first % n, ..., (stop - 1) % n`` as runs."""
    if stop - first >= n:
        return np.array([[0, n]], dtype=np.int64)
    start = first % n
    end = start + stop - first
    if end <= n:
        return np.array([[start, end]], dtype=np.int64)
    return np.array([[start, n], [0, end - n]], dtype=np.int64)


def _positions(pass_indices: np.ndarray, consumed: np.ndarray, n: int) -> np.ndarray:
    """Map pass indices to positions of the order (``pass_indices`` sorted ascending)."""
    remaining = complement(consumed, n)
    real = runs_total(remaining)
    out = np.empty(len(pass_indices), dtype=np.int64)
    is_real = pass_indices < real
    out[is_real] = _index_into(remaining, pass_indices[is_real])
    pad = pass_indices[~is_real] - real
    used = runs_total(consumed)
    from_consumed = pad < used
    padded = np.empty(len(pad), dtype=np.int64)
    padded[from_consumed] = _index_into(consumed, pad[from_consumed])
    padded[~from_consumed] = (pad[~from_consumed] - used) % max(n, 1)
    out[~is_real] = padded
    return out


def _index_into(runs: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The ``indices``-th positions of the sequence the runs list in order."""
    lengths = runs[:, 1] - runs[:, 0]
    begins = np.cumsum(lengths) - lengths
    run = np.searchsorted(begins, indices, side="right") - 1
    return runs[run, 0] + (indices - begins[run])
