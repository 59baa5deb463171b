"""Two real processes with the gloo backend read the dataset exactly once between them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset

from shardio.sampling import ShardSampler

WORLD = 2
SHARDS = (60, 40, 90, 60)  # 250 samples: an even split, so no padding
BATCH = 8


class IndexDataset(Dataset[int]):
    """Samples are their own global indices; the layout is what ShardedDataset exposes."""

    shard_lengths = SHARDS
    shard_nbytes = tuple(n * 100 for n in SHARDS)

    def __len__(self) -> int:
        return sum(SHARDS)

    def __getitem__(self, index: int) -> int:
        return index


def _read(loader: DataLoader[int], batches: int | None = None) -> list[int]:
    out: list[int] = []
    for step, batch in enumerate(loader):
        out.extend(batch.tolist())
        if batches is not None and step + 1 == batches:
            break
    return out


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        dataset = IndexDataset()
        sampler = ShardSampler(dataset, seed=11, window="6KB")  # rank and world from dist
        # mp.spawn made "spawn" this process's default start method; torchrun's processes
        # fork their workers, and so does this test (spawning re-imports torch: seconds).
        loader = DataLoader(
            dataset,
            batch_size=BATCH,
            sampler=sampler,
            num_workers=1,
            multiprocessing_context="fork",
        )

        sampler.set_epoch(0)
        epoch0 = _read(loader)

        # Epoch 1 is interrupted after 5 batches; only rank 0 saves its state and every
        # rank resumes from it with a fresh sampler and a different worker count.
        sampler.set_epoch(1)
        head = _read(loader, batches=5)
        box = [sampler.state_dict(consumed=len(head)) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        resumed = ShardSampler(dataset, seed=11, window="6KB")
        resumed.load_state_dict(box[0])  # type: ignore[arg-type]
        resumed.set_epoch(1)
        tail = _read(DataLoader(dataset, batch_size=BATCH, sampler=resumed, num_workers=0))

        result = {
            "rank": sampler.rank,
            "world_size": sampler.world_size,
            "epoch0": epoch0,
            "epoch1": head + tail,
            "epoch1_uninterrupted": sampler.indices(epoch=1).tolist(),
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_read_every_sample_exactly_once(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    assert [(r["rank"], r["world_size"]) for r in results] == [(0, WORLD), (1, WORLD)]
    everything = set(range(sum(SHARDS)))
    for epoch in ("epoch0", "epoch1"):
        counts = Counter(i for r in results for i in r[epoch])
        assert set(counts) == everything
        assert set(counts.values()) == {1}, f"{epoch}: some samples were read twice"
    for r in results:
        assert r["epoch1"] == r["epoch1_uninterrupted"]  # the resume lost and repeated nothing
    assert results[0]["epoch0"] != results[0]["epoch1"]  # set_epoch reshuffled
