"""`TrainerResume`: a callback that stops the HF Trainer from resuming inexactly.

The Trainer resumes by counting: it divides the checkpoint's ``global_step`` by the
optimizer steps per epoch *of the new run* to find the epoch, and skips the remainder
times ``gradient_accumulation_steps`` batches per process. A step is
``per_device_train_batch_size * gradient_accumulation_steps * world_size`` samples of
the epoch's order, so a resume with another world size, batch size or accumulation
skips another number of samples than were trained on (and may land in another epoch),
and the Trainer saves none of the three. This callback saves them in the checkpoint's
``trainer_state.json`` (as a stateful callback) and, when training resumes, raises
`StateMismatchError` before the first batch if they changed.

It also sets the sampler's epoch at each epoch's start. The Trainer's own
``set_epoch`` does not reach a sampler under the loader that skips a resumed epoch's
first batches (accelerate's ``skip_first_batches`` wraps its batch sampler once more),
so a job resumed in epoch 1 or later would read the rest of epoch 0's order.

This module imports ``transformers``; `shardio` loads it only on first use of
``shardio.TrainerResume``.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from shardio.core.errors import StateMismatchError

from .accelerate_resume import sampler_of

__all__ = ["TrainerResume"]

_NAMES = {
    "world_size": "world_size (processes)",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
}


class TrainerResume(TrainerCallback, ExportableState):
    """Saves what a step of the HF Trainer counts, and refuses a resume where that changed.

    Pass it to the Trainer with the `ShardSampler` of ``_get_train_sampler``:
    ``Trainer(..., callbacks=[shardio.TrainerResume()])``. A checkpoint saved without
    it (or at step 0) is not checked. At each epoch's start it sets the epoch of the
    `ShardSampler` or `MixSampler` of the Trainer's loader, which makes a resume in a
    later epoch exact.
    """

    def __init__(self) -> None:
        self.settings: dict[str, int] | None = None

    def state(self) -> dict[str, Any]:
        """What ``trainer_state.json`` keeps of this callback."""
        return {"args": {}, "attributes": {"settings": self.settings}}

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Compare the settings the checkpoint saved with this run's, then record them."""
        now = {name: int(getattr(args, name)) for name in _NAMES}
        saved = _saved_settings(state)
        name = type(self).__name__
        if saved is not None and state.global_step > 0:
            changed = [key for key in _NAMES if saved.get(key) != now[key]]
            if changed:
                differences = ", ".join(
                    f"{_NAMES[key]} {saved.get(key)} (now {now[key]})" for key in changed
                )
                settings = ", ".join(f"{key}={saved.get(key)}" for key in _NAMES)
                raise StateMismatchError(
                    f"cannot resume from the checkpoint at global step {state.global_step} "
                    f"exactly: it was saved with {differences}. The Trainer skips the batches "
                    "it counts from the step, and at these settings they are other samples: "
                    "some would be trained on twice and others never (also the epoch it "
                    f"resumes in and the steps left are counted at the new settings). Resume with "
                    f"{settings}, or start a new training run without resume_from_checkpoint."
                )
        self.settings = now
        sampler = sampler_of(kwargs.get("train_dataloader"))
        if sampler is not None:
            sampler.trust_framework_resume()  # checked above: the skipped batches match
        # The Trainer updates only the stateful callbacks its checkpoint already names:
        # make sure ours is there when the checkpoint was saved without it.
        stored: Any = state.stateful_callbacks  # a dict by name once the state exists
        if isinstance(stored, dict) and not isinstance(stored.get(name), (dict, list)):
            stored[name] = self.state()

    def on_epoch_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Set the sampler's epoch: the integer part of the Trainer's ``state.epoch``,
        which is the epoch in progress when a checkpoint resumes mid-epoch."""
        sampler = sampler_of(kwargs.get("train_dataloader"))
        if sampler is not None:
            sampler.trust_framework_resume()
            sampler.set_epoch(int(state.epoch or 0))


def _saved_settings(state: TrainerState) -> dict[str, int] | None:
    stored: Any = state.stateful_callbacks
    data = stored.get(TrainerResume.__name__) if isinstance(stored, dict) else None
    if isinstance(data, list):
        data = data[-1] if data else None
    if not isinstance(data, dict):
        return None
    settings = data.get("attributes", {}).get("settings")
    return settings if isinstance(settings, dict) else None
