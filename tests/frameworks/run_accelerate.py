"""accelerate under torchrun on 2 CPU ranks, recording the labels each rank's steps got.
Run by tests/test_frameworks_accelerate.py:

    torchrun --nproc-per-node 2 run_accelerate.py DATA OUT TAG [--mode M] [--workers N]
        [--stop-at K] [--resume DIR] [--world-from-dist]

``--mode``: default, split_batches or dispatch_batches. ``--world-from-dist``: the sampler
takes its rank and world size from torch.distributed (refused under accelerate).
``--stop-at K`` saves the state after K steps (save_state, with a StatefulDataLoader) and
stops; ``--resume DIR`` loads it first. Writes OUT/TAG-rank{r}.json.
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

from shardio import ShardedDataset, ShardSampler  # noqa: E402
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
    parser.add_argument("--resume", default=None)
    parser.add_argument("--world-from-dist", action="store_true")
    args = parser.parse_args()

    stateful = bool(args.stop_at or args.resume)
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
    if args.resume:
        accelerator.load_state(args.resume)

    seen: list[int] = []
    error = None
    try:
        for step, batch in enumerate(loader, start=1):
            seen.extend(batch["label"].tolist())
            loss = model(batch["x"].float()[:, None]).mean()
            accelerator.backward(loss)
            optimizer.step()
            if step == args.stop_at:
                accelerator.save_state(str(Path(args.out, f"{args.tag}-state")))
                break
    except ShardioError as exc:
        error = str(exc)
    rank = accelerator.process_index
    result = {"labels": seen, "error": error, "world_size": accelerator.num_processes}
    Path(args.out, f"{args.tag}-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
