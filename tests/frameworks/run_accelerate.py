"""accelerate under torchrun on 2 CPU ranks, recording the labels each rank's steps got.
Run by tests/test_frameworks_accelerate.py:

    torchrun --nproc-per-node 2 run_accelerate.py DATA OUT TAG [--mode M] [--workers N]
        [--stop-at K] [--stop-epoch E] [--epochs N] [--resume DIR] [--world-from-dist]

``--mode``: default, split_batches or dispatch_batches. ``--world-from-dist``: the sampler
takes its rank and world size from torch.distributed (refused under accelerate).
``--stop-at K`` saves the state after K steps of epoch ``--stop-epoch`` (save_state, with a
StatefulDataLoader and `AccelerateResume` registered, unless ``--no-guard``) and stops;
``--save-between`` saves it after that epoch's loop instead. ``--resume DIR`` loads it
first and goes on from the epoch it was saved in (the next one with ``--save-between``).
``--epochs N``: epochs of the whole run. ``--trust`` calls
``sampler.trust_framework_resume()``. Writes OUT/TAG-rank{r}.json: the labels of each
epoch's steps, and the ShardioError raised, if any.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DataLoaderConfiguration  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from shardio import AccelerateResume, ShardedDataset, ShardSampler  # noqa: E402
from shardio.core.errors import ShardioError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("tag")
    parser.add_argument("--mode", default="default")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--stop-at", type=int, default=0)
    parser.add_argument("--stop-epoch", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--save-between", action="store_true")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--world-from-dist", action="store_true")
    parser.add_argument("--no-guard", action="store_true", help="without AccelerateResume")
    parser.add_argument("--trust", action="store_true", help="sampler.trust_framework_resume()")
    args = parser.parse_args()

    stateful = bool(args.stop_at or args.save_between or args.resume)
    config = DataLoaderConfiguration(
        split_batches=args.mode == "split_batches",
        dispatch_batches=True if args.mode == "dispatch_batches" else None,
        use_stateful_dataloader=stateful,
    )
    accelerator = Accelerator(cpu=True, dataloader_config=config)
    dataset = ShardedDataset(args.data)
    if args.world_from_dist:
        sampler = ShardSampler(dataset, seed=5, window="2KB")
    else:
        sampler = ShardSampler(dataset, seed=5, window="2KB", rank=0, world_size=1)
    options: dict[str, Any] = {"batch_size": args.batch, "sampler": sampler}
    if args.workers:
        options.update(num_workers=args.workers, multiprocessing_context="fork")
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(dataset, **options))
    if stateful and not args.no_guard:
        accelerator.register_for_checkpointing(AccelerateResume(loader))
    if args.trust:
        sampler.trust_framework_resume()

    epochs: list[list[int]] = []
    error = None
    first = (args.stop_epoch + args.save_between) if args.resume else 0
    state_dir = str(Path(args.out, f"{args.tag}-state"))
    try:
        if args.resume:
            accelerator.load_state(args.resume)
        for epoch in range(first, args.epochs):
            seen: list[int] = []
            epochs.append(seen)
            for step, batch in enumerate(loader, start=1):
                seen.extend(batch["label"].tolist())
                loss = model(batch["x"].float()[:, None]).mean()
                accelerator.backward(loss)
                optimizer.step()
                if epoch == args.stop_epoch and step == args.stop_at and not args.resume:
                    accelerator.save_state(state_dir)
                    break
            if epoch == args.stop_epoch and not args.resume:
                if args.save_between:
                    accelerator.save_state(state_dir)
                if args.save_between or args.stop_at:
                    break
    except ShardioError as exc:
        error = f"{type(exc).__name__}: {exc}"
    rank = accelerator.process_index
    labels = [label for seen in epochs for label in seen]
    result = {
        "labels": labels,
        "epochs": epochs,
        "error": error,
        "world_size": accelerator.num_processes,
    }
    Path(args.out, f"{args.tag}-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
