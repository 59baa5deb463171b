"""Two real gloo ranks read a mixture, resume from rank 0's state, and together read
exactly the order one process reads alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp
from order_helpers import read_x
from torch.utils.data import DataLoader

from shardio import Mix, MixSampler, ShardedDataset, ShardWriter

WORLD = 2
BATCH = 5
SIZES = {"a": 70, "b": 40}
WEIGHTS = {"a": 0.6, "b": 0.4}


def _mix(root: str) -> Mix:
    sources = {name: ShardedDataset(Path(root) / name) for name in SIZES}
    return Mix(sources, weights=WEIGHTS, seed=7)


def _rank_main(rank: int, init_file: str, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        mix = _mix(root)
        sampler = MixSampler(mix, window="2KB")  # rank and world size from torch.distributed
        loader = DataLoader(mix, batch_size=BATCH, sampler=sampler, num_workers=1)
        head = read_x(loader, batches=3)
        box = [sampler.state_dict(consumed=len(head)) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)

        resumed = MixSampler(_mix(root), window="2KB")
        resumed.load_state_dict(box[0])  # type: ignore[arg-type]
        tail = read_x(DataLoader(mix, batch_size=BATCH, sampler=resumed, num_workers=0))
        resumed.set_epoch(1)
        tail += read_x(DataLoader(mix, batch_size=BATCH, sampler=resumed, num_workers=0))
        result = {"rank": resumed.rank, "world": resumed.world_size, "head": head, "tail": tail}
        Path(root, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_resume_a_mixture_exactly(tmp_path: Path) -> None:
    for i, (name, size) in enumerate(SIZES.items()):
        with ShardWriter(tmp_path / name, format="mmap", shard_size=200) as writer:
            writer.write_batch({"x": np.arange(size) + 1000 * i})
    # fork: the ranks start in a moment (spawn would import torch again in each)
    mp.start_processes(
        _rank_main,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD,
        join=True,
        start_method="fork",
    )
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [(r["rank"], r["world"]) for r in results] == [(0, WORLD), (1, WORLD)]

    alone = MixSampler(_mix(str(tmp_path)), rank=0, world_size=1, window="2KB")
    order = list(alone)
    alone.set_epoch(1)
    order += list(alone)
    mix = _mix(str(tmp_path))
    sources, local = mix.source_of(order)
    expected = (sources * 1000 + local).tolist()

    def merged(key: str) -> list[int]:
        return [v for row in zip(*(r[key] for r in results), strict=True) for v in row]

    read = merged("head") + merged("tail")
    assert len(read) == len(expected) == 2 * 110
    assert read == expected
