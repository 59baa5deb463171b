"""ShardedDataset: a drop-in torch ``Dataset`` over any shardio-readable path."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch.utils.data

from shardio.core.errors import InvalidOptionError
from shardio.core.schema import Sample, Schema
from shardio.storage.adapters.base import Columns, columns_to_samples
from shardio.storage.reader import DatasetReader

from .batches import Batch, BatchTransform, columns_to_tensors
from .blocks import block_columns
from .handover import slot_columns
from .loaderinfo import dataloader_worker
from .returns import Returns, ReturnsSpec

__all__ = ["ShardedDataset"]


class ShardedDataset(torch.utils.data.Dataset[Any]):
    """Samples of an HDF5 file, LMDB environment, Zarr group, raw shard or dataset directory.

    ``ds[i]`` is a dict of field -> ``np.ndarray`` (or ``bytes``); with
    ``returns=("image", "label")`` it is that tuple instead, and each collated batch the
    tuple of stacked tensors, as a hand-written Dataset returning ``image, label`` gives
    (a dict of key -> field name gives that dict; see `shardio.loading.returns`). ``DataLoader``
    calls
    `__getitems__` with a whole batch, which reads it in one transaction,
    selection or gather per shard, and its default collate function turns the columns
    straight into tensors (see `shardio.loading.batches`). ``transform`` is applied to each
    sample, which splits the batch into samples and restacks them (the per-sample
    cost); ``batch_transform`` is applied to each collated batch instead.
    Backend options (``decode=``, ``keys=`` for foreign LMDB, ``rdcc_nbytes=`` for
    HDF5, ``storage_options=`` for remote URLs) pass through to the adapter.

    ``max_rss="512MB"`` (or ``memory_policy=MemoryPolicy(...)``) caps the memory that
    reading adds in each process that reads, DataLoader workers included;
    ``max_rss="auto"`` (or ``"total:32GB"``) splits the job's memory between them.
    ``max_open_shards`` caps the shards a process keeps open (by default an eighth of
    its file-descriptor limit); the least recently used one is closed first.

    ``verify="first-read"`` checks each block of a shard's files against the digest its
    writer recorded the first time a process reads from it (``"open"``: each shard's
    whole checksum when a process opens it; default ``"off"``); damage raises
    `ShardCorruptError` instead of returning other data.
    ``allow_external=True`` lets a dataset read files outside its directory (links,
    HDF5 external storage and virtual datasets), which are refused by default.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fields: Sequence[str] | None = None,
        transform: Callable[[Sample], Any] | None = None,
        batch_transform: BatchTransform | None = None,
        format: str | None = None,
        returns: ReturnsSpec = None,
        **options: Any,
    ) -> None:
        if transform is not None and batch_transform is not None:
            raise InvalidOptionError(
                "give transform= (per sample) or batch_transform= (per collated batch), "
                "not both: apply the batch step to the collated batch in your loop instead"
            )
        # The worker identity (asked once per process) splits max_rss="auto".
        self.reader = DatasetReader(
            path, fields=fields, format=format, worker_info=dataloader_worker, **options
        )
        # `returns` picks the structure first; transform / batch_transform then get it.
        self.returns = None if returns is None else Returns(returns, self.reader.schema.names)
        self.transform = transform
        self.batch_transform = batch_transform
        self._per_sample = _then(self.returns, transform)
        self._per_batch = _then(self.returns, batch_transform)
        # torch holds native byte order only: swapped fields are converted on read.
        self._swapped = [
            f.name for f in self.reader.schema if not f.variable and not f.dtype.isnative
        ]

    # --------------------------------------------------------------- structure
    @property
    def path(self) -> str:
        return self.reader.path

    @property
    def schema(self) -> Schema:
        return self.reader.schema

    @property
    def fields(self) -> tuple[str, ...]:
        return self.reader.schema.names

    @property
    def format(self) -> str:
        return self.reader.format

    @property
    def shard_lengths(self) -> tuple[int, ...]:
        """Samples per shard, in global index order."""
        return self.reader.shard_lengths

    @property
    def shard_nbytes(self) -> tuple[int, ...]:
        """Bytes of each shard on disk."""
        return self.reader.shard_nbytes

    def __len__(self) -> int:
        return len(self.reader)

    def __repr__(self) -> str:
        return (
            f"ShardedDataset({self.path!r}, format={self.format!r}, samples={len(self)}, "
            f"shards={len(self.shard_lengths)}, fields={list(self.fields)})"
        )

    # ----------------------------------------------------------------- reading
    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> Any:
        """``ds[i]``: one sample, a dict of field -> value (a numpy scalar for a scalar
        field, as numpy and h5py indexing give). ``ds[[i, j]]``, ``ds[array]`` and
        ``ds[a:b]``: the batch as `read_batch` returns it (columns), so
        ``DataLoader(ds, sampler=BatchSampler(...), batch_size=None)`` reads a batch in
        one call; with ``transform`` a list of transformed samples, with
        ``batch_transform`` its result on the batch as tensors."""
        if isinstance(index, slice):
            return self._batch(np.arange(*index.indices(len(self)), dtype=np.int64))
        if isinstance(index, (list, tuple)) or (isinstance(index, np.ndarray) and index.ndim > 0):
            return self._batch(index)
        if isinstance(index, torch.Tensor) and index.ndim > 0:
            return self._batch(index.numpy())
        one = cast(int, index)  # anything else is refused by the index layer
        if self._swapped:
            sample = columns_to_samples(self.read_batch([one]), 1)[0]
        else:
            sample = self.reader.read(one)
        return self._per_sample(sample) if self._per_sample is not None else sample

    def _batch(self, indices: Sequence[int] | np.ndarray) -> Any:
        columns = self.read_batch(indices)
        if self.transform is not None:
            per_sample = cast(Callable[[Any], Any], self._per_sample)
            return [per_sample(s) for s in columns_to_samples(columns, len(indices))]
        if self._per_batch is not None:  # returns= then batch_transform=, as collated
            return self._per_batch(columns_to_tensors(columns))
        return columns

    def __getitems__(self, indices: Sequence[int]) -> Sequence[Any]:
        """A whole batch, read shard by shard in one backend call each.

        Without ``transform``, a `Batch`: the columns, seen as
        a sequence of samples, that ``default_collate`` turns into tensors without
        building them. In a DataLoader worker its fixed fields are read into a reused
        shared-memory slot (`shardio.loading.handover`), which the main process hands
        the loop as views."""
        if self.transform is not None:
            samples = columns_to_samples(self.read_batch(indices), len(indices))
            return [self._per_sample(s) for s in samples]  # type: ignore[misc]
        if torch.utils.data.get_worker_info() is None:  # into reused blocks (loading.blocks)
            (arrays, tensors), lease = block_columns(self.schema, len(indices)), None
        else:
            arrays, tensors, lease = slot_columns(self.schema, len(indices))
        if self._swapped:
            columns = self.read_batch(indices, out=arrays)
        else:  # read_batch's work without its frame: the batch path stays short
            columns = self.reader.read_many(indices, out=arrays)
        return Batch(columns, len(indices), tensors, self._per_batch, lease)

    def read_batch(
        self, indices: Sequence[int] | np.ndarray, out: dict[str, np.ndarray] | None = None
    ) -> Columns:
        """A batch as columns: stacked arrays for fixed fields, lists for variable ones.

        The fastest path (no per-sample dicts, no ``transform``). ``out`` maps fixed
        fields to native-order arrays of ``len(indices)`` rows to read them into."""
        reader_out = (
            None if out is None else {k: v for k, v in out.items() if k not in self._swapped}
        )
        columns = self.reader.read_many(indices, out=reader_out)  # checked there, not coerced
        for name in self._swapped:
            column = columns[name]
            target = None if out is None else out.get(name)
            if target is None:
                columns[name] = column.astype(column.dtype.newbyteorder("="))
            else:  # swapped while copied into the caller's (native-order) array
                target[...] = column
                columns[name] = target
        return columns

    def readahead(self, start: int, stop: int) -> int:
        """Ask the OS to start reading samples ``[start, stop)`` into the page cache.

        Returns at once with the bytes hinted (0 where the data is remote or the
        backend cannot tell where samples lie); the pages it brings in count in no
        process's RSS. `ShardSampler` calls it for the blocks its
        ``shard-window`` order is about to read."""
        return self.reader.readahead(start, stop)

    # ------------------------------------------------------------------- close
    def memory_stats(self) -> dict[str, Any]:
        """This process's RSS (total, file-backed, anonymous), growth over its baseline,
        bytes read, and the advise calls and reopens the memory budget made."""
        return self.reader.memory_stats()

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> ShardedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Then:
    """``second(first(x))``: picklable, so spawned workers get the composition."""

    __slots__ = ("first", "second")

    def __init__(self, first: Callable[[Any], Any], second: Callable[[Any], Any]) -> None:
        self.first = first
        self.second = second

    def __call__(self, value: Any) -> Any:
        return self.second(self.first(value))

    def __getstate__(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        return self.first, self.second

    def __setstate__(self, state: tuple[Callable[[Any], Any], Callable[[Any], Any]]) -> None:
        self.first, self.second = state


def _then(
    returns: Returns | None, transform: Callable[[Any], Any] | None
) -> Callable[[Any], Any] | None:
    if returns is None:
        return transform
    return returns if transform is None else _Then(returns, transform)
