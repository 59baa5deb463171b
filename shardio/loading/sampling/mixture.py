"""The interleave of a mixture: which source each position of the mixture order reads.

Source ``s`` with weight ``w_s`` (weights add up to 1) and phase ``o_s`` in ``[0, 1)``
gets the keys ``(j + o_s) / w_s`` for its ``j``-th sample, ``j = 0, 1, ...``; the
mixture order is every source's keys merged, ties going to the lower source number.
It is stride scheduling (a divisor method of apportionment), and everything about it
is arithmetic on those keys:

- the counts of each source among the first ``m`` positions, for any ``m``, in
  O(sources) (`Interleave.counts`): resume is arithmetic, not replay;
- the positions ``[a, b)`` as (source, sample) pairs (`Interleave.slice`);
- the proportions: the keys of ``s`` at or below ``t`` number ``t * w_s + e_s`` with
  ``e_s`` in ``[-o_s, 1 - o_s]``, so over any window of ``W`` consecutive positions the
  count of source ``s`` is within ``1 + w_s * (S - 2)`` of ``W * w_s`` (``S >= 2``
  sources with a weight above 0; within 1 for two sources). Phases are drawn from the
  seed so that sources of equal weight do not come in bursts at the same keys.

A source of weight 0 has no keys: it is never read.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from shardio.core.errors import InvalidOptionError

__all__ = ["Interleave", "normalize_weights", "source_seed", "source_phase", "window_bound"]


def _hash_int(*parts: object) -> int:
    text = "\x00".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def source_seed(seed: int, name: str) -> int:
    """The seed of source ``name``'s own epoch orders: depends on its name, not on
    which other sources are mixed with it."""
    return _hash_int("shardio.loading.mix.order", seed, name)


def source_phase(seed: int, name: str) -> float:
    """The phase ``o_s`` in ``[0, 1)`` of source ``name``'s keys."""
    return _hash_int("shardio.loading.mix.phase", seed, name) / 2.0**63


def normalize_weights(names: Sequence[str], weights: Mapping[str, float] | None) -> np.ndarray:
    """Weights in ``names`` order, scaled to add up to 1 (equal weights when ``None``)."""
    if weights is None:
        return np.full(len(names), 1.0 / max(len(names), 1))
    if not isinstance(weights, Mapping):
        raise InvalidOptionError(
            f"weights should be a dict of source name -> weight, but got {weights!r}"
        )
    unknown = sorted(set(weights) - set(names))
    missing = [name for name in names if name not in weights]
    if unknown or missing:
        raise InvalidOptionError(
            f"weights should name every source {list(names)} once, but got "
            + "; ".join(
                p
                for p in (
                    f"unknown {unknown}" if unknown else "",
                    f"no weight for {missing}" if missing else "",
                )
                if p
            )
        )
    values = []
    for name in names:
        value = weights[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise InvalidOptionError(
                f"weights[{name!r}] should be a number >= 0, but got {value!r}"
            )
        if not math.isfinite(float(value)) or float(value) < 0:
            raise InvalidOptionError(
                f"weights[{name!r}] should be a finite number >= 0, but got {value!r}"
            )
        values.append(float(value))
    array = np.asarray(values, dtype=np.float64)
    if array.sum() <= 0:
        raise InvalidOptionError(f"weights should have at least one above 0, but got {weights!r}")
    return array / array.sum()


def window_bound(weights: np.ndarray) -> np.ndarray:
    """Per source, the most its count over any window of ``W`` positions differs from
    ``W * weight`` (see the module docstring)."""
    active = int(np.count_nonzero(weights > 0))
    if active <= 1:
        return np.zeros(len(weights))
    return np.where(weights > 0, 1.0 + weights * (active - 2), 0.0)


@dataclass(frozen=True, eq=False)
class Interleave:
    """The merged key order of sources with ``weights`` (adding up to 1) and ``phases``."""

    weights: np.ndarray
    phases: np.ndarray
    _active: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_active", np.flatnonzero(self.weights > 0))

    def keys(self, source: int, j: np.ndarray) -> np.ndarray:
        """Keys of samples ``j`` of ``source`` (one formula everywhere: comparisons agree)."""
        return (np.asarray(j, dtype=np.float64) + self.phases[source]) / self.weights[source]

    def _count_below(self, source: int, t: float, inclusive: bool = False) -> int:
        """How many keys of ``source`` are below ``t`` (at or below, if ``inclusive``)."""
        w = float(self.weights[source])
        if w <= 0:
            return 0
        o = float(self.phases[source])
        j = max(0, math.ceil(t * w - o) - 1)

        # Python floats are IEEE doubles, as numpy's: (j + o) / w here equals keys().
        def before(j: int) -> bool:  # key j sorts before the threshold
            key = (j + o) / w
            return key <= t if inclusive else key < t

        while j > 0 and not before(j - 1):
            j -= 1
        while before(j):
            j += 1
        return j

    def counts(self, m: int) -> np.ndarray:
        """How many of the first ``m`` positions each source holds."""
        out = np.zeros(len(self.weights), dtype=np.int64)
        if m <= 0:
            return out
        spread = len(self._active) + 1
        lo, hi = max(0.0, float(m - spread)), float(m + spread)
        candidates_key, candidates_src = [], []
        for s in self._active.tolist():
            first = self._count_below(s, lo)
            last = self._count_below(s, hi)
            out[s] = first
            j = np.arange(first, last, dtype=np.int64)
            candidates_key.append(self.keys(s, j))
            candidates_src.append(np.full(len(j), s, dtype=np.int64))
        taken = m - int(out.sum())
        keys = np.concatenate(candidates_key)
        sources = np.concatenate(candidates_src)
        order = np.lexsort((sources, keys))[:taken]
        out += np.bincount(sources[order], minlength=len(self.weights))
        return out

    def slice(
        self, a: int, b: int, offset: int = 0, stride: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``a + offset, a + offset + stride, ...`` below ``b``: the source of
        each and its sample number in that source (counted from 0 at position 0).

        Each source's keys are one increasing run, laid out by source number, so a
        stable sort of the keys merges the runs (ties go to the lower source, as
        everywhere) in O(n log sources)."""
        first, last = self.counts(a), self.counts(max(a, b))
        active = np.flatnonzero(last > first).tolist()
        if not active:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        samples = np.concatenate([np.arange(first[s], last[s], dtype=np.int64) for s in active])
        keys = np.empty(len(samples))
        sources = np.empty(len(samples), dtype=np.int64)
        at = 0
        for s in active:
            size = int(last[s] - first[s])
            keys[at : at + size] = self.keys(s, samples[at : at + size])
            sources[at : at + size] = s
            at += size
        order = np.argsort(keys, kind="stable")[offset::stride]
        return sources[order], samples[order]

    def position_of(self, source: int, j: int) -> int:
        """The position sample ``j`` of ``source`` takes: how many keys sort before it."""
        if self.weights[source] <= 0:
            raise InvalidOptionError(f"source {source} has weight 0: it has no positions")
        key = (j + float(self.phases[source])) / float(self.weights[source])
        return sum(self._count_below(s, key, inclusive=s < source) for s in self._active.tolist())
