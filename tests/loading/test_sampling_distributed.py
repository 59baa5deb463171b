"""Two real processes with the gloo backend read a sharded dataset exactly once between them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from order_helpers import read_x
from torch.utils.data import DataLoader

from shardio import ShardedDataset, ShardWriter
from shardio.loading.sampling import ShardSampler

WORLD = 2
SAMPLES = 250  # an even split between the ranks, so no padding
BATCH = 8


def _rank_main(rank: int, init_file: str, out_dir: str, data: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        dataset = ShardedDataset(data)
        sampler = ShardSampler(dataset, seed=11, window="1KB")  # rank and world from dist
        # A spawned rank's default start method is "spawn"; torchrun's processes fork
        # their workers, and so does this test (spawning re-imports torch: seconds).
        loader = DataLoader(
            dataset,
            batch_size=BATCH,
            sampler=sampler,
            num_workers=1,
            multiprocessing_context="fork",
        )

        sampler.set_epoch(0)
        epoch0 = read_x(loader)

        # Epoch 1 is interrupted after 5 batches; only rank 0 saves its state and every
        # rank resumes from it with a fresh sampler and a different worker count.
        sampler.set_epoch(1)
        head = read_x(loader, batches=5)
        box = [sampler.state_dict(consumed=len(head)) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        resumed = ShardSampler(dataset, seed=11, window="1KB")
        resumed.load_state_dict(box[0])  # type: ignore[arg-type]
        resumed.set_epoch(1)
        tail = read_x(DataLoader(dataset, batch_size=BATCH, sampler=resumed, num_workers=0))

        result = {
            "shards": len(dataset.shard_lengths),
            "order": sampler.order,
            "rank": sampler.rank,
            "world_size": sampler.world_size,
            "epoch0": epoch0,
            "epoch1": head + tail,
            "epoch1_uninterrupted": sampler.indices(epoch=1).tolist(),
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


# Forked ranks by default (as Lightning's "ddp_fork" starts them); spawned ranks, each
# importing torch afresh as torchrun's do, under `-m slow` (5 s against 0.5 s).
@pytest.mark.parametrize("start", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_two_gloo_ranks_read_every_sample_exactly_once(tmp_path: Path, start: str) -> None:
    data = tmp_path / "data"
    with ShardWriter(data, format="mmap", shard_size=600) as writer:
        writer.write_batch({"x": np.arange(SAMPLES)})
    args = (str(tmp_path / "init"), str(tmp_path), str(data))
    mp.start_processes(_rank_main, args=args, nprocs=WORLD, join=True, start_method=start)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    assert [(r["rank"], r["world_size"]) for r in results] == [(0, WORLD), (1, WORLD)]
    assert results[0]["shards"] > 2 and results[0]["order"] == "shard-window"
    everything = set(range(SAMPLES))
    for epoch in ("epoch0", "epoch1"):
        counts = Counter(i for r in results for i in r[epoch])
        assert set(counts) == everything
        assert set(counts.values()) == {1}, f"{epoch}: some samples were read twice"
    for r in results:
        assert r["epoch1"] == r["epoch1_uninterrupted"]  # the resume lost and repeated nothing
    assert results[0]["epoch0"] != results[0]["epoch1"]  # set_epoch reshuffled
