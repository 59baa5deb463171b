"""`AccelerateResume`: what accelerate's `save_state` leaves out, for a `ShardSampler`
or `MixSampler` inside a prepared loader.

accelerate saves a stateful loader's position as a count of batches *of this process*
and, on `load_state`, skips that many batches of the order again. That is exact only at
the number of processes and the batch size it was saved with: at 2 processes, 5
batches each are 10 batches of the order, which 1 process would count as 5. It also
saves no epoch: a prepared loader counts its `iter()` calls from 0 in a new job, so a
job resumed in epoch 3 would read the rest of epoch 0's order.

Registered with `accelerator.register_for_checkpointing(AccelerateResume(loader))`,
this object is saved with every `save_state` (as a custom checkpoint) and loaded by
`load_state` after the loader's own state: it sets the loader's epoch, and refuses a
mid-epoch state saved at another number of processes or batch size with
`StateMismatchError`, naming the settings to resume with.

accelerate is imported only when accelerate has set itself up (a loader from
`Accelerator.prepare` exists): this module imports nothing of it at import time.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from shardio.core.errors import InvalidOptionError, StateMismatchError

from .ranks import PlacedSampler, non_negative_int

__all__ = ["AccelerateResume", "KIND", "sampler_of"]

KIND = "shardio.AccelerateResume"
_VERSION = 1
_LINKS = ("batch_sampler", "sampler")  # how a prepared loader reaches the sampler


class AccelerateResume:
    """The epoch and process count of a loader prepared by accelerate, for its checkpoints.

    Args:
        loader: what `accelerator.prepare` returned for a `DataLoader` whose sampler is a
            `ShardSampler` or `MixSampler` made with ``rank=0, world_size=1``.

    Register it once, after ``prepare``: ``accelerator.register_for_checkpointing(
    AccelerateResume(loader))``. Then `load_state` resumes in the saved epoch (no
    ``loader.set_epoch`` of your own), and at another number of processes or another
    batch size it raises `StateMismatchError` for a state saved mid-epoch (one saved
    between epochs resumes at any).
    """

    def __init__(self, loader: Any) -> None:
        sampler = sampler_of(loader)
        if sampler is None or not hasattr(loader, "iteration"):
            raise InvalidOptionError(
                "AccelerateResume(loader) should get the loader accelerator.prepare() "
                "returned, with a ShardSampler or MixSampler as its sampler, but got "
                f"{type(loader).__name__}"
            )
        self.loader = loader
        self.sampler = sampler

    def state_dict(self) -> dict[str, Any]:
        """The loader's epoch, whether it is mid-epoch, and what accelerate's batch
        count depends on: the number of processes and the batch size of all of them."""
        loader = self.loader
        saved = loader.state_dict() if getattr(loader, "use_stateful_dataloader", False) else {}
        finished = bool(saved.get("_iterator_finished", False))
        epoch = int(loader.iteration)  # iter() calls completed: the epoch in progress
        active = _iterating(loader)
        if active and finished:
            epoch += 1  # the epoch's last batch is out: the loaded state starts the next
        return {
            "kind": KIND,
            "version": _VERSION,
            "epoch": epoch,
            # Without a stateful loader accelerate saves no position: the epoch restarts.
            "mid_epoch": bool(saved) and active and not finished,
            "num_processes": _num_processes(),
            "total_batch_size": _total_batch_size(loader),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check the state against this job and set the loader's epoch.

        Raises `StateMismatchError` for a mid-epoch state of another process count or
        batch size, `InvalidOptionError` for something that is not such a state."""
        if not isinstance(state, Mapping) or state.get("kind") != KIND:
            raise InvalidOptionError(
                f"state should be a dict from AccelerateResume.state_dict() (kind={KIND!r}), "
                f"but got {_describe(state)}"
            )
        if state.get("version") != _VERSION:
            raise InvalidOptionError(
                f"state should have version {_VERSION}, but got version={state.get('version')!r}"
            )
        epoch = non_negative_int(state.get("epoch"), "state['epoch']")
        saved = {
            "num_processes": non_negative_int(state.get("num_processes"), "num_processes"),
            "batch size per process": _per_process(state.get("total_batch_size"), state),
        }
        num_processes = _num_processes()
        total = _total_batch_size(self.loader)
        now = {
            "num_processes": num_processes,
            "batch size per process": _per_process(total, {"num_processes": num_processes}),
        }
        changed = [name for name in saved if saved[name] != now[name]]
        if state.get("mid_epoch") and changed:
            differences = ", ".join(f"{name} {saved[name]} (now {now[name]})" for name in changed)
            raise StateMismatchError(
                f"cannot resume epoch {epoch} exactly from this accelerate checkpoint: it was "
                f"saved mid-epoch with {differences}, and accelerate skips the batches it "
                "counted then, per process, which are other samples now: some would be read "
                f"twice and others never. Resume with {saved['num_processes']} processes "
                f"(accelerate launch --num_processes {saved['num_processes']}) and the same "
                "batch size; to change them, resume from a checkpoint saved between epochs "
                "(after the loop over the loader)."
            )
        self.loader.set_epoch(epoch)


def sampler_of(loader: Any) -> PlacedSampler | None:
    """The `ShardSampler` or `MixSampler` inside a prepared loader, if any."""
    nodes = [loader]
    for _ in range(6):
        found = []
        for node in nodes:
            for link in _LINKS:
                child = getattr(node, link, None)
                if isinstance(child, PlacedSampler):
                    return child
                if child is not None and child is not node:
                    found.append(child)
        nodes = found
    return None


def _num_processes() -> int:
    state = sys.modules.get("accelerate.state")
    if state is None:
        return 1
    return int(state.PartialState().num_processes)


def _iterating(loader: Any) -> bool:
    """Whether ``loader`` is in an epoch (accelerate holds it between `begin` and `end`)."""
    state = sys.modules.get("accelerate.state")
    if state is None:
        return False
    try:
        references = state.GradientState().dataloader_references
    except Exception:  # another accelerate version
        return False
    return any(reference is loader for reference in references)


def _total_batch_size(loader: Any) -> int | None:
    try:
        return int(loader.total_batch_size)
    except Exception:  # a loader without accelerate's property: nothing to compare
        return None


def _per_process(total: Any, state: Mapping[str, Any]) -> int | None:
    if not isinstance(total, int) or isinstance(total, bool):
        return None
    return total // max(1, int(state.get("num_processes") or 1))


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a dict with kind={value.get('kind')!r}"
    return type(value).__name__
