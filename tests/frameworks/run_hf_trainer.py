"""The HF Trainer under torchrun on 2 CPU ranks (gloo), its default collator, ShardSampler
through ``_get_train_sampler``; records the labels each rank's steps received.

    torchrun --nproc-per-node 2 run_hf_trainer.py DATA OUT TAG [--workers N]
        [--max-steps S] [--save-at K] [--resume CHECKPOINT] [--epochs E] [--no-callback]

`TrainerResume` is among the callbacks, unless ``--no-callback``. Writes OUT/TAG-rank{r}.json:
{"labels": [...], "world_size": W, "error": the ShardioError train() raised, or null}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from transformers import Trainer, TrainingArguments  # noqa: E402

from shardio import ShardedDataset, ShardSampler, TrainerResume  # noqa: E402
from shardio.core.errors import ShardioError  # noqa: E402


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        assert labels is not None
        self.seen.extend(int(v) for v in labels.tolist())
        return {"loss": (self.w * x.float()).mean()}


class ShardTrainer(Trainer):
    def _get_train_sampler(self, train_dataset: Any = None) -> ShardSampler:
        # The Trainer's accelerate shares one order between the processes itself.
        return ShardSampler(self.train_dataset, seed=5, window="2KB", rank=0, world_size=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("tag")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--save-at", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--no-callback", action="store_true", help="without TrainerResume")
    args = parser.parse_args()

    training = TrainingArguments(
        output_dir=str(Path(args.out, f"{args.tag}-run")),
        use_cpu=True,
        ddp_backend="gloo",
        per_device_train_batch_size=8,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        dataloader_num_workers=args.workers,
        save_strategy="steps" if args.save_at else "no",
        save_steps=args.save_at or 500,
        learning_rate=0.0,
        report_to=[],
        disable_tqdm=True,
        logging_strategy="no",
        seed=1,
    )
    model = Model()
    trainer = ShardTrainer(
        model=model,
        args=training,
        train_dataset=ShardedDataset(args.data),
        callbacks=[] if args.no_callback else [TrainerResume()],
    )
    error = None
    try:
        trainer.train(resume_from_checkpoint=args.resume)
    except ShardioError as exc:
        error = f"{type(exc).__name__}: {exc}"
    rank = training.process_index
    result = {"labels": model.seen, "world_size": training.world_size, "error": error}
    Path(args.out, f"{args.tag}-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
