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
`load_state` after the loader's own state. It sets the loader's epoch. Where the number
of processes or the batch size changed since a mid-epoch save, it replaces
accelerate's count with the sampler's position (the samples those batches held, a
`state_dict(consumed=...)`), which resumes at any number of processes; where it has
none (``dispatch_batches``), it raises `StateMismatchError` naming the settings to
resume with.

accelerate is imported only when accelerate has set itself up (a loader from
`Accelerator.prepare` exists): this module imports nothing of it at import time.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from typing import Any

from shardio.core.errors import InvalidOptionError, StateMismatchError

from .counted_resume import batches_taken
from .mixsampler import MixSampler
from .ranks import non_negative_int
from .sampler import ShardSampler

__all__ = ["AccelerateResume", "KIND", "sampler_of"]

KIND = "shardio.AccelerateResume"
_VERSION = 1
_LINKS = ("batch_sampler", "sampler")  # how a prepared loader reaches the sampler


class AccelerateResume:
    """The epoch, process count and sampler position of a loader prepared by accelerate,
    for its checkpoints.

    Args:
        loader: what `accelerator.prepare` returned for a `DataLoader` whose sampler is a
            `ShardSampler` or `MixSampler` made with ``rank=0, world_size=1``.

    Register it once, right after ``prepare`` (before the loader is iterated):
    ``accelerator.register_for_checkpointing(AccelerateResume(loader))``. Then
    `load_state` resumes in the saved epoch (no ``loader.set_epoch`` of your own), and
    a mid-epoch state resumes exactly also at another number of processes or batch
    size, except under ``dispatch_batches`` (`StateMismatchError` there). A state
    saved between epochs resumes at any.
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
        sampler.trust_framework_resume()  # load_state_dict checks what the count depends on
        # The state of a loader that has not started: loaded in place of accelerate's
        # count of batches where that count means other samples (see load_state_dict).
        self._fresh: dict[str, Any] | None = None
        if getattr(loader, "use_stateful_dataloader", False):
            fresh = loader.state_dict()
            if batches_taken(fresh) == 0:
                self._fresh = copy.deepcopy(fresh)

    def state_dict(self) -> dict[str, Any]:
        """The loader's epoch, whether it is mid-epoch, what accelerate's batch count
        depends on (the number of processes, the batch size of all of them), and, mid-epoch,
        the sampler's position: the samples of its order those batches hold."""
        loader = self.loader
        saved = loader.state_dict() if getattr(loader, "use_stateful_dataloader", False) else {}
        finished = bool(saved.get("_iterator_finished", False))
        epoch = int(loader.iteration)  # iter() calls completed: the epoch in progress
        active = _iterating(loader)
        if active and finished:
            epoch += 1  # the epoch's last batch is out: the loaded state starts the next
        # Without a stateful loader accelerate saves no position: the epoch restarts.
        mid_epoch = bool(saved) and active and not finished
        total = _total_batch_size(loader)
        return {
            "kind": KIND,
            "version": _VERSION,
            "epoch": epoch,
            "mid_epoch": mid_epoch,
            "num_processes": _num_processes(),
            "total_batch_size": total,
            "sampler": self._position(saved, total) if mid_epoch else None,
        }

    def _position(self, loader_state: Mapping[str, Any], total: int | None) -> Any:
        """The sampler's state at the samples the batches taken so far hold, or None
        where that count is not known."""
        batches = batches_taken(loader_state)
        if batches is None or total is None or type(self.loader).__name__ != "DataLoaderShard":
            return None  # DataLoaderDispatcher: only process 0 draws; not worked out here
        # Each step, the processes take the next `total` samples of the order between
        # them: batches p, p + n, ... by default, or slices of one batch (split_batches).
        try:
            return self.sampler.state_dict(consumed=batches * total)
        except InvalidOptionError:  # more than drawn: accelerate's even_batches padding
            return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check the state against this job, set the loader's epoch and, where the number
        of processes or the batch size changed mid-epoch, the sampler's position.

        Raises `StateMismatchError` where such a state holds no position (accelerate's
        ``dispatch_batches``), `InvalidOptionError` for something that is not a state."""
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
            "total_batch_size": state.get("total_batch_size"),
        }
        now = {
            "num_processes": _num_processes(),
            "total_batch_size": _total_batch_size(self.loader),
        }
        changed = [name for name in saved if saved[name] != now[name]]
        if state.get("mid_epoch") and changed:
            position = state.get("sampler")
            if position is None or self._fresh is None:
                differences = ", ".join(
                    f"{name}={saved[name]} (now {now[name]})" for name in changed
                )
                why = (
                    "holds no position of the sampler (saved under dispatch_batches, or in the "
                    "padded last step of the epoch)"
                    if position is None
                    else "cannot be applied: this AccelerateResume was made after the loader "
                    "was iterated (make it right after accelerator.prepare)"
                )
                raise StateMismatchError(
                    f"cannot resume epoch {epoch} exactly from this accelerate checkpoint: it "
                    f"was saved mid-epoch with {differences}, and {why}; accelerate would skip "
                    "the batches it counted then, per process, which are other samples now. "
                    f"Resume with {saved['num_processes']} processes (accelerate launch "
                    f"--num_processes {saved['num_processes']}) and the same batch size, or "
                    "from a checkpoint saved between epochs (after the loop over the loader)."
                )
            # accelerate's count of batches means other samples now: start the loader's
            # pass afresh, and the sampler's where those batches ended.
            self.loader.load_state_dict(self._fresh)
            # accelerate's loop ends when the sampler does, whatever len() said before
            self.sampler.forget_len()
            self.sampler.load_state_dict(position)
        self.loader.set_epoch(epoch)


def sampler_of(loader: Any) -> ShardSampler | MixSampler | None:
    """The `ShardSampler` or `MixSampler` inside a prepared loader, if any."""
    nodes = [loader]
    for _ in range(6):
        found = []
        for node in nodes:
            for link in _LINKS:
                child = getattr(node, link, None)
                if isinstance(child, (ShardSampler, MixSampler)):
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


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a dict with kind={value.get('kind')!r}"
    return type(value).__name__
