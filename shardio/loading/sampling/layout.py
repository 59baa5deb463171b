"""What a sampler needs to know about a dataset: its length and how it is sharded.

The sampler duck-types the dataset (`ShardedSource`) so this layer never
imports the dataset or adapter modules.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from shardio.core.errors import InvalidOptionError

__all__ = ["ShardedSource", "ShardLayout", "resolve_layout"]


@runtime_checkable
class ShardedSource(Protocol):
    """A dataset whose global indices are laid out shard after shard.

    Shard 0 holds global indices ``[0, n0)``, shard 1 ``[n0, n0 + n1)``, and so on.
    `shardio.ShardedDataset` has these attributes.
    """

    @property
    def shard_lengths(self) -> Sequence[int]: ...

    @property
    def shard_nbytes(self) -> Sequence[int]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class ShardLayout:
    """Samples and bytes per shard; ``nbytes`` is ``None`` when unknown."""

    lengths: tuple[int, ...]
    nbytes: tuple[int, ...] | None

    def __len__(self) -> int:
        return sum(self.lengths)

    @property
    def total_nbytes(self) -> int | None:
        return None if self.nbytes is None else sum(self.nbytes)

    def fingerprint(self) -> str:
        """A short hash of the layout, so a saved state can tell two datasets apart."""
        text = f"{self.lengths}|{self.nbytes}".encode()
        return hashlib.blake2b(text, digest_size=8).hexdigest()


def _int_tuple(values: Any, option: str) -> tuple[int, ...]:
    expected = f"{option} should be a sequence of integers >= 0, but got {option}={values!r}"
    try:
        items = tuple(values)
        if any(isinstance(item, bool) for item in items):
            raise TypeError
        ints = tuple(operator.index(item) for item in items)
    except TypeError:
        raise InvalidOptionError(expected) from None
    if any(item < 0 for item in ints):
        raise InvalidOptionError(expected)
    return ints


def resolve_layout(
    data_source: Any | None,
    shard_lengths: Iterable[int] | None = None,
    shard_nbytes: Iterable[int] | None = None,
) -> ShardLayout:
    """Combine a dataset and explicit ``shard_lengths``/``shard_nbytes`` into a layout.

    Explicit values win over the dataset's attributes. A dataset without shard
    attributes counts as one shard of ``len(data_source)`` samples of unknown size.
    """
    if data_source is None and shard_lengths is None:
        raise InvalidOptionError(
            "ShardSampler needs a dataset or shard_lengths=, but got neither "
            "(data_source=None, shard_lengths=None)"
        )
    if shard_lengths is None:
        shard_lengths = getattr(data_source, "shard_lengths", None)
        if shard_lengths is None:
            shard_lengths = (_dataset_len(data_source),)
    lengths = _int_tuple(shard_lengths, "shard_lengths")
    if shard_nbytes is None and data_source is not None:
        shard_nbytes = getattr(data_source, "shard_nbytes", None)
    nbytes = None if shard_nbytes is None else _int_tuple(shard_nbytes, "shard_nbytes")

    if nbytes is not None and len(nbytes) != len(lengths):
        raise InvalidOptionError(
            f"shard_nbytes should have one entry per shard ({len(lengths)}), "
            f"but got {len(nbytes)} entries"
        )
    if data_source is not None:
        n = _dataset_len(data_source)
        if n != sum(lengths):
            raise InvalidOptionError(
                f"shard_lengths should add up to len(data_source)={n}, "
                f"but they add up to {sum(lengths)}"
            )
    return ShardLayout(lengths, nbytes)


def _dataset_len(data_source: Any) -> int:
    try:
        return len(data_source)
    except TypeError:
        raise InvalidOptionError(
            "data_source should be a map-style dataset with a length, "
            f"but got {type(data_source).__name__} which has no len()"
        ) from None
