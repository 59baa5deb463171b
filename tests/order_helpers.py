"""Helpers for the sampler tests: the bytes an order keeps live, the samples a loader gives."""

from __future__ import annotations

from typing import Any

import numpy as np


def live_bytes(order: np.ndarray, unit_of: np.ndarray, unit_bytes: np.ndarray) -> np.ndarray:
    """Bytes of the units (blocks or shards) that are live after each position.

    A unit is live from the position of its first sample in ``order`` to the
    position of its last, inclusive: a reader that keeps it resident exactly that long.
    """
    units = unit_of[order]
    positions = np.arange(len(order))
    first = np.full(len(unit_bytes), len(order))
    last = np.full(len(unit_bytes), -1)
    np.minimum.at(first, units, positions)
    np.maximum.at(last, units, positions)
    used = last >= 0
    delta = np.zeros(len(order) + 1)
    np.add.at(delta, first[used], unit_bytes[used])
    np.add.at(delta, last[used] + 1, -unit_bytes[used])
    return np.cumsum(delta)[:-1]


def read_x(loader: Any, batches: int | None = None) -> list[int]:
    """Field ``x`` of every batch ``loader`` gives (of the first ``batches`` only)."""
    out: list[int] = []
    for step, batch in enumerate(loader):
        out.extend(batch["x"].tolist())
        if batches is not None and step + 1 == batches:
            break
    return out
