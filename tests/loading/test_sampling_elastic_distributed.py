"""Elastic resume across real gloo process groups: save at two ranks, resume at 1, 2 or 3.

Two ranks read five batches of epoch 1 through torchdata's StatefulDataLoader with two
workers each, and rank 0 saves the loader's state. Then a new job of 1, 2 or 3 ranks
resumes from it: at the same world size through the loader itself, at another one
through the sampler state inside it (the loader refuses another worker count).

The ranks are forked (as Lightning's "ddp_fork" starts them): the three cases take 2 s,
where spawned ranks, each importing torch again, took 10 s for one. Spawned gloo ranks
run under `-m slow` in tests/loading/test_sampling_distributed.py and
tests/tools/test_diagnose_distributed.py.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from order_helpers import read_x
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from shardio import ShardedDataset, ShardWriter
from shardio.loading.sampling import ShardSampler, find_sampler_state

SAMPLES = 250
BATCH = 8
STEPS = 5  # batches each rank reads before the job stops
OPTIONS: dict[str, Any] = {"seed": 11, "window": "1KB"}


def _loader(dataset: ShardedDataset, sampler: ShardSampler, workers: int) -> Any:
    # Fork the workers as torchrun's processes do (spawning re-imports torch: seconds
    # per worker).
    context = "fork" if workers else None
    kind = StatefulDataLoader if workers != 0 else DataLoader
    return kind(
        dataset,
        batch_size=BATCH,
        sampler=sampler,
        num_workers=workers,
        multiprocessing_context=context,
    )


def _first_job(rank: int, world: int, init_file: str, out_dir: str, data: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dataset = ShardedDataset(data)
        sampler = ShardSampler(dataset, **OPTIONS)  # rank and world size from dist
        loader = _loader(dataset, sampler, workers=2)
        sampler.set_epoch(1)
        head = read_x(loader, batches=STEPS)
        if rank == 0:
            torch.save(loader.state_dict(), Path(out_dir, "loader.pt"))
        Path(out_dir, f"head{rank}.json").write_text(json.dumps(head))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _second_job(
    rank: int, world: int, init_file: str, out_dir: str, data: str, workers: int
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dataset = ShardedDataset(data)
        sampler = ShardSampler(dataset, **OPTIONS)
        state = torch.load(Path(out_dir, "loader.pt"), weights_only=True)
        loader = _loader(dataset, sampler, workers)
        if world == 2:  # the same job shape: the loader restores itself and its sampler
            loader.load_state_dict(state)
        else:
            sampler.load_state_dict(find_sampler_state(state))
        sampler.set_epoch(1)
        tail = read_x(loader)
        sampler.set_epoch(2)
        epoch2 = read_x(loader)
        result = {
            "rank": sampler.rank,
            "world_size": sampler.world_size,
            "tail": tail,
            "epoch2": epoch2,
            "epoch1_uninterrupted": sampler.indices(epoch=1).tolist(),
            "epoch2_uninterrupted": sampler.indices(epoch=2).tolist(),
        }
        Path(out_dir, f"world{world}-rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def first_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[list[int]]]:
    root = tmp_path_factory.mktemp("elastic-gloo")
    data = root / "data"
    with ShardWriter(data, format="mmap", shard_size=600) as writer:
        writer.write_batch({"x": np.arange(SAMPLES)})
    args = (2, str(root / "init0"), str(root), str(data))
    mp.start_processes(_first_job, args=args, nprocs=2, join=True, start_method="fork")
    heads = [json.loads((root / f"head{r}.json").read_text()) for r in range(2)]
    return root, data, heads


@pytest.mark.parametrize(
    ("world", "workers"),
    [
        pytest.param(3, 0, id="3-ranks-0-workers"),
        pytest.param(2, 2, id="2-ranks-2-workers"),
        pytest.param(1, 2, id="1-rank-2-workers"),
    ],
)
def test_a_two_rank_state_resumes_at_any_world_size(
    first_job: tuple[Path, Path, list[list[int]]], world: int, workers: int
) -> None:
    root, data, heads = first_job
    assert [len(h) for h in heads] == [STEPS * BATCH] * 2
    init = str(root / f"init{world}")
    args = (world, init, str(root), str(data), workers)
    mp.start_processes(_second_job, args=args, nprocs=world, join=True, start_method="fork")
    results = [json.loads((root / f"world{world}-rank{r}.json").read_text()) for r in range(world)]
    assert [(r["rank"], r["world_size"]) for r in results] == [(r, world) for r in range(world)]

    consumed = {i for h in heads for i in h}
    assert len(consumed) == 2 * STEPS * BATCH
    reads = Counter(i for r in results for i in r["tail"])
    unconsumed = set(range(SAMPLES)) - consumed
    assert len({len(r["tail"]) for r in results}) == 1  # every rank takes as many batches
    assert all(reads[i] == 1 for i in unconsumed), "a sample was skipped or read twice"
    padding = sum(reads.values()) - len(unconsumed)
    assert 0 <= padding < world and set(reads) - unconsumed <= consumed  # padding repeats
    if world == 2:  # the same world size: each rank goes on exactly where it stopped
        for r, head in zip(results, heads, strict=True):
            assert head + r["tail"] == r["epoch1_uninterrupted"]
    for r in results:  # the next epoch is the uninterrupted run's at the new world size
        assert r["epoch2"] == r["epoch2_uninterrupted"]
    epoch2 = Counter(i for r in results for i in r["epoch2"])
    assert set(epoch2) == set(range(SAMPLES))
