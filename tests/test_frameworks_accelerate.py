"""accelerate under torchrun on 2 CPU ranks (gloo) with ShardSampler: every sample once
per epoch in each batch mode, a sampler of one rank's share refused at the first batch
(naming the fix), and exact resume through save_state/load_state with `AccelerateResume`:
at the same process count, at another (2 -> 1 and 1 -> 2, refused under dispatch_batches),
in a later epoch and between epochs."""

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


@pytest.mark.parametrize(
    ("saved_at", "resumed_at", "mode", "workers"),
    [
        (2, 1, "default", 0),
        (1, 2, "default", 2),
        (2, 1, "split_batches", 2),
        (1, 2, "split_batches", 0),
    ],
)
def test_a_mid_epoch_resume_at_another_process_count_is_exact(
    tmp_path: Path, saved_at: int, resumed_at: int, mode: str, workers: int
) -> None:
    data = write_labels(tmp_path / "data", N)
    common = [str(data), str(tmp_path)]
    options = ["--mode", mode, "--workers", str(workers)]
    step = random.Random(saved_at * 10 + workers).randint(1, 5)
    stop = ["--stop-at", str(step)]
    run(torchrun("run_accelerate.py", *common, "first", *options, *stop, nproc=saved_at))
    state = str(tmp_path / "first-state")
    resumed = torchrun("run_accelerate.py", *common, "second", *options, nproc=resumed_at)
    run([*resumed, "--resume", state])
    first = results(tmp_path, "first", saved_at)
    second = results(tmp_path, "second", resumed_at)
    per_step = BATCH * (1 if mode == "split_batches" else saved_at)  # samples of a step
    per_rank = per_step // saved_at
    assert [len(r["labels"]) for r in first] == [per_rank * step] * saved_at
    assert [r["error"] for r in second] == [None] * resumed_at
    read = [label for r in first + second for label in r["labels"]]
    assert_once_each(read, N, padding=2 * BATCH)  # even_batches pads the last step
    # The resumed processes start where the first run's steps ended, in the order.
    order, done = _order(data, epoch=0), step * per_step
    if mode == "default":  # process p takes batch p of each step
        starts = [order[done + p * BATCH : done + (p + 1) * BATCH] for p in range(resumed_at)]
    else:  # each batch of the order is split between the processes
        part = BATCH // resumed_at
        starts = [order[done + p * part : done + (p + 1) * part] for p in range(resumed_at)]
    assert [r["labels"][: len(s)] for r, s in zip(second, starts, strict=True)] == starts


def test_a_mid_epoch_resume_at_another_process_count_under_dispatch_batches_is_refused(
    tmp_path: Path,
) -> None:
    data = write_labels(tmp_path / "data", N)
    common = [str(data), str(tmp_path), "--mode", "dispatch_batches"]
    run(torchrun("run_accelerate.py", *common[:2], "first", *common[2:], "--stop-at", "4"))
    state = str(tmp_path / "first-state")
    resumed = torchrun("run_accelerate.py", *common[:2], "second", *common[2:], nproc=1)
    run([*resumed, "--resume", state])
    assert [len(r["labels"]) for r in results(tmp_path, "first")] == [4 * BATCH] * 2
    (record,) = results(tmp_path, "second", 1)
    assert record["labels"] == []  # nothing read in silence
    assert record["error"].startswith("StateMismatchError: cannot resume epoch 0 exactly")
    assert "num_processes=2 (now 1)" in record["error"]
    assert "accelerate launch --num_processes 2" in record["error"]


