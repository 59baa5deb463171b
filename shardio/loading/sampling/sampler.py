"""ShardSampler: shard-aware shuffling, rank partitioning and exact, elastic mid-epoch resume."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from shardio.core.config import parse_size
from shardio.core.errors import InvalidOptionError, StateMismatchError

from .counted_resume import check_counted_resume, note_counted_resume
from .elastic import NO_RUNS, fold_pass, normalize_runs, pass_share, pass_size
from .frameworks import check_not_split
from .layout import ShardedSource, resolve_layout
from .orders import ORDERS, EpochPlan, OrderName, epoch_plan, order_digest
from .partition import PARTITIONS, PartitionName, rank_indices, samples_per_rank
from .ranks import PlacedSampler, non_negative_int, resolve_rank
from .readahead import BlockReadahead, Hint, lookahead_indices, order_chunks
from .state import SamplerState

__all__ = ["ShardSampler"]

_CHUNK = 8192  # indices converted to Python ints at a time while iterating


@dataclass
class _PassProgress:
    """Progress of one iteration over the sampler."""

    start: int
    digest: str
    consumed: np.ndarray  # positions of the epoch's order consumed before this pass
    yielded: int = 0
    done: bool = False


class ShardSampler(PlacedSampler):
    """Yields this rank's indices of a (sharded) dataset, one epoch at a time.

    A ``DistributedSampler`` subclass (with its attributes ``num_replicas``, ``rank``,
    ``epoch``, ``num_samples``, ...), so Lightning's Trainer and Fabric keep it as the
    rank's sampler instead of sharding its order again (see docs/frameworks.md).

    Args:
        data_source: a dataset with ``len()``; its ``shard_lengths`` and
            ``shard_nbytes`` (as on `shardio.ShardedDataset`) enable the
            ``shard-window`` order. May be omitted when ``shard_lengths`` is given.
        shuffle: shuffle each epoch (``False`` means ``order="sequential"``).
        order: ``"shard-window"`` (default when shuffling a dataset with known shard
            sizes), ``"random"`` (a full permutation) or ``"sequential"``.
        seed: with the epoch, the only source of randomness; the same on every rank.
        window: bytes the ``shard-window`` order keeps live at once, e.g. ``"1GB"``.
        rank, world_size: this process's place among the readers; where not given,
            taken from ``torch.distributed`` each time they are needed (so a sampler
            made before a framework starts the process group follows it), else 0 and 1.
            Under accelerate (and the HF Trainer), which split the batches of one order
            between processes themselves, give ``rank=0, world_size=1``.
        drop_last: cut the order to a multiple of ``world_size`` instead of padding it
            by repeating indices, as `DistributedSampler`.
        partition: ``"contiguous"`` (one run of the order per rank: ranks read
            different windows) or ``"strided"`` (every ``world_size``-th index, as
            DistributedSampler; ranks read the same windows at the same time).
        shard_lengths, shard_nbytes: explicit layout, overriding the dataset's.
        readahead: in the ``shard-window`` order, ask the OS to read each block into
            the page cache shortly before its first sample is yielded, through the
            dataset's ``readahead(start, stop)`` (as on ShardedDataset); ignored for
            other orders and datasets without that method.

    The global order of an epoch is a pure function of (seed, epoch, layout), the
    same for every world size; each rank takes its share of it. ``state_dict(consumed=n)``
    saves the position (see `state_dict` for how to count ``n`` behind a
    DataLoader that prefetches), and a state resumes at any world size.
    """

    def __init__(
        self,
        data_source: ShardedSource | Any | None = None,
        *,
        shuffle: bool = True,
        order: OrderName | None = None,
        seed: int = 0,
        window: int | str = "1GB",
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        partition: PartitionName = "contiguous",
        shard_lengths: Iterable[int] | None = None,
        shard_nbytes: Iterable[int] | None = None,
        readahead: bool = True,
    ) -> None:
        Sampler.__init__(self)  # not DistributedSampler's: it needs a process group
        self.dataset = data_source  # type: ignore[assignment]  # DistributedSampler's name
        self.layout = resolve_layout(data_source, shard_lengths, shard_nbytes)
        self.order: OrderName = _resolve_order(order, shuffle, self.layout.nbytes is not None)
        if self.order == "shard-window" and self.layout.nbytes is None:
            raise InvalidOptionError(
                "order='shard-window' needs the bytes of every shard: pass a ShardedDataset "
                "or shard_nbytes=, or use order='random'"
            )
        self.seed = non_negative_int(seed, "seed")
        self.window = parse_size(window, "window")
        if self.window <= 0:
            raise InvalidOptionError(
                f"window should be a size such as '1GB', but got window={window!r}"
            )
        resolve_rank(rank, world_size)  # checks what was given, now
        self._placement = (rank, world_size)
        self.shuffle = self.order != "sequential"
        self.drop_last = bool(drop_last)
        if partition not in PARTITIONS:
            raise InvalidOptionError(
                f"partition should be one of {PARTITIONS}, but got partition={partition!r}"
            )
        self.partition: PartitionName = partition
        self._fingerprint = self.layout.fingerprint()  # asked for at every state_dict()
        hint = getattr(data_source, "readahead", None) if readahead else None
        self._hint: Hint | None = hint if callable(hint) else None
        self._epoch = 0
        self._resume_at = 0  # offset the next pass starts from (set by load_state_dict)
        self._resume_digest = ""  # the order a loaded state expects ("" when unchecked)
        # Positions of this epoch's order consumed before the next pass (by passes at
        # another world size); the next pass reads the rest.
        self._consumed = NO_RUNS
        self._pass: _PassProgress | None = None
        self._len_base = 0  # indices of the epoch each rank read at a world size before

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """Indices each rank reads in a whole epoch (padding included)."""
        return samples_per_rank(len(self.layout), self.world_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next pass yields.

        Setting the epoch the sampler is at already changes nothing: a pass in
        progress keeps the position ``state_dict()`` saves, and a loaded state keeps
        its resume position, so ``load_state_dict(...)`` followed by the usual
        ``set_epoch(epoch)`` resumes (frameworks call ``set_epoch`` at every
        ``iter()``). Another epoch starts that epoch from its beginning: the
        position in a pass in progress is dropped.

        A caller that numbers epochs from 0 in each job (Fabric's loader) and set
        epoch ``k`` before a state of epoch ``e > k`` was loaded gets epochs ``e + 1,
        e + 2, ...`` for its ``k + 1, k + 2, ...`` after the resumed pass, as an
        uninterrupted run would.
        """
        epoch = self._caller_epoch(non_negative_int(epoch, "epoch"))
        note_counted_resume(self)
        if epoch == self._epoch:
            return
        self._resume_at, self._resume_digest, self._consumed = 0, "", NO_RUNS
        self._epoch = epoch
        self._pass = None
        self._len_base = 0
        self._len_answered = None

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's whole order for ``epoch`` (the current epoch by default)."""
        epoch = self._epoch if epoch is None else non_negative_int(epoch, "epoch")
        return self._share(self._plan(epoch).indices)

    def __iter__(self) -> Iterator[int]:
        # The order is built on the first next(), not here: torchdata's StatefulDataLoader
        # calls iter() once before it loads a state and once after, and building an
        # order of 10M samples twice would double the time to the first batch.
        progress = _PassProgress(
            start=self._resume_at, digest=self._resume_digest, consumed=self._consumed
        )
        self._pass, self._resume_at, self._resume_digest = progress, 0, ""
        self._pass_begins()
        return self._run(progress, self._epoch)

    def _run(self, progress: _PassProgress, epoch: int) -> Iterator[int]:
        check_not_split(self)
        check_counted_resume(self)
        plan = self._plan(epoch)
        order, block_starts = plan.indices, plan.block_starts
        digest = order_digest(order)
        resuming = progress.start or len(progress.consumed)
        if resuming and progress.digest and digest != progress.digest:
            raise StateMismatchError(
                f"cannot resume epoch {epoch}: its order differs from the one the state "
                "was saved with, so the remaining indices would be wrong. Was the state saved "
                "by another numpy or shardio version? Go on with the next epoch "
                f"(set_epoch({epoch + 1})), or use a new sampler to redo this one."
            )
        progress.digest = digest
        indices = pass_share(
            order, progress.consumed, self.rank, self.world_size, self.drop_last, self.partition
        )
        del order, plan  # only this rank's share stays in memory while iterating
        readahead = None
        if self._hint is not None and block_starts is not None:
            readahead = BlockReadahead(
                indices, block_starts, len(self.layout), self._hint, self._lookahead()
            )
        yield from _iterate(indices, progress, readahead)

    def _plan(self, epoch: int) -> EpochPlan:
        return epoch_plan(self.order, self.layout, self.window, self.seed, epoch)

    def _lookahead(self) -> int:
        """Indices of this rank that span about two blocks' bytes of the order."""
        stride = self.world_size if self.partition == "strided" else 1
        return lookahead_indices(
            self.window, self.layout.total_nbytes or 0, len(self.layout), stride
        )

    def _share(self, order: np.ndarray) -> np.ndarray:
        return rank_indices(order, self.rank, self.world_size, self.drop_last, self.partition)

    def __len__(self) -> int:
        """This rank's indices in the epoch, as DistributedSampler's: the whole epoch's
        also when a pass resumes mid-epoch, since frameworks (Lightning, accelerate, the
        HF Trainer) subtract the batches their checkpoint counts as done. At another
        world size: what this rank's share consumed before, plus its share of the rest."""
        consumed = self._consumed
        if self._pass is not None and not self._pass.done:
            consumed = self._pass.consumed
        return self._answered(self._len_base + self._pass_size(consumed))

    def _pass_size(self, consumed: np.ndarray) -> int:
        return pass_size(len(self.layout), consumed, self.world_size, self.drop_last)

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """The position in the epoch, to save in a checkpoint: a small dict, no index lists.

        ``consumed`` is how many samples the training loop has taken from the
        DataLoader since the current pass over it began (e.g. batches received times
        the batch size). Pass it whenever the DataLoader has workers: they prefetch,
        so the sampler has already yielded indices the loop has not seen yet. Left
        out, the count of yielded indices is used, which is exact only when the
        loop iterates the sampler directly, through a DataLoader with
        ``num_workers=0``, or through torchdata's ``StatefulDataLoader`` (whose own
        ``state_dict()`` calls this one at the right moment for each batch).

        Every rank consumes the same number of samples, so the state of rank 0 can be
        loaded on every rank, at this world size or any other.
        """
        progress = self._pass
        if progress is None:
            if consumed not in (None, 0):
                raise InvalidOptionError(
                    f"consumed should be 0 before iteration starts, but got consumed={consumed!r}"
                )
            return self._state(self._resume_at, self._resume_digest, self._consumed).to_dict()
        count = progress.yielded
        if consumed is not None:
            count = non_negative_int(consumed, "consumed")
            if count > progress.yielded:
                raise InvalidOptionError(
                    "consumed should count the samples taken since the current pass "
                    f"began, at most the {progress.yielded} indices it has yielded, "
                    f"but got consumed={consumed!r}"
                )
        return self._state(progress.start + count, progress.digest, progress.consumed).to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict`: the next pass yields exactly the rest of its epoch.

        The state may come from any world size. At the same world size each rank
        goes on with its own share. At another one, what every rank consumed is
        worked out from the state, and the new ranks split what is left of the epoch
        among themselves, each sample not yet consumed once (plus padding, or minus
        the cut of ``drop_last``, as at the start of an epoch).

        Raises `StateMismatchError` when the state was saved with a
        different dataset, seed, order, window, ``drop_last`` or ``partition``, since
        its order would not be this sampler's, and
        `InvalidOptionError` when it is not a sampler state.
        """
        saved = SamplerState.from_dict(state)
        problems = saved.mismatches(self._state(0, "", NO_RUNS))
        if problems:
            raise StateMismatchError(
                "cannot resume from this sampler state: it was saved with "
                + "; ".join(problems)
                + ". Resume with the same settings, or start without loading the state."
            )
        n = len(self.layout)
        consumed = normalize_runs(np.asarray(saved.consumed_runs, dtype=np.int64))
        if len(consumed) and consumed[-1, 1] > n:
            raise InvalidOptionError(
                f"state['consumed_runs'] should hold positions below dataset_len={n}, "
                f"but got runs up to {int(consumed[-1, 1])}"
            )
        world_size = non_negative_int(saved.world_size, "state['world_size']")
        if world_size < 1:
            raise InvalidOptionError(f"state['world_size'] should be >= 1, but got {world_size}")
        per_rank = pass_size(n, consumed, world_size, self.drop_last)
        if not 0 <= saved.offset <= per_rank:
            raise InvalidOptionError(
                f"state['offset'] should be between 0 and {per_rank}, but got offset={saved.offset}"
            )
        epoch = non_negative_int(saved.epoch, "state['epoch']")
        offset = saved.offset
        self._len_base = 0
        if world_size != self.world_size:
            self._len_base = offset
            # Another world size: fold the interrupted pass into the consumed positions,
            # and start a new pass over the rest at this world size.
            consumed = fold_pass(consumed, n, world_size, self.drop_last, self.partition, offset)
            offset = 0
        self._epoch, self._consumed = epoch, consumed
        self._resume_at, self._resume_digest = offset, saved.digest
        self._pass = None
        self._check_sized_epoch(epoch, world_size)
        self._loaded_epoch(epoch)

    def _state(self, offset: int, digest: str, consumed: np.ndarray) -> SamplerState:
        return SamplerState(
            epoch=self._epoch,
            offset=offset,
            dataset_len=len(self.layout),
            world_size=self.world_size,
            drop_last=self.drop_last,
            partition=self.partition,
            order=self.order,
            seed=self.seed,
            window=self.window,
            layout=self._fingerprint,
            digest=digest,
            consumed_runs=tuple(consumed.reshape(-1).tolist()),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(len={len(self.layout)}, order={self.order!r}, "
            f"seed={self.seed}, window={self.window}, rank={self.rank}, "
            f"world_size={self.world_size}, epoch={self._epoch})"
        )


def _iterate(
    indices: np.ndarray, progress: _PassProgress, readahead: BlockReadahead | None = None
) -> Iterator[int]:
    for chunk in order_chunks(indices, readahead, progress.start, _CHUNK):
        for index in chunk:
            progress.yielded += 1
            yield index
    progress.done = True


def _resolve_order(order: str | None, shuffle: bool, sizes_known: bool) -> OrderName:
    if order is None:
        if not shuffle:
            return "sequential"
        return "shard-window" if sizes_known else "random"
    if order not in ORDERS:
        raise InvalidOptionError(f"order should be one of {ORDERS}, but got order={order!r}")
    if not shuffle and order != "sequential":
        raise InvalidOptionError(
            f"order={order!r} shuffles, but got shuffle=False: "
            "pass shuffle=True or order='sequential'"
        )
    return order
