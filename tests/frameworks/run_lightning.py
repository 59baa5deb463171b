"""A Lightning run on 2 CPU ranks (Lightning's own ddp launcher), recording the labels each
rank's training steps received. Run as a script by tests/test_frameworks_lightning.py:

    python run_lightning.py DATA OUT TAG [--loader torch|stateful] [--workers N]
        [--batch B] [--epochs E] [--max-steps S] [--save-at K] [--save-epoch E]
        [--resume CKPT]
        [--fabric] [--devices D] [--mix] [--trace]

With --mix, DATA holds two datasets, a/ and b/, read as a `shardio.Mix` (`mixes.mixture`)
through a MixSampler.

Writes OUT/TAG-rank{r}.json: {"epochs": {epoch: [labels...]}, "world_size": W}; a Fabric
run counts its epochs from 0 in each job, as Fabric's loader does.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

import lightning as L  # noqa: E402
from mixes import mixture  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import shardio  # noqa: E402
from shardio import MixSampler, ShardedDataset, ShardSampler  # noqa: E402

TRACED: dict[str, int] = {}  # with --trace: what the doctor's trace of the Trainer saw


def make_loader(args: argparse.Namespace) -> Any:
    dataset: Any
    sampler: Any
    if args.mix:
        dataset = mixture(args.data)
        sampler = MixSampler(dataset, window="2KB")  # rank and world_size: lazily
    else:
        dataset = ShardedDataset(args.data)
        sampler = ShardSampler(dataset, seed=5, window="2KB")  # rank and world_size: lazily
    options: dict[str, Any] = {"batch_size": args.batch, "sampler": sampler}
    if args.workers:
        options.update(num_workers=args.workers, multiprocessing_context="fork")
    if args.loader == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(dataset, **options)
    return DataLoader(dataset, **options)


class Model(L.LightningModule):
    def __init__(self, loader: Any) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.loader = loader
        self.seen: dict[int, list[int]] = defaultdict(list)

    def train_dataloader(self) -> Any:
        return self.loader

    def training_step(self, batch: dict[str, Any], index: int) -> torch.Tensor:
        self.seen[self.current_epoch].extend(batch["label"].tolist())
        return (self.w * batch["x"].float()).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def run_trainer(args: argparse.Namespace) -> tuple[dict[int, list[int]], int, int]:
    callbacks: list[Any] = []
    if args.save_at:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=args.out, filename=f"{args.tag}", every_n_train_steps=args.save_at
            )
        )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp",
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=bool(args.save_at),
        callbacks=callbacks,
        num_sanity_val_steps=0,
    )
    loader = make_loader(args)
    model = Model(loader)
    if not args.trace:
        trainer.fit(model, ckpt_path=args.resume)
        return model.seen, trainer.global_rank, trainer.world_size
    with shardio.trace(loader) as tr:  # every rank leaves it: gathers the ranks' summaries
        trainer.fit(model, ckpt_path=args.resume)
    TRACED.update(passes=tr.passes, records=len(tr.records), ranks=len(tr.ranks or []))
    return model.seen, trainer.global_rank, trainer.world_size


def run_fabric(args: argparse.Namespace) -> tuple[dict[int, list[int]], int, int]:
    fabric = L.Fabric(accelerator="cpu", devices=args.devices, strategy="ddp")
    fabric.launch()
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model, optimizer = fabric.setup(model, optimizer)
    raw = make_loader(args)
    loader: Any = fabric.setup_dataloaders(raw)
    # With --loader stateful, Fabric saves the StatefulDataLoader's state_dict() with the
    # model and restores it with load_state_dict() (both through fabric.save/load).
    state = {"model": model, "optimizer": optimizer, "loader": raw}
    if args.resume:
        fabric.load(args.resume, state)
    seen: dict[int, list[int]] = defaultdict(list)
    for epoch in range(args.epochs):
        for step, batch in enumerate(loader, start=1):
            seen[epoch].extend(batch["label"].tolist())
            loss = model(batch["x"].float()[:, None]).mean()
            fabric.backward(loss)
            optimizer.step()
            if step == args.save_at and epoch == args.save_epoch:
                fabric.save(str(Path(args.out, f"{args.tag}.ckpt")), state)
                return seen, fabric.global_rank, fabric.world_size
    return seen, fabric.global_rank, fabric.world_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("tag")
    parser.add_argument("--loader", choices=("torch", "stateful"), default="torch")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--save-at", type=int, default=0)
    parser.add_argument(
        "--save-epoch", type=int, default=0, help="Fabric: the epoch --save-at counts in"
    )
    parser.add_argument("--resume", default=None)
    parser.add_argument("--fabric", action="store_true")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--mix", action="store_true")
    parser.add_argument("--trace", action="store_true", help="Trainer: under shardio.trace")
    args = parser.parse_args()
    seen, rank, world = run_fabric(args) if args.fabric else run_trainer(args)
    out = Path(args.out, f"{args.tag}-rank{rank}.json")
    out.write_text(
        json.dumps({"epochs": seen, "world_size": world, "pid": os.getpid(), "trace": TRACED})
    )


if __name__ == "__main__":
    main()
