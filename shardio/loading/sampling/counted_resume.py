"""Refuses a resume that accelerate (or the HF Trainer through it) makes by counting
batches, where nothing vouches that the count means the same samples.

accelerate resumes a loader mid-epoch in two ways, both by drawing the first batches of
the epoch's order again and dropping them: ``skip_first_batches`` (which the HF Trainer
calls on ``resume_from_checkpoint``) wraps the loader's batch sampler in a
``SkipBatchSampler`` (or gives the loader ``skip_batches``), and ``load_state`` of a
stateful loader (``use_stateful_dataloader=True``) hands torchdata a count of batches to
fast-forward. Neither knows the epoch, the number of processes or the batch size the
count was made at: at others, samples are trained on twice or never, in silence.
`AccelerateResume` and `TrainerResume` save and check those and call
``sampler.trust_framework_resume()``; without one of them, the sampler raises
`StateMismatchError` at the first index of such a pass, naming the line to add.

The sampler sees the resume through the objects accelerate iterates (the same walk as
`check_not_split`): a ``SkipBatchSampler`` or ``skip_batches`` above it, or a state the
torchdata loader above it is about to load (its public ``next_iter_state``, still there
when accelerate calls ``set_epoch`` at the start of ``iter()``). It imports nothing of
accelerate.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Protocol

from shardio.core.errors import StateMismatchError

from .frameworks import accelerate_path

__all__ = ["batches_taken", "check_counted_resume", "counted_resume", "note_counted_resume"]


class _Resumable(Protocol):
    _vouched: bool
    _counted: str | None

    @property
    def epoch(self) -> int: ...


def batches_taken(state: Mapping[str, Any]) -> int | None:
    """Batches a torchdata StatefulDataLoader's state counts as yielded in its pass."""
    if "_num_yielded" in state:  # no workers
        return int(state["_num_yielded"])
    snapshot = state.get("_snapshot")
    if isinstance(snapshot, Mapping) and "_snapshot_step" in snapshot:  # workers
        return int(snapshot["_snapshot_step"]) + int(state.get("_steps_since_snapshot", 0))
    return None


def counted_resume(sampler: object) -> str | None:
    """How accelerate resumes ``sampler`` now by counting batches, or None."""
    path = accelerate_path(sampler)
    if not path:
        return None
    loaders = sys.modules.get("accelerate.data_loader")
    skipper = getattr(loaders, "SkipBatchSampler", None)
    for node in path:
        own = getattr(node, "__dict__", {})  # not through a loader's attribute delegation
        skip = own.get("skip_batches")
        if (isinstance(skipper, type) and isinstance(node, skipper)) or (
            isinstance(skip, int) and skip > 0
        ):
            return f"accelerate's skip_first_batches (skipping {skip} batches)"
        pending = own.get("next_iter_state")
        if (
            isinstance(pending, Mapping)
            and not pending.get("_iterator_finished", False)
            and not _restores_sampler(pending)
        ):
            taken = batches_taken(pending)
            if taken:
                return (
                    "accelerate's load_state of a stateful loader (fast-forwarding "
                    f"{taken} batches)"
                )
    return None


def _restores_sampler(state: Mapping[str, Any]) -> bool:
    """Whether a torchdata state holds a sampler state, which torchdata hands to the
    sampler (its `load_state_dict` then resumes exactly) instead of fast-forwarding."""
    snapshot = state.get("_snapshot")
    main = snapshot.get("_main_snapshot") if isinstance(snapshot, Mapping) else None
    holder = main if isinstance(main, Mapping) else state
    return any(
        holder.get(key) is not None for key in ("_index_sampler_state", "_sampler_iter_state")
    )


def note_counted_resume(sampler: _Resumable) -> None:
    """At ``set_epoch``: note a resume by counting (a loaded state is visible only
    until the loader's iterator takes it)."""
    if not sampler._vouched:
        sampler._counted = counted_resume(sampler) or sampler._counted


def check_counted_resume(sampler: _Resumable) -> None:
    """At a pass's first index: raise `StateMismatchError` for a resume by counting that
    nothing vouches for."""
    how, sampler._counted = sampler._counted, None
    if sampler._vouched:
        return
    how = how or counted_resume(sampler)
    if how is None:
        return
    name = type(sampler).__name__
    if "transformers.trainer" in sys.modules:
        fix = (
            "Pass callbacks=[shardio.TrainerResume()] to the Trainer (in the run that saves "
            "checkpoints too: it saves and checks the world size, batch size and "
            "gradient accumulation, and sets the sampler's epoch)"
        )
    else:
        fix = (
            "Add accelerator.register_for_checkpointing(shardio.AccelerateResume(loader)) "
            "right after accelerator.prepare, in the job that saves the state too (with "
            "DataLoaderConfiguration(use_stateful_dataloader=True) in place of "
            "skip_first_batches; it saves the epoch and the process count and resumes "
            "exactly at any)"
        )
    raise StateMismatchError(
        f"{name} (epoch {sampler.epoch}) is being resumed by {how}, which counts batches "
        "of the epoch's order without knowing the epoch, number of processes or batch size "
        "the count was made at: where they differ, samples would be trained on twice or "
        f"never, in silence. {fix}. For a checkpoint saved without it, where the epoch "
        "(loader.set_epoch), the number of processes and the batch size are those it was "
        f"saved with, call sampler.trust_framework_resume() before iterating."
    )
