"""Mix: several sharded datasets read as one, in set proportions, with a ``source`` column.

The index space is the sources one after another (source ``s`` holds
``[offsets[s], offsets[s] + len(source))``), so `Mix` is a dataset like any other:
`shardio.MixSampler` gives the weighted order, any other sampler works too. A batch
is read source by source, each in one batched read, and says where each sample came
from in the ``source`` field (the source's number in `Mix.names`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch.utils.data

from shardio.core.errors import InvalidOptionError, SampleIndexError, SchemaError
from shardio.core.schema import Field, Sample, Schema
from shardio.memory import MemoryPolicy
from shardio.storage.adapters.base import Columns, columns_to_samples
from shardio.storage.openlimit import resolve_open_limit
from shardio.storage.reader import DatasetReader

from .batches import Batch, BatchTransform
from .handover import slot_columns
from .mixbudget import MixBudget
from .sampling.mixsampler import EXHAUSTED
from .sampling.mixture import normalize_weights

__all__ = ["Mix", "SOURCE_FIELD"]

#: The field that holds each sample's source number.
SOURCE_FIELD = "source"


class Mix(torch.utils.data.Dataset[Any]):
    """A mixture of datasets by name, e.g. ``Mix({"web": web, "code": code},
    weights={"web": 0.7, "code": 0.3}, seed=0)``.

    Args:
        sources: name -> dataset (`ShardedDataset`s, or anything with ``read_batch``,
            ``schema``, ``shard_lengths`` and ``shard_nbytes``), all with the same fields.
        weights: name -> weight (scaled to add up to 1; equal when left out). A weight
            may be 0: that source is not read.
        seed: the seed of the interleave and of every source's own order.
        exhausted: ``"restart"``: a source that runs out begins its next epoch (its own
            reshuffle); ``"stop"``: the mixture's epoch ends where the first source runs out.
        max_open_shards: shards kept open in a process by all sources together (by
            default what one dataset keeps, an eighth of the file-descriptor limit):
            each source's reader is limited to its share, so mixing many sources of
            many shards does not run out of file descriptors.
        max_rss, memory_policy: one memory budget for all sources together, per reading
            process, as on `ShardedDataset` (``"512MB"``, ``"auto"``, ``"total:8GB"``):
            one guard measures the process once against the whole budget, and each
            source's backend is fitted to its shards' part of it (see docs/mixtures.md).
            Give it here, not to the sources.
        transform, batch_transform: as on `ShardedDataset`.

    ``len(mix)`` is the samples of all sources; ``mix[i]`` is sample ``i`` of that
    index space, with its ``source``.
    """

    def __init__(
        self,
        sources: Mapping[str, Any],
        weights: Mapping[str, float] | None = None,
        *,
        seed: int = 0,
        exhausted: str = "restart",
        max_open_shards: int | None = None,
        max_rss: int | str | None = None,
        memory_policy: MemoryPolicy | None = None,
        transform: Callable[[Sample], Any] | None = None,
        batch_transform: BatchTransform | None = None,
    ) -> None:
        if not isinstance(sources, Mapping) or not sources:
            raise InvalidOptionError(
                f"sources should be a non-empty dict of name -> dataset, but got {sources!r}"
            )
        if transform is not None and batch_transform is not None:
            raise InvalidOptionError(
                "give transform= (per sample) or batch_transform= (per collated batch), not both"
            )
        if exhausted not in EXHAUSTED:
            raise InvalidOptionError(
                f"exhausted should be one of {EXHAUSTED}, but got exhausted={exhausted!r}"
            )
        self.names: tuple[str, ...] = tuple(str(name) for name in sources)
        self.sources: tuple[Any, ...] = tuple(sources.values())
        for name, source in zip(self.names, self.sources, strict=True):
            if not hasattr(source, "read_batch") or not hasattr(source, "schema"):
                raise InvalidOptionError(
                    f"source {name!r} should be a shardio.ShardedDataset (with read_batch and "
                    f"schema), but got {type(source).__name__}"
                )
        self.schema = _mixed_schema(self.names, self.sources)
        normalize_weights(self.names, weights)  # checked here, kept as given
        self.max_open_shards = resolve_open_limit(max_open_shards)
        # every check before the sources' readers change: refused, they stay as they were
        self.budget: MixBudget | None = None
        policy = MemoryPolicy.resolve(max_rss, memory_policy)
        if policy is not None:
            readers = [getattr(source, "reader", None) for source in self.sources]
            for name, source, reader in zip(self.names, self.sources, readers, strict=True):
                if not isinstance(reader, DatasetReader):
                    raise InvalidOptionError(
                        f"max_rss= on a Mix shares the budget between ShardedDataset sources, "
                        f"but source {name!r} is a {type(source).__name__}"
                    )
            self.budget = MixBudget(policy, cast(list[DatasetReader], readers))
            self.budget.attach(self.names)
        share = max(1, self.max_open_shards // len(self.sources))
        for source in self.sources:
            reader = getattr(source, "reader", None)
            if isinstance(reader, DatasetReader) and reader.max_open_shards > share:
                reader.max_open_shards = share
        self.weights: dict[str, float] | None = None if weights is None else dict(weights)
        self.seed = seed
        self.exhausted = exhausted
        self.transform = transform
        self.batch_transform = batch_transform
        lengths = np.array([len(s) for s in self.sources], dtype=np.int64)
        self.offsets = np.cumsum(lengths) - lengths
        self._ends = np.cumsum(lengths)
        # every source's shards one after another: a batch is read shard by shard
        shard_counts = [len(source.shard_lengths) for source in self.sources]
        self._shard_ends = np.cumsum(np.array(self.shard_lengths, dtype=np.int64))
        self._shard_source = np.repeat(np.arange(len(self.sources)), shard_counts)
        self._local = threading.local()  # scratch buffers of each reading thread

    # --------------------------------------------------------------- structure
    @property
    def fields(self) -> tuple[str, ...]:
        return self.schema.names

    @property
    def shard_lengths(self) -> tuple[int, ...]:
        """Samples per shard, the sources' shards one after another."""
        return tuple(n for source in self.sources for n in source.shard_lengths)

    @property
    def shard_nbytes(self) -> tuple[int, ...]:
        return tuple(n for source in self.sources for n in source.shard_nbytes)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}: {len(s)}" for n, s in zip(self.names, self.sources, strict=True))
        return f"Mix({{{sizes}}}, weights={self.weights}, seed={self.seed})"

    def source_of(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The source number and source-local index of each global index."""
        array = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = (array < 0) | (array >= len(self))
        if bad.any():
            raise SampleIndexError(
                f"index {int(array[bad][0])} is out of range for a mixture of {len(self)} "
                f"samples ({', '.join(self.names)})"
            )
        sources = np.searchsorted(self._ends, array, side="right")
        return sources, array - self.offsets[sources]

    # ----------------------------------------------------------------- reading
    def __getitem__(self, index: int) -> Any:
        sample = columns_to_samples(self.read_batch([index]), 1)[0]
        return self.transform(sample) if self.transform is not None else sample

    def __getitems__(self, indices: Sequence[int]) -> Sequence[Any]:
        """A whole batch, one batched read per source in it (see `ShardedDataset`)."""
        if self.transform is not None:
            samples = columns_to_samples(self.read_batch(indices), len(indices))
            return [self.transform(s) for s in samples]
        if torch.utils.data.get_worker_info() is None:
            return Batch(self.read_batch(indices), len(indices), None, self.batch_transform)
        # In a worker: the fixed fields go straight into a reused shared-memory slot
        # (as ShardedDataset's), not fresh shared memory per batch; what a transform
        # makes of them is handed over as shardio.loading.handover says.
        arrays, tensors, lease = slot_columns(self.schema, len(indices))
        columns = self.read_batch(indices, out=arrays)
        return Batch(columns, len(indices), tensors, self.batch_transform, lease)

    def read_batch(
        self, indices: Sequence[int] | np.ndarray, out: dict[str, np.ndarray] | None = None
    ) -> Columns:
        """A batch as columns in ``indices`` order, plus the ``source`` column.

        A batch of one source is that source's read (into ``out`` where given).
        Otherwise the batch is grouped by shard, all sources' shards at once, and the
        rows of each shard are one read of their source, straight into a scratch
        buffer reused by this thread (fresh memory costs a page fault per page); one
        gather per field then puts the rows in order. Each row is copied twice, as
        in one dataset's read of a batch of several shards."""
        array = np.asarray(indices, dtype=np.int64).reshape(-1)
        sources, local = self.source_of(array)
        count = len(sources)
        fixed = [f for f in self.schema if not f.variable and f.name != SOURCE_FIELD]
        if count and (sources == sources[0]).all():
            part_out = (
                None if out is None else {f.name: out[f.name] for f in fixed if f.name in out}
            )
            columns = dict(self.sources[int(sources[0])].read_batch(local, out=part_out))
        else:
            shards = np.searchsorted(self._shard_ends, array, side="right")
            # One check of the budget for the batch, not one per source read.
            with self.budget.batch() if self.budget is not None else contextlib.nullcontext():
                columns = self._read_grouped(shards, local, fixed, out)
        source_column = None if out is None else out.get(SOURCE_FIELD)
        if source_column is None:
            source_column = np.empty(count, dtype=np.int64)
        source_column[...] = sources
        columns[SOURCE_FIELD] = source_column
        return {name: columns[name] for name in self.schema.names}

    def _read_grouped(
        self,
        shards: np.ndarray,
        local: np.ndarray,
        fixed: list[Field],
        out: dict[str, np.ndarray] | None,
    ) -> Columns:
        count = len(shards)
        order = np.argsort(shards, kind="stable")
        grouped_shards = shards[order]
        grouped_local = local[order]
        scratch = {f.name: self._scratch(f, count) for f in fixed}
        columns: Columns = {f.name: [None] * count for f in self.schema if f.variable}
        cuts = (np.flatnonzero(grouped_shards[1:] != grouped_shards[:-1]) + 1).tolist()
        for lo, hi in zip([0, *cuts], [*cuts, count], strict=True):
            targets = {name: buffer[lo:hi] for name, buffer in scratch.items()}
            source = self.sources[int(self._shard_source[grouped_shards[lo]])]
            part = source.read_batch(grouped_local[lo:hi], out=targets)  # one shard's rows
            for name, values in part.items():
                if name in targets:
                    if values is not targets[name]:  # a source that did not read into out
                        targets[name][...] = values
                    continue
                column = columns[name]
                for at, value in zip(order[lo:hi].tolist(), values, strict=True):
                    column[at] = value
        inverse = np.empty(count, dtype=np.int64)
        inverse[order] = np.arange(count)
        for f in fixed:
            target = None if out is None else out.get(f.name)
            if target is None:
                target = np.empty((count, *f.shape), dtype=f.dtype)
            # mode="clip": the indices are in range, and "raise" would buffer the output
            np.take(scratch[f.name], inverse, axis=0, out=target, mode="clip")
            columns[f.name] = target
        return columns

    def _scratch(self, fld: Field, count: int) -> np.ndarray:
        """This thread's reused buffer of at least ``count`` rows of ``fld``."""
        buffers: dict[str, np.ndarray] = self._local.__dict__.setdefault("buffers", {})
        buffer = buffers.get(fld.name)
        if buffer is None or len(buffer) < count:
            buffer = _mid_page_array((count, *fld.shape), fld.dtype)
            buffers[fld.name] = buffer
        return buffer[:count]

    def readahead(self, start: int, stop: int) -> int:
        """Hint global samples ``[start, stop)`` (within one source or across)."""
        start, stop = max(0, int(start)), min(int(stop), len(self))
        if stop <= start:
            return 0
        first = int(np.searchsorted(self._ends, start, side="right"))
        last = int(np.searchsorted(self._ends, stop - 1, side="right"))
        hinted = 0
        for s in range(first, last + 1):  # one source, unless the range spans several
            offset, end = int(self.offsets[s]), int(self._ends[s])
            hint = getattr(self.sources[s], "readahead", None)
            if callable(hint):
                hinted += int(hint(max(start, offset) - offset, min(stop, end) - offset) or 0)
        return hinted

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]  # scratch buffers stay in their process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    # ------------------------------------------------------------------- close
    def memory_stats(self) -> dict[str, Any]:
        """Each source's `memory_stats()`, by name."""
        return {
            name: source.memory_stats()
            for name, source in zip(self.names, self.sources, strict=True)
            if hasattr(source, "memory_stats")
        }

    def close(self) -> None:
        for source in self.sources:
            close = getattr(source, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> Mix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Where in a page the scratch buffers begin (see `_mid_page_array`).
_PAGE, _MID_PAGE = 4096, 2048


def _mid_page_array(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """An empty array that begins half a page past a page boundary.

    NOTE: a large ``np.empty`` begins 16 bytes past a page (the allocator's header),
    and on some x86 CPUs (AMD EPYC measured) a copy whose source and destination
    are a few bytes apart modulo 4 KiB runs many times slower (4K aliasing): 16 KiB
    rows from a mapped shard (page-aligned) into such a buffer copied at about a
    thirtieth of the speed of a buffer half a page off. The scratch rows are copied
    in from the sources and out to the batch (a page-aligned slot in a worker), so
    half a page from both is the best place for them."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + _PAGE, dtype=np.uint8)
    start = (_MID_PAGE - raw.ctypes.data) % _PAGE
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _mixed_schema(names: tuple[str, ...], sources: tuple[Any, ...]) -> Schema:
    """The sources' common schema plus ``source``; a clear error where they differ."""
    first: Schema = sources[0].schema
    for name, source in zip(names[1:], sources[1:], strict=True):
        schema: Schema = source.schema
        if schema.names != first.names:
            raise SchemaError(
                f"every source of a Mix should have the same fields, but source {name!r} has "
                f"{list(schema.names)} and source {names[0]!r} has {list(first.names)}: pass "
                "fields= to ShardedDataset to pick the common ones"
            )
        for mine, theirs in zip(first, schema, strict=True):
            if (mine.kind, mine.dtype.newbyteorder("="), mine.shape) != (
                theirs.kind,
                theirs.dtype.newbyteorder("="),
                theirs.shape,
            ):
                raise SchemaError(
                    f"field {mine.name!r} should be the same in every source of a Mix, but it "
                    f"is {theirs.kind} {theirs.dtype} {theirs.shape} in {name!r} and "
                    f"{mine.kind} {mine.dtype} {mine.shape} in {names[0]!r}"
                )
    if SOURCE_FIELD in first.names:
        raise SchemaError(
            f"the sources of a Mix should not have a field {SOURCE_FIELD!r}: the mixture adds "
            "it; pass fields= to ShardedDataset to leave it out"
        )
    native = [
        f if f.variable else Field(f.name, f.dtype.newbyteorder("="), f.shape, f.kind)
        for f in first
    ]
    return Schema((*native, Field(SOURCE_FIELD, np.dtype(np.int64))))
