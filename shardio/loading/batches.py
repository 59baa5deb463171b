"""Batches that stay columns from the reader to the training loop.

`ShardedDataset.__getitems__` returns a
`Batch`: the columns one batched read produced, seen as a sequence of samples.
torch's ``default_collate`` dispatches on the type of ``batch[0]`` through
``default_collate_fn_map``, a public extension point; `BatchRow` is registered
there, so the plain ``DataLoader(ds, batch_size=..., num_workers=...)`` turns the
columns straight into tensors: no per-sample dicts, no restacking.

In a DataLoader worker, fixed fields are read straight into a reused shared-memory slot
(`shardio.loading.handover`), so sending a batch to the main process passes the slot's place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np
import torch
from torch.utils.data._utils.collate import collate, default_collate_fn_map

from shardio.core.errors import SampleIndexError
from shardio.core.schema import Sample
from shardio.storage.adapters.base import Columns

from .handover import SlotLease, hand_over
from .returns import FieldBatch

__all__ = ["Batch", "BatchRow", "BatchTransform", "columns_to_tensors"]

BatchTransform = Callable[[dict[str, Any]], Any]
"""Takes a collated batch (field -> tensor, or list for variable fields), returns the batch."""

# numpy dtype kinds torch holds: bool, signed, unsigned, float, complex.
_TORCH_KINDS = frozenset("biufc")


class BatchRow(dict[str, Any]):
    """One sample of a `Batch`: a dict of row views into its columns."""

    __slots__ = ("batch",)

    def __init__(self, batch: Batch, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.batch = batch

    def __reduce__(self) -> Any:
        return dict, (dict(self),)  # pickles as the plain sample it shows


class Batch(Sequence[Sample]):
    """A batch read as columns, seen as a sequence of per-sample dicts.

    ``batch[i]`` and iteration build a sample on demand (rows of array columns are
    views); `collate`, which ``default_collate`` calls, never builds them."""

    __slots__ = ("_count", "_lease", "_tensors", "_transform", "columns")

    def __init__(
        self,
        columns: Columns,
        count: int,
        tensors: Mapping[str, torch.Tensor] | None = None,
        batch_transform: BatchTransform | None = None,
        lease: SlotLease | None = None,
    ) -> None:
        self.columns = columns
        self._lease = lease  # the worker's shared-memory slot that backs ``tensors``
        self._count = count
        self._tensors = dict(tensors or {})  # shared-memory tensors that back columns
        self._transform = batch_transform

    def __len__(self) -> int:
        return self._count

    def __reduce__(self) -> Any:
        # A batch in a worker's reused slot pickles its columns by value (numpy copies
        # them), never the slot: the worker writes a later batch there.
        tensors = None if self._lease is not None else self._tensors
        return Batch, (self.columns, self._count, tensors, self._transform)

    @overload
    def __getitem__(self, index: int) -> BatchRow: ...
    @overload
    def __getitem__(self, index: slice) -> list[BatchRow]: ...
    def __getitem__(self, index: int | slice) -> BatchRow | list[BatchRow]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise SampleIndexError(
                f"batch index {index} is out of range for a batch of {self._count} samples"
            )
        index %= self._count
        return BatchRow(
            self,
            {
                name: column[index]  # a numpy scalar for scalar fields, as in ds[i]
                for name, column in self.columns.items()
            },
        )

    def __iter__(self) -> Iterator[BatchRow]:
        return (self[i] for i in range(self._count))

    def __eq__(self, other: object) -> bool:
        """Equal to a sequence of the same samples (arrays compared by value)."""
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(other) == self._count and all(
            _same_sample(mine, theirs) for mine, theirs in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Batch(samples={self._count}, fields={list(self.columns)})"

    def collate(self) -> Any:
        """The batch for the training loop: a tensor per fixed field (one row per
        sample), a list per variable field, then ``batch_transform``."""
        batch = columns_to_tensors(self.columns, self._tensors)
        if self._transform is not None:
            batch = self._transform(batch)
        return hand_over(batch, self._lease) if self._lease is not None else batch


def _same_sample(mine: Mapping[str, Any], theirs: Any) -> bool:
    if not isinstance(theirs, Mapping) or list(mine) != list(theirs):
        return False
    return all(
        mine[name] == theirs[name]
        if isinstance(mine[name], bytes)
        else bool(np.array_equal(mine[name], theirs[name]))
        for name in mine
    )


def columns_to_tensors(
    columns: Columns, tensors: Mapping[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """Fixed columns as tensors sharing their memory (``tensors`` where they back a
    column), variable ones as the lists they are."""
    tensors = tensors or {}
    batch = FieldBatch()
    for name, column in columns.items():
        tensor = tensors.get(name)
        if tensor is not None:
            batch[name] = tensor
        elif isinstance(column, np.ndarray) and column.dtype.kind in _TORCH_KINDS:
            if not column.flags.writeable or not column.dtype.isnative:
                column = column.astype(column.dtype.newbyteorder("="))  # a copy
            batch[name] = torch.from_numpy(column)
        else:
            batch[name] = column
    return batch


def _collate_rows(batch: Sequence[Any], *, collate_fn_map: Any = None) -> Any:
    """``default_collate`` of a `Batch` (straight from its columns) or of rows
    picked from batches (as the plain dicts they are)."""
    if isinstance(batch, Batch):
        return batch.collate()
    return collate([dict(row) for row in batch], collate_fn_map=collate_fn_map)


default_collate_fn_map.setdefault(BatchRow, _collate_rows)
