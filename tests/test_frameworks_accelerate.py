"""accelerate under torchrun on 2 CPU ranks (gloo) with ShardSampler: every sample once
per epoch in each batch mode, a sampler of one rank's share refused at the first batch
(naming the fix), and exact resume through save_state/load_state."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from framework_runs import assert_once_each, results, run, torchrun, write_labels

N = 200
BATCH = 8

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["default", "split_batches", "dispatch_batches"])
def test_prepare_reads_every_sample_once(tmp_path: Path, mode: str) -> None:
    data = write_labels(tmp_path / "data", N + 3)  # not whole batches: even_batches pads
    run(torchrun("run_accelerate.py", str(data), str(tmp_path), mode, "--mode", mode))
    records = results(tmp_path, mode)
    assert [r["error"] for r in records] == [None, None]
    assert_once_each(records[0]["labels"] + records[1]["labels"], N + 3, padding=2 * BATCH)


@pytest.mark.parametrize("mode", ["default", "split_batches"])
def test_a_sampler_of_one_ranks_share_is_refused_at_the_first_batch(
    tmp_path: Path, mode: str
) -> None:
    data = write_labels(tmp_path / "data", N)
    argv = torchrun("run_accelerate.py", str(data), str(tmp_path), "t", "--mode", mode)
    run([*argv, "--world-from-dist"])
    for rank, record in enumerate(results(tmp_path, "t")):
        assert record["labels"] == []  # nothing read in silence
        assert f"ShardSampler(rank={rank}, world_size=2)" in record["error"]
        assert "rank=0, world_size=1" in record["error"]


@pytest.mark.parametrize("workers", [0, 2])
def test_save_state_load_state_resumes_exactly(tmp_path: Path, workers: int) -> None:
    data = write_labels(tmp_path / "data", N)
    step = random.Random(10 + workers).randint(1, 11)
    common = [str(data), str(tmp_path)]
    options = ["--workers", str(workers)]
    run(torchrun("run_accelerate.py", *common, "whole", *options))
    run(torchrun("run_accelerate.py", *common, "first", *options, "--stop-at", str(step)))
    state = str(tmp_path / "first-state")
    run(torchrun("run_accelerate.py", *common, "second", *options, "--resume", state))
    whole, first, second = (results(tmp_path, tag) for tag in ("whole", "first", "second"))
    for rank in range(2):
        assert len(first[rank]["labels"]) == BATCH * step
        assert first[rank]["labels"] + second[rank]["labels"] == whole[rank]["labels"], (
            f"rank {rank}, resumed at step {step}"
        )
