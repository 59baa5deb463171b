"""Two real gloo ranks: leaving the trace gathers every rank's summary and names the slowest."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from shardio import trace

WORLD = 2


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from diagnose_data import SleepyBatches

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        # Rank 1's batches take 60 ms to load against rank 0's 2 ms; the step all-reduces,
        # as DDP does, so rank 0 waits for rank 1 inside its step.
        loader = DataLoader(
            SleepyBatches(24, 0.06 if rank == 1 else 0.002),
            batch_size=2,
            num_workers=1,
            multiprocessing_context="fork",
        )
        with trace(loader) as tr:
            for batch in tr:
                time.sleep(0.005)
                dist.all_reduce(batch.float().sum())
        summary = tr.summary()
        result = {
            "rank": summary.rank,
            "ranks": summary.ranks,
            "findings": [f.kind for f in summary.findings],
            "report": tr.report(),
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


# Forked ranks by default (as Lightning's "ddp_fork" starts them); spawned ranks, each
# importing torch afresh as torchrun's do, under `-m slow` (5 s against 1 s).
@pytest.mark.parametrize("start", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_the_slowest_rank_is_named_on_every_rank(tmp_path: Path, start: str) -> None:
    args = (str(tmp_path / "init"), str(tmp_path))
    mp.start_processes(_rank_main, args=args, nprocs=WORLD, join=True, start_method=start)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["rank"] for r in results] == [0, 1]
    for result in results:
        assert [r["rank"] for r in result["ranks"]] == [0, 1]
        assert [r["batches"] for r in result["ranks"]] == [12, 12]
        slow, fast = result["ranks"][1], result["ranks"][0]
        assert slow["wait_seconds"] > fast["wait_seconds"]
        assert slow["bound"] == "data-bound"
        assert result["findings"][-1] == "slowest-rank"
        assert "rank 1 is the slowest" in result["report"]
