"""MixSampler: the order of a mixture of sharded datasets, split between ranks, resumable.

Position ``k`` of the mixture order reads source ``s`` (from the interleave of
`shardio.loading.sampling.mixture`) and that source's ``j``-th sample since the anchor; its
sample ``anchor[s] + j`` is position ``(anchor[s] + j) % n_s`` of the source's own
epoch ``(anchor[s] + j) // n_s`` order (``shard-window`` by default, from
`shardio.loading.sampling.orders`). Everything is a function of the state, so resuming at any
world size, with any number of workers, is arithmetic.

Ranks take every ``world_size``-th position, so what every rank has consumed is always a
prefix of the mixture order: the state is one position plus a count per source.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from shardio.core.config import parse_size
from shardio.core.errors import InvalidOptionError, StateMismatchError

from .counted_resume import check_counted_resume, note_counted_resume
from .frameworks import check_not_split
from .layout import ShardLayout, resolve_layout
from .mixstate import MixState
from .mixture import Interleave, normalize_weights, source_phase, source_seed
from .orders import (
    BLOCKS_PER_WINDOW,
    ORDERS,
    EpochPlan,
    OrderName,
    epoch_plan,
    epoch_rng,
    interleave_blocks,
    order_digest,
    random_order,
    shard_blocks,
)
from .ranks import PlacedSampler, non_negative_int, resolve_rank
from .readahead import Hint, lookahead_indices

__all__ = ["EXHAUSTED", "MixSampler"]

EXHAUSTED = ("restart", "stop")
_CHUNK = 8192  # positions of this rank worked out at a time


@dataclass
class _Pass:
    """One iteration: positions ``start + rank + world_size * i`` for ``i < count``."""

    start: int
    stop: int  # where the epoch's pass ends (after the anchor)
    count: int
    done_before: int  # this rank's samples of the epoch consumed before the pass
    yielded: int = 0
    done: bool = False


class MixSampler(PlacedSampler):
    """Yields this rank's indices of a `shardio.Mix`, one epoch at a time.

    A ``DistributedSampler`` subclass (with its attributes ``num_replicas``, ``rank``,
    ``epoch``, ``num_samples``, ...), so Lightning's Trainer and Fabric keep it as the
    rank's sampler instead of sharding its order again (see docs/frameworks.md).

    Args:
        mix: the mixture (its sources, weights, seed and ``exhausted`` rule).
        order: each source's own order: ``"shard-window"`` (default where shard sizes
            are known), ``"random"`` or ``"sequential"``.
        window: bytes the ``shard-window`` orders keep live at once, all sources
            together: each source gets ``window / sources``, cut into
            ``ceil(8 / sources)`` blocks (`source_blocks`), so mixing more sources
            reads neither more bytes nor more blocks at once.
        rank, world_size: this process's place among the readers; where not given,
            taken from ``torch.distributed`` each time they are needed (so a sampler
            made before a framework starts the process group follows it), else 0 and 1.
            Under accelerate (and the HF Trainer), which split the batches of one order
            between processes themselves, give ``rank=0, world_size=1``.
        samples_per_epoch: mixture positions in one epoch with ``exhausted="restart"``
            (default: the samples of all sources); each rank yields
            ``samples_per_epoch // world_size`` per epoch, and the positions left over
            begin the next epoch. With ``exhausted="stop"`` an epoch ends where the
            first source runs out.
        readahead: hint each source's blocks shortly before they are read.

    ``state_dict(consumed=n)`` and ``load_state_dict`` work as on `ShardSampler`; a state
    resumes at any world size, and new weights (`set_weights`, or a `Mix` made with
    other weights) apply from the saved position on.
    """

    def __init__(
        self,
        mix: Any,
        *,
        order: OrderName | None = None,
        window: int | str = "1GB",
        rank: int | None = None,
        world_size: int | None = None,
        samples_per_epoch: int | None = None,
        readahead: bool = True,
    ) -> None:
        Sampler.__init__(self)  # not DistributedSampler's: it needs a process group
        self.dataset = mix  # DistributedSampler's name
        self.names: tuple[str, ...] = tuple(mix.names)
        sources = tuple(mix.sources)
        self.layouts: tuple[ShardLayout, ...] = tuple(resolve_layout(s) for s in sources)
        self.lengths = np.array([len(layout) for layout in self.layouts], dtype=np.int64)
        self.offsets = np.cumsum(self.lengths) - self.lengths
        self.seed = non_negative_int(mix.seed, "seed")
        self.exhausted = mix.exhausted
        if self.exhausted not in EXHAUSTED:
            raise InvalidOptionError(
                f"exhausted should be one of {EXHAUSTED}, but got exhausted={self.exhausted!r}"
            )
        sizes_known = all(layout.nbytes is not None for layout in self.layouts)
        if order is None:
            order = "shard-window" if sizes_known else "random"
        if order not in ORDERS:
            raise InvalidOptionError(f"order should be one of {ORDERS}, but got order={order!r}")
        if order == "shard-window" and not sizes_known:
            raise InvalidOptionError(
                "order='shard-window' needs the bytes of every shard of every source: "
                "mix ShardedDatasets, or use order='random'"
            )
        self.order: OrderName = order
        self.window = parse_size(window, "window")
        if self.window <= 0:
            raise InvalidOptionError(
                f"window should be a size such as '1GB', but got window={window!r}"
            )
        self.source_window = max(1, self.window // max(len(self.names), 1))
        resolve_rank(rank, world_size)  # checks what was given, now
        self._placement = (rank, world_size)
        self.shuffle = order != "sequential"  # DistributedSampler's names
        self.drop_last = True  # positions left over begin the next epoch (or are skipped)
        total = int(self.lengths.sum())
        if samples_per_epoch is None:
            samples_per_epoch = total
        self.samples_per_epoch = non_negative_int(samples_per_epoch, "samples_per_epoch")
        self._phases = np.array([source_phase(self.seed, n) for n in self.names])
        self._source_seeds = [source_seed(self.seed, n) for n in self.names]
        self._fingerprints = tuple(layout.fingerprint() for layout in self.layouts)
        hint = getattr(mix, "readahead", None) if readahead else None
        self._hint: Hint | None = hint if callable(hint) else None
        self.weights = self._checked_weights(getattr(mix, "weights", None))
        self._interleave = Interleave(self.weights, self._phases)
        self._pending: np.ndarray | None = None  # weights for the next pass
        self._epoch = 0
        self._anchor = np.zeros(len(self.names), dtype=np.int64)
        self._start = 0  # where the next pass begins, after the anchor
        self._done_before = 0  # this rank's samples of the epoch consumed before it
        self._pass_stop = -1  # where the current epoch's pass ends; -1: a whole epoch
        self._next_start: int | None = None  # where the epoch after a pass begins
        self._pass: _Pass | None = None
        # source -> its last two (epoch, plan, digest), newest last: a chunk that crosses
        # a source's epoch boundary needs both, and rebuilding one costs its whole order
        self._plans: dict[int, list[tuple[int, EpochPlan, str]]] = {}
        self._expected: dict[int, tuple[int, str]] = {}  # digests a loaded state names

    # ------------------------------------------------------------------ weights
    def _checked_weights(self, weights: Mapping[str, float] | None) -> np.ndarray:
        array = normalize_weights(self.names, weights)
        empty = [
            n
            for n, w, size in zip(self.names, array, self.lengths, strict=True)
            if w > 0 and size == 0
        ]
        if empty:
            raise InvalidOptionError(
                f"source {empty[0]!r} has no samples, but got weight > 0 for it: give it weight 0"
            )
        return array

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """New weights, in effect from where the next pass begins (the resume point
        after `load_state_dict`, or the next epoch). Each source goes on in its own
        order: no sample of its current epoch is read twice or skipped."""
        self.weights = self._checked_weights(weights)
        self._pending = self.weights

    def _effective(self) -> tuple[np.ndarray, Interleave, int, int]:
        """(anchor, interleave, start, pass stop) of the next pass: pending weights
        take effect at its start."""
        if self._pending is None or np.array_equal(self._pending, self._interleave.weights):
            return self._anchor, self._interleave, self._start, self._pass_stop
        anchor = self._anchor + self._interleave.counts(self._start)
        pass_stop = self._pass_stop - self._start if self._pass_stop >= 0 else -1
        return anchor, Interleave(self._pending, self._phases), 0, pass_stop

    def _apply_pending(self) -> None:
        self._anchor, self._interleave, self._start, self._pass_stop = self._effective()
        self._pending = None

    # ------------------------------------------------------------------ ranks
    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """Indices this rank reads in the epoch: ``len(self)``."""
        return len(self)

    # ------------------------------------------------------------------- epochs
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next pass yields; the epoch a loaded state belongs to
        keeps its position, and the epoch after a pass goes on where that pass ended.
        The epoch the sampler is at again (frameworks call it at every ``iter()``)
        keeps the position a pass in progress has reached for `state_dict`. After a
        resume, a caller's own epoch count goes on from the state's epoch (as for
        `ShardSampler`)."""
        epoch = self._caller_epoch(non_negative_int(epoch, "epoch"))
        note_counted_resume(self)
        if epoch == self._epoch:
            if self._pass is not None and self._pass.done:
                self._pass = None
            return
        if self.exhausted == "stop":
            # every source begins its epoch `epoch`; what other sources had left is skipped
            self._anchor = self.lengths * epoch
            self._start = 0
        elif epoch == self._epoch + 1 and self._next_start is not None:
            self._start = self._next_start
        else:  # as an uninterrupted run at this world size and these weights would be
            self._anchor = np.zeros(len(self.names), dtype=np.int64)
            self._interleave = Interleave(self.weights, self._phases)
            self._pending = None
            self._start = epoch * (self.samples_per_epoch // self.world_size) * self.world_size
        self._pass_stop, self._next_start = -1, None
        self._done_before = 0
        self._epoch = epoch
        self._pass = None
        self._len_answered = None

    def _stop(self, anchor: np.ndarray, interleave: Interleave, start: int, pass_stop: int) -> int:
        """Where the pass of this epoch ends, after the anchor."""
        if self.exhausted == "restart":
            return pass_stop if pass_stop >= 0 else start + self.samples_per_epoch
        ends = []
        for s in np.flatnonzero(interleave.weights > 0).tolist():
            # the sample of `s` that would begin its next epoch: the mixture ends before it
            left = max(0, int(self.lengths[s] * (self._epoch + 1) - anchor[s]))
            ends.append(interleave.position_of(s, left))
        return min(ends)

    # ---------------------------------------------------------------- iteration
    def __len__(self) -> int:
        """This rank's indices in the epoch: the whole epoch's also when a pass resumes
        mid-epoch (what the rank consumed before, plus its share of the rest), since
        frameworks (Lightning, accelerate, the HF Trainer) subtract the batches their
        checkpoint counts as done."""
        if self._pass is not None and not self._pass.done:
            return self._answered(self._pass.done_before + self._pass.count)
        anchor, interleave, start, pass_stop = self._effective()
        rest = max(0, self._stop(anchor, interleave, start, pass_stop) - start)
        return self._answered(self._done_before + rest // self.world_size)

    def __iter__(self) -> Iterator[int]:
        self._apply_pending()
        stop = self._stop(self._anchor, self._interleave, self._start, self._pass_stop)
        count = max(0, stop - self._start) // self.world_size
        progress = _Pass(self._start, stop, count, self._done_before)
        self._pass = progress
        self._next_start = self._start + count * self.world_size
        self._pass_begins()
        return self._run(progress)

    def _run(self, progress: _Pass) -> Iterator[int]:
        check_not_split(self)
        check_counted_resume(self)
        step = self._step()
        hints = _Hints(self) if self._hint is not None and self.order == "shard-window" else None
        upcoming = self._chunk(progress, 0, step)
        if hints is not None:
            hints.ahead(upcoming)
        for begin in range(0, progress.count, step):
            current = upcoming
            if begin + step < progress.count:  # hint the next chunk while this one is read
                upcoming = self._chunk(progress, begin + step, step)
                if hints is not None:
                    hints.ahead(upcoming)
            for index in current[0].tolist():
                progress.yielded += 1
                yield index
        progress.done = True

    def _step(self) -> int:
        total_bytes = sum(layout.total_nbytes or 0 for layout in self.layouts)
        ahead = lookahead_indices(
            self.window, total_bytes, int(self.lengths.sum()), self.world_size
        )
        return max(64, min(_CHUNK, ahead))

    def _chunk(
        self, progress: _Pass, begin: int, step: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """This rank's indices ``begin:begin + step`` of the pass, with the source,
        source epoch and source-local index of each."""
        end = min(progress.count, begin + step)
        first = progress.start + begin * self.world_size
        sources, samples = self._interleave.slice(
            first, progress.start + end * self.world_size, self.rank, self.world_size
        )
        return self.locate(sources, samples)

    def locate(
        self, sources: np.ndarray, samples: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Global indices (with source, source epoch, source-local index) of samples
        ``samples`` (counted from the anchor) of ``sources``."""
        total = self._anchor[sources] + samples
        epochs = total // self.lengths[sources]
        local = np.empty(len(sources), dtype=np.int64)
        for s in np.unique(sources).tolist():
            mine = sources == s
            for e in np.unique(epochs[mine]).tolist():
                here = mine & (epochs == e)
                order = self._plan(s, e).indices
                local[here] = order[total[here] - e * self.lengths[s]]
        return self.offsets[sources] + local, sources, epochs, local

    def _plan(self, source: int, epoch: int) -> EpochPlan:
        """Source ``source``'s order of its epoch ``epoch`` (one kept per source)."""
        kept = self._plans.setdefault(source, [])
        for cached_epoch, cached, _ in kept:
            if cached_epoch == epoch:
                return cached
        plan = source_plan(
            self.order,
            self.layouts[source],
            self.source_window,
            source_blocks(len(self.names)),
            self._source_seeds[source],
            epoch,
        )
        digest = order_digest(plan.indices)
        expected = self._expected.get(source)
        if expected is not None and expected[0] == epoch and expected[1] != digest:
            raise StateMismatchError(
                f"cannot resume source {self.names[source]!r}: its epoch {epoch} order differs "
                "from the one the state was saved with, so its remaining samples would be "
                "wrong. Was the state saved by another numpy or shardio version?"
            )
        kept.append((epoch, plan, digest))
        del kept[:-2]
        return plan

    # -------------------------------------------------------------------- state
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """The position, for a checkpoint: O(sources) numbers.

        ``consumed`` counts the samples the loop took since the current pass began
        (needed behind a DataLoader with workers, as for `ShardSampler`)."""
        progress = self._pass
        if progress is None:
            if consumed not in (None, 0):
                raise InvalidOptionError(
                    f"consumed should be 0 before iteration starts, but got consumed={consumed!r}"
                )
            return self._state(self._start, self._pass_stop, self._done_before).to_dict()
        count = progress.yielded
        if consumed is not None:
            count = non_negative_int(consumed, "consumed")
            if count > progress.yielded:
                raise InvalidOptionError(
                    "consumed should count the samples taken since the current pass began, "
                    f"at most the {progress.yielded} indices it has yielded, "
                    f"but got consumed={consumed!r}"
                )
        position = progress.start + count * self.world_size
        return self._state(position, progress.stop, progress.done_before + count).to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict`, saved at any world size: the next pass reads the
        rest of the mixture order from that position. Where this sampler's weights
        differ from the state's, they apply from that position.

        Raises `StateMismatchError` naming what differs (sources, their sizes or
        layouts, seed, order, window, ``exhausted``, ``samples_per_epoch``)."""
        saved = MixState.from_dict(state)
        problems = saved.mismatches(self._state(0, -1, 0))
        if problems:
            raise StateMismatchError(
                "cannot resume this mixture from the state: it was saved with "
                + "; ".join(problems)
                + ". Resume with the same sources and settings, or start without the state."
            )
        weights = np.asarray(saved.weights, dtype=np.float64)
        if (weights < 0).any() or not np.isclose(weights.sum(), 1.0):
            raise InvalidOptionError(
                f"state['weights'] should be >= 0 and add up to 1, but got {list(saved.weights)}"
            )
        self._epoch = saved.epoch
        self._anchor = np.asarray(saved.anchor, dtype=np.int64)
        self._interleave = Interleave(weights, self._phases)
        self._start, self._pass_stop = saved.position, saved.pass_stop
        self._done_before = saved.done
        self._pass, self._plans = None, {}
        self._expected = {}
        for s, text in enumerate(saved.digests):
            epoch_text, _, digest = text.partition(":")
            if epoch_text.isdigit() and digest:
                self._expected[s] = (int(epoch_text), digest)
        self._pending = None if np.array_equal(self.weights, weights) else self.weights
        # set_epoch(epoch + 1) right after loading: a state from the end of a pass goes
        # on from its position (what is left over begins the next epoch, as in the run
        # that saved it); from the middle of one, the rest of that epoch is skipped.
        if self.exhausted == "restart" and saved.pass_stop >= 0:
            left = max(0, saved.pass_stop - saved.position)
            rest = 0 if left < max(saved.world_size, 1) else left // self.world_size
            self._next_start = saved.position + rest * self.world_size
        else:
            self._next_start = None
        self._check_sized_epoch(saved.epoch, saved.world_size)
        self._loaded_epoch(saved.epoch)

    def _state(self, position: int, pass_stop: int, done: int) -> MixState:
        return MixState(
            epoch=self._epoch,
            position=position,
            done=done,
            pass_stop=pass_stop,
            anchor=tuple(self._anchor.tolist()),
            weights=tuple(self._interleave.weights.tolist()),
            names=self.names,
            lengths=tuple(self.lengths.tolist()),
            layouts=self._fingerprints,
            seed=self.seed,
            order=self.order,
            window=self.window,
            exhausted=self.exhausted,
            samples_per_epoch=self.samples_per_epoch,
            world_size=self.world_size,
            digests=tuple(
                f"{kept[-1][0]}:{kept[-1][2]}" if kept else ""
                for kept in (self._plans.get(s, []) for s in range(len(self.names)))
            ),
        )

    def source_positions(self) -> dict[str, tuple[int, int]]:
        """Where each source stands, at the position `state_dict()` would save: its
        own epoch and how many samples of that epoch have been read."""
        progress = self._pass
        if progress is None:
            anchor, interleave, position, _ = self._effective()
        else:
            anchor, interleave = self._anchor, self._interleave
            position = progress.start + progress.yielded * self.world_size
        total = anchor + interleave.counts(position)
        return {
            name: (int(t // n), int(t % n)) if n else (0, 0)
            for name, t, n in zip(self.names, total.tolist(), self.lengths.tolist(), strict=True)
        }

    def __repr__(self) -> str:
        return (
            f"MixSampler(sources={list(self.names)}, order={self.order!r}, seed={self.seed}, "
            f"rank={self.rank}, world_size={self.world_size}, epoch={self._epoch})"
        )


def source_blocks(sources: int) -> int:
    """Blocks each source's ``shard-window`` order interleaves at once: about
    ``BLOCKS_PER_WINDOW`` live blocks in the whole mixture, as in one dataset's order,
    so a batch touches about as many blocks (and shards) however many sources it
    mixes (at least one block per source)."""
    return max(1, -(-BLOCKS_PER_WINDOW // max(sources, 1)))


def source_plan(
    order: OrderName, layout: ShardLayout, window: int, blocks: int, seed: int, epoch: int
) -> EpochPlan:
    """A source's epoch order: `epoch_plan`, with ``shard-window`` cutting the
    source's ``window`` into ``blocks`` blocks (not ``BLOCKS_PER_WINDOW``)."""
    if order != "shard-window" or layout.nbytes is None or blocks == BLOCKS_PER_WINDOW:
        return epoch_plan(order, layout, window, seed, epoch)
    rng = epoch_rng(seed, epoch)
    n = len(layout)
    if n == 0 or window >= sum(layout.nbytes):
        return EpochPlan(random_order(n, rng))
    starts, lengths, nbytes = shard_blocks(layout.lengths, layout.nbytes, window / blocks, rng)
    return EpochPlan(interleave_blocks(starts, lengths, nbytes, window, rng), starts)


class _Hints:
    """Hints each block of each source's order once, when a chunk about to be read
    first reaches it (one set of flags per source: no thread, no pool).

    Every rank reads from every block (rank ``r`` takes every ``world_size``-th
    position), and the ranks of one node share its page cache: where the launcher says
    how many ranks a node runs (``LOCAL_WORLD_SIZE``, as torchrun does), each hints
    only its part of the blocks (see `node_place`). A block the rank that hints it
    does not reach (a few samples of a source's next epoch at the end of a pass) goes
    unhinted: a hint only makes reads faster."""

    def __init__(self, sampler: MixSampler) -> None:
        self.sampler = sampler
        self.hinted: dict[tuple[int, int], np.ndarray] = {}
        self.disabled = False
        self.local_rank, self.local_size = node_place(sampler.rank, sampler.world_size)

    def ahead(self, chunk: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
        _, sources, epochs, local = chunk
        sampler = self.sampler
        for s in np.unique(sources).tolist():
            mine = sources == s
            for e in np.unique(epochs[mine]).tolist():
                starts = sampler._plan(s, e).block_starts
                if starts is None or self.disabled:
                    continue
                flags = self.hinted.setdefault((s, e), np.zeros(len(starts), dtype=bool))
                if len(self.hinted) > 2 * len(sampler.names):  # drop finished epochs
                    for key in [k for k in self.hinted if k[0] == s and k[1] < e]:
                        del self.hinted[key]
                blocks = np.unique(
                    np.searchsorted(starts, local[mine & (epochs == e)], "right") - 1
                )
                new = blocks[~flags[blocks]]
                flags[new] = True
                stops = np.append(starts[1:], sampler.lengths[s])
                base = int(sampler.offsets[s])
                if self.local_size > 1:  # the node's other ranks hint the others
                    new = new[new % self.local_size == self.local_rank]
                for b in new.tolist():
                    if not self._hint(base + int(starts[b]), base + int(stops[b])):
                        return

    def _hint(self, start: int, stop: int) -> bool:
        hint = self.sampler._hint
        assert hint is not None
        try:
            hint(start, stop)
        except Exception as error:  # an optional speed-up must not stop training
            import warnings

            self.disabled = True
            warnings.warn(
                f"readahead hint for samples [{start}, {stop}) failed ({error!r}); "
                "reading on without readahead for the rest of this pass",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        return True


def node_place(rank: int, world_size: int) -> tuple[int, int]:
    """``(local_rank, local_world_size)`` of this rank on its node: ``LOCAL_WORLD_SIZE``
    (set by torchrun) ranks per node, numbered node by node, so the local rank is
    ``rank % LOCAL_WORLD_SIZE``; ``(0, 1)`` where it is not set or does not divide
    ``world_size``."""
    text = os.environ.get("LOCAL_WORLD_SIZE", "")
    size = int(text) if text.isdigit() else 1
    if not 1 < size <= world_size or world_size % size:
        return 0, 1
    return rank % size, size