@pytest.mark.parametrize(("saved_at", "resumed_at"), [(2, 1), (1, 2)])
def test_a_state_saved_between_epochs_resumes_at_another_process_count(
    tmp_path: Path, saved_at: int, resumed_at: int
) -> None:
    data = write_labels(tmp_path / "data", N)
    common = [str(data), str(tmp_path), "--epochs", "2"]
    first_argv = torchrun("run_accelerate.py", *common[:2], "first", *common[2:], nproc=saved_at)
    run([*first_argv, "--save-between"])
    state = str(tmp_path / "first-state")
    resumed = torchrun("run_accelerate.py", *common[:2], "second", *common[2:], nproc=resumed_at)
    run([*resumed, "--save-between", "--resume", state])
    first, second = results(tmp_path, "first", saved_at), results(tmp_path, "second", resumed_at)
    assert_once_each([label for r in first for label in r["labels"]], N, padding=2 * BATCH)
    epoch1 = [r["epochs"] for r in second]
    assert [len(epochs) for epochs in epoch1] == [1] * resumed_at  # epoch 1 only
    assert_once_each([label for e in epoch1 for label in e[0]], N, padding=2 * BATCH)
    # Epoch 1's order, not the rest of epoch 0's: AccelerateResume set the epoch.
    order = _order(data, epoch=1)
    assert [label for e in epoch1 for label in e[0][:BATCH]] == [
        label for p in range(resumed_at) for label in order[p * BATCH : (p + 1) * BATCH]
    ]


def test_a_resume_in_a_later_epoch_goes_on_in_that_epoch(tmp_path: Path) -> None:
    data = write_labels(tmp_path / "data", N)
    step = random.Random(4).randint(1, 11)
    common = [str(data), str(tmp_path)]
    run(torchrun("run_accelerate.py", *common, "whole", "--epochs", "2"))
    stop = ["--epochs", "2", "--stop-epoch", "1", "--stop-at", str(step)]
    run(torchrun("run_accelerate.py", *common, "first", *stop))
    state = str(tmp_path / "first-state")
    run(torchrun("run_accelerate.py", *common, "second", *stop, "--resume", state))
    whole, first, second = (results(tmp_path, tag) for tag in ("whole", "first", "second"))
    for rank in range(2):
        assert first[rank]["epochs"][0] == whole[rank]["epochs"][0]
        assert len(first[rank]["epochs"][1]) == BATCH * step
        assert len(second[rank]["epochs"]) == 1 and second[rank]["error"] is None
        resumed = first[rank]["epochs"][1] + second[rank]["epochs"][0]
        assert resumed == whole[rank]["epochs"][1], f"rank {rank}, epoch 1, step {step}"
    assert whole[0]["epochs"][0] != whole[0]["epochs"][1]  # two epochs, two orders


def _order(data: Path, epoch: int) -> list[int]:
    """The labels of ``epoch``'s whole order, as the runner's sampler draws it."""
    from shardio import ShardedDataset, ShardSampler

    sampler = ShardSampler(ShardedDataset(data), seed=5, window="2KB", rank=0, world_size=1)
    return [int(i) for i in sampler.indices(epoch)]  # a label is its sample's index


@pytest.mark.parametrize("workers", [0, 2])
def test_load_state_without_accelerate_resume(tmp_path: Path, workers: int) -> None:
    """accelerate's own path (`use_stateful_dataloader=True`, `save_state`/`load_state`)
    fast-forwards a count of batches per process, knowing no epoch or process count: the
    sampler refuses it mid-epoch, naming `AccelerateResume`, with nothing read. Where
    the user says the count holds (the same epoch and processes), it is exact."""
    data = write_labels(tmp_path / "data", N)
    step = random.Random(20 + workers).randint(1, 11)
    common = [str(data), str(tmp_path), "--workers", str(workers), "--no-guard"]
    run(torchrun("run_accelerate.py", *common, "whole"))
    run(torchrun("run_accelerate.py", *common, "first", "--stop-at", str(step)))
    state = str(tmp_path / "first-state")
    run(torchrun("run_accelerate.py", *common, "refused", "--resume", state))
    for record in results(tmp_path, "refused"):
        assert record["labels"] == []
        assert (
            f"load_state of a stateful loader (fast-forwarding {step} batches)" in (record["error"])
        )
        assert "register_for_checkpointing(shardio.AccelerateResume(loader))" in record["error"]
    run(torchrun("run_accelerate.py", *common, "second", "--resume", state, "--trust"))
    whole, first, second = (results(tmp_path, tag) for tag in ("whole", "first", "second"))
    for rank in range(2):
        assert second[rank]["error"] is None
        assert first[rank]["labels"] + second[rank]["labels"] == whole[rank]["labels"], (
            f"rank {rank}, resumed at step {step}"
        )
