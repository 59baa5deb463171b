"""A sampler's place among the readers (rank, world size) and the integer option check
both samplers share.

Where ``rank`` and ``world_size`` are not given, they come from ``torch.distributed``
each time they are asked for, so a sampler made before a framework (Lightning,
Fabric) starts the process group follows it.
"""

from __future__ import annotations

import operator
from typing import Any

import torch.distributed as dist
from torch.utils.data import DistributedSampler

from shardio.core.errors import InvalidOptionError, StateMismatchError

__all__ = ["PlacedSampler", "non_negative_int", "resolve_rank"]


class PlacedSampler(DistributedSampler[int]):
    """What `ShardSampler` and `MixSampler` share as `DistributedSampler`s: their place
    among the readers, resolved at each use from `_placement` (the `rank` and
    `world_size` given, or None), the epoch, and DistributedSampler's derived sizes.
    A subclass sets `_placement` and `_epoch` and defines `num_samples`."""

    _placement: tuple[int | None, int | None]
    _epoch: int

    @property
    def rank(self) -> int:  # type: ignore[override]
        """This process's place among the readers (see ``world_size``)."""
        return resolve_rank(*self._placement)[0]

    @property
    def world_size(self) -> int:
        """The number of readers: as given, else ``torch.distributed``'s when it is
        initialized, else 1."""
        return resolve_rank(*self._placement)[1]

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        """``world_size``, under DistributedSampler's name."""
        return self.world_size

    @property
    def total_size(self) -> int:  # type: ignore[override]
        """Indices all ranks read in a whole epoch."""
        return self.num_samples * self.world_size

    @property
    def epoch(self) -> int:  # type: ignore[override]
        return self._epoch

    # Epochs a caller numbers itself, from 0 in each job (Fabric's loader counts its
    # iter() calls): the epoch it last set, and what to add to its numbers once the
    # pass of a loaded state has begun (see `_caller_epoch`).
    _told: int | None = None
    _shift = 0
    _shift_phase = ""  # "loaded", then "resumed" at the next iter(), then "shifted"

    def _caller_epoch(self, epoch: int) -> int:
        """The epoch ``set_epoch(epoch)`` selects.

        A caller that set epoch ``k`` before a state of a later epoch ``e`` was loaded
        (Fabric's loader sets its own count, then the `StatefulDataLoader` hands the
        sampler its state at the same ``iter()``) counts its epochs itself: after the
        resumed pass, its ``k + 1, k + 2, ...`` are this run's ``e + 1, e + 2, ...``,
        so the epochs after a resume are those of an uninterrupted run. A caller that
        sets the state's epoch (before the pass), or ``e + 1`` after it, counts as the
        state does and is taken at its word."""
        self._told = epoch
        phase, self._shift_phase = self._shift_phase, ""
        if phase == "shifted" or (phase == "resumed" and epoch != self._epoch + 1):
            self._shift_phase = "shifted"
            return epoch + self._shift
        self._shift = 0
        return epoch

    def _loaded_epoch(self, epoch: int) -> None:
        """Note that a state of ``epoch`` was loaded (see `_caller_epoch`)."""
        told = self._told
        self._shift = epoch - told if told is not None and told < epoch else 0
        self._shift_phase = "loaded" if self._shift else ""

    def _pass_begins(self) -> None:
        """Note a new pass (at ``iter()``): a loaded state's pass has begun."""
        if self._shift_phase == "loaded":
            self._shift_phase = "resumed"

    # A framework's resume by counting batches (see counted_resume.py): vouched for by
    # AccelerateResume / TrainerResume, and the one noticed at set_epoch.
    _vouched = False
    _counted: str | None = None

    def trust_framework_resume(self) -> None:
        """Say that accelerate's resumes of this sampler by counting batches (its
        ``load_state`` of a stateful loader, ``skip_first_batches``, the HF Trainer's
        ``resume_from_checkpoint``) count them in this epoch's order at the number of
        processes and batch size they were saved with. `AccelerateResume` and
        `TrainerResume` make sure of that and call this; without either, such a resume
        raises `StateMismatchError` at its first batch."""
        self._vouched = True

    # The largest len() answered in this epoch: a loop that sized the epoch with it
    # (Lightning's Trainer, before the loader hands the sampler its state) stops after
    # that many indices, whatever a state loaded later leaves.
    _len_answered: int | None = None

    def _answered(self, size: int) -> int:
        self._len_answered = max(size, self._len_answered or 0)
        return size

    def forget_len(self) -> None:
        """Say that no loop sized this epoch with an earlier `len()`.

        `load_state_dict` refuses a mid-epoch state that leaves this rank more
        indices than `len()` answered before it (saved at fewer processes): a loop
        counting its batches from that answer would stop early. A loop that ends when
        the sampler does (a plain `for` over the loader, accelerate) may call this first."""
        self._len_answered = None

    def _check_sized_epoch(self, epoch: int, saved_world_size: int) -> None:
        """After a state was loaded: refuse if an earlier `len()` now falls short."""
        answered = self._len_answered
        left = len(self)
        self._len_answered = None  # len() above answered too: the new epoch's count starts
        if answered is None or left <= answered:
            return
        if saved_world_size != self.world_size:
            why = (
                f"the state was saved mid-epoch at world_size={saved_world_size} and leaves "
                f"this rank {left} indices at world_size={self.world_size}"
            )
            fix = f"Resume at world_size={saved_world_size}, or from"
        else:
            why = (
                f"the state leaves this rank {left} indices (a mixture's new weights apply "
                "from the saved position and change where its epoch ends)"
            )
            fix = "Resume with the weights the state was saved with, or from"
        raise StateMismatchError(
            f"cannot resume epoch {epoch} here: {why}, but the epoch was sized with "
            f"len()={answered} before the state was loaded, so a loop that counts its "
            "batches from len() (Lightning's Trainer) would stop before reading them "
            f"all. {fix} a checkpoint saved at the end of an epoch; a loop that ends when "
            "the sampler does may call forget_len() before load_state_dict()."
        )


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: as given, else ``torch.distributed``'s when it is
    initialized, else ``(0, 1)``; checked."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    elif (rank is None) != (world_size is None):
        raise InvalidOptionError(
            "rank and world_size should be given together when torch.distributed is not "
            f"initialized, but got rank={rank!r}, world_size={world_size!r}"
        )
    elif rank is None or world_size is None:
        rank, world_size = 0, 1
    world_size = non_negative_int(world_size, "world_size")
    rank = non_negative_int(rank, "rank")
    if world_size < 1:
        raise InvalidOptionError(f"world_size should be >= 1, but got world_size={world_size}")
    if rank >= world_size:
        raise InvalidOptionError(
            f"rank should be in [0, {world_size - 1}] for world_size={world_size}, "
            f"but got rank={rank}"
        )
    return rank, world_size


def non_negative_int(value: Any, option: str) -> int:
    """``value`` as an int >= 0 (not a bool), else `InvalidOptionError` naming ``option``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise InvalidOptionError(
            f"{option} should be an integer >= 0, but got {option}={value!r}"
        ) from None
    if number < 0:
        raise InvalidOptionError(f"{option} should be an integer >= 0, but got {option}={value!r}")
    return number
