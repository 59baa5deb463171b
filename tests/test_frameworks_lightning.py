"""Lightning's Trainer and Fabric on 2 CPU ranks (their own ddp launcher, gloo) with
ShardSampler: every sample once per epoch, and exact resume from Lightning's checkpoint
(torchdata's StatefulDataLoader, workers prefetching) at a random step."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from framework_runs import assert_once_each, python, results, run, write_labels
from frameworks.mixes import mixture
from torch.utils.data import DataLoader

import shardio
from shardio import MixSampler, ShardedDataset, ShardSampler

N = 200  # samples; 100 per rank, 13 batches of 8 (the last one short)


def _epochs(out: Path, tag: str, world: int = 2) -> dict[str, list[list[int]]]:
    by_epoch: dict[str, list[list[int]]] = {}
    for record in results(out, tag, world):
        for epoch, labels in record["epochs"].items():
            by_epoch.setdefault(epoch, []).append(labels)
    return by_epoch


# A launcher and two ranks, each importing Lightning: 15 to 30 s. The default run fits a
# real Trainer in this process (test_the_doctor_traces_the_loader_a_trainer_fits_on);
# ShardSampler under a real gloo group is in tests/loading/test_sampling_distributed.py.
@pytest.mark.slow
def test_trainer_ddp_reads_every_sample_once_per_epoch(tmp_path: Path) -> None:
    data = write_labels(tmp_path / "data", N)
    run(python("run_lightning.py", str(data), str(tmp_path), "fit", "--epochs", "2"))
    epochs = _epochs(tmp_path, "fit")
    assert sorted(epochs) == ["0", "1"]
    for epoch, per_rank in epochs.items():
        assert [len(labels) for labels in per_rank] == [N // 2, N // 2], epoch
        assert_once_each(per_rank[0] + per_rank[1], N, padding=0)
    assert epochs["0"][0] != epochs["1"][0]  # set_epoch reshuffled
    ds = ShardedDataset(data)
    for rank in range(2):  # each rank's steps got our order's share, as it is
        ours = ShardSampler(ds, seed=5, window="2KB", rank=rank, world_size=2)
        for epoch, per_rank in epochs.items():
            assert per_rank[rank] == ours.indices(int(epoch)).tolist(), (rank, epoch)


@pytest.mark.slow
def test_fabric_reads_every_sample_once_per_epoch(tmp_path: Path) -> None:
    data = write_labels(tmp_path / "data", N + 1)  # odd: DistributedSampler's padding
    run(python("run_lightning.py", str(data), str(tmp_path), "fab", "--fabric", "--epochs", "2"))
    for per_rank in _epochs(tmp_path, "fab").values():
        assert len(per_rank[0]) == len(per_rank[1]) == N // 2 + 1
        assert_once_each(per_rank[0] + per_rank[1], N + 1, padding=1)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_trainer_resumes_exactly_from_its_checkpoint_mid_epoch(
    tmp_path: Path, workers: int
) -> None:
    data = write_labels(tmp_path / "data", N)
    step = random.Random(workers).randint(1, 11)
    common = ["--loader", "stateful", "--workers", str(workers)]
    run(python("run_lightning.py", str(data), str(tmp_path), "whole", *common))
    run(
        python(
            "run_lightning.py", str(data), str(tmp_path), "first", *common,
            "--max-steps", str(step), "--save-at", str(step),
        )
    )  # fmt: skip
    checkpoint = tmp_path / "first.ckpt"
    assert checkpoint.exists()
    run(
        python(
            "run_lightning.py", str(data), str(tmp_path), "second", *common,
            "--resume", str(checkpoint),
        )
    )  # fmt: skip
    whole, first, second = (_epochs(tmp_path, tag)["0"] for tag in ("whole", "first", "second"))
    for rank in range(2):
        assert len(first[rank]) == 8 * step
        assert first[rank] + second[rank] == whole[rank], f"rank {rank}, resumed at step {step}"


@pytest.mark.slow
def test_trainer_resumes_at_another_world_size(tmp_path: Path) -> None:
    data = write_labels(tmp_path / "data", N)
    step = 5
    common = ["--loader", "stateful", "--workers", "1"]
    run(
        python(
            "run_lightning.py", str(data), str(tmp_path), "first", *common,
            "--max-steps", str(step), "--save-at", str(step),
        )
    )  # fmt: skip
    run(
        python(
            "run_lightning.py", str(data), str(tmp_path), "second", *common,
            "--resume", str(tmp_path / "first.ckpt"), "--devices", "1",
        )
    )  # fmt: skip
    first = _epochs(tmp_path, "first")["0"]
    second = _epochs(tmp_path, "second", world=1)["0"]
    assert_once_each(first[0] + first[1] + second[0], N, padding=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fabric", "saved_at", "resumed_at"),
    [
        (True, 2, 1),
        (True, 1, 2),
    ],
)
def test_a_checkpoint_resumes_at_another_world_size(
    tmp_path: Path, fabric: bool, saved_at: int, resumed_at: int
) -> None:
    """Lightning and Fabric save the StatefulDataLoader's state (of rank 0), which holds
    the sampler's: the new ranks split what is left of the epoch, each sample once. (The
    Trainer's 2 -> 1 case is test_trainer_resumes_at_another_world_size.)"""
    data = write_labels(tmp_path / "data", N)
    step = 4
    common = ["--loader", "stateful", "--workers", "2", *(["--fabric"] if fabric else [])]
    stop = ["--save-at", str(step)] + ([] if fabric else ["--max-steps", str(step)])
    first_argv = python("run_lightning.py", str(data), str(tmp_path), "first", *common, *stop)
    run([*first_argv, "--devices", str(saved_at)])
    checkpoint = str(tmp_path / "first.ckpt")
    second_argv = python("run_lightning.py", str(data), str(tmp_path), "second", *common)
    run([*second_argv, "--resume", checkpoint, "--devices", str(resumed_at)])
    first = _epochs(tmp_path, "first", world=saved_at)["0"]
    second = _epochs(tmp_path, "second", world=resumed_at)["0"]
    assert [len(labels) for labels in first] == [8 * step] * saved_at
    # DistributedSampler's padding: fewer than the world size at each pass
    assert_once_each([label for labels in first + second for label in labels], N, padding=1)


@pytest.mark.slow
def test_the_trainer_refuses_a_mid_epoch_resume_at_more_devices(tmp_path: Path) -> None:
    """The Trainer sizes the resumed epoch with len() before the loader's state reaches
    the sampler, and at more devices would end the epoch before the rest: the sampler
    refuses the state (StateMismatchError naming the world size to resume at) instead
    of losing samples in silence."""
    data = write_labels(tmp_path / "data", N)
    common = ["--loader", "stateful", "--workers", "2"]
    first = python("run_lightning.py", str(data), str(tmp_path), "first", *common)
    run([*first, "--max-steps", "4", "--save-at", "4", "--devices", "1"])
    second = python("run_lightning.py", str(data), str(tmp_path), "second", *common)
    with pytest.raises(AssertionError) as refused:
        run([*second, "--resume", str(tmp_path / "first.ckpt"), "--devices", "2"])
    assert "StateMismatchError" in str(refused.value)
    assert "Resume at world_size=1" in str(refused.value)


@pytest.mark.slow
def test_fabric_resumes_exactly_from_its_checkpoint_mid_epoch(tmp_path: Path) -> None:
    data = write_labels(tmp_path / "data", N)
    step = random.Random(7).randint(1, 11)
    common = ["--fabric", "--loader", "stateful", "--workers", "2"]
    run(python("run_lightning.py", str(data), str(tmp_path), "whole", *common))
    run(
        python(
            "run_lightning.py", str(data), str(tmp_path), "first", *common, "--save-at", str(step)
        )
    )
    checkpoint = tmp_path / "first.ckpt"
    assert checkpoint.exists()
    run(
        python(
            "run_lightning.py",
            str(data),
            str(tmp_path),
            "second",
            *common,
            "--resume",
            str(checkpoint),
        )
    )
    whole, first, second = (_epochs(tmp_path, tag)["0"] for tag in ("whole", "first", "second"))
    for rank in range(2):
        assert len(first[rank]) == 8 * step
        assert first[rank] + second[rank] == whole[rank], f"rank {rank}, resumed at step {step}"


@pytest.mark.slow
def test_fabric_resumed_in_a_later_epoch_goes_on_with_the_next_epochs(tmp_path: Path) -> None:
    """Fabric's loader numbers epochs from 0 in each job; the sampler's state carries
    the epoch it was saved in, and the epochs after the resumed one are those of an
    uninterrupted run, not epochs 1, 2, ... again."""
    data = write_labels(tmp_path / "data", N)
    step = random.Random(11).randint(1, 11)
    common = ["--fabric", "--loader", "stateful", "--workers", "2"]
    argv = ["run_lightning.py", str(data), str(tmp_path)]
    run(python(*argv, "whole", *common, "--epochs", "3"))
    first = ["--epochs", "3", "--save-epoch", "1", "--save-at", str(step)]
    run(python(*argv, "first", *common, *first))
    resume = ["--epochs", "2", "--resume", str(tmp_path / "first.ckpt")]
    run(python(*argv, "second", *common, *resume))
    whole, first_run, second = (_epochs(tmp_path, tag) for tag in ("whole", "first", "second"))
    assert sorted(first_run) == ["0", "1"] and sorted(second) == ["0", "1"]
    for rank in range(2):
        assert first_run["0"][rank] == whole["0"][rank]
        assert len(first_run["1"][rank]) == 8 * step
        assert first_run["1"][rank] + second["0"][rank] == whole["1"][rank], f"rank {rank}"
        assert second["1"][rank] == whole["2"][rank], f"rank {rank}: not epoch 2's order"
    assert whole["2"][0] != whole["1"][0]


# A mixture: MixSampler is a DistributedSampler too, so the Trainer keeps it.
MIX_SIZES = {"a": 70, "b": 50}  # labels: a's index, b's 1000 + index


def _mix_data(root: Path) -> Path:
    for i, (name, size) in enumerate(MIX_SIZES.items()):
        write_labels(root / name, size, first=1000 * i)
    return root


def _mix_order(data: Path, epochs: int) -> list[int]:
    """The labels of the mixture's order, read by one process alone."""
    mix = mixture(data)
    sampler = MixSampler(mix, window="2KB", rank=0, world_size=1)
    labels: list[int] = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        sources, local = mix.source_of(list(sampler))
        labels += (sources * 1000 + local).tolist()
    return labels


def _merged(per_rank: list[list[int]]) -> list[int]:
    """Two ranks' labels back in mixture order (rank r reads positions r, r + 2, ...)."""
    return [label for row in zip(*per_rank, strict=True) for label in row]


@pytest.mark.slow  # about 20 s alone; tests/test_frameworks_basics.py has a fast case
def test_trainer_ddp_reads_a_mixture_in_its_order(tmp_path: Path) -> None:
    data = _mix_data(tmp_path / "data")
    run(python("run_lightning.py", str(data), str(tmp_path), "mix", "--mix", "--epochs", "2"))
    epochs = _epochs(tmp_path, "mix")
    assert sorted(epochs) == ["0", "1"]
    total = sum(MIX_SIZES.values())
    assert [len(labels) for labels in epochs["0"]] == [total // 2] * 2  # not re-sharded
    expected = _mix_order(data, 2)
    read = _merged(epochs["0"]) + _merged(epochs["1"])
    assert read == expected  # each (source, index) as the mixture's order says, once


@pytest.mark.slow
def test_fabric_reads_a_mixture_in_its_order(tmp_path: Path) -> None:
    data = _mix_data(tmp_path / "data")
    argv = ["run_lightning.py", str(data), str(tmp_path), "fab", "--mix", "--fabric"]
    run(python(*argv, "--epochs", "2"))
    epochs = _epochs(tmp_path, "fab")
    assert _merged(epochs["0"]) + _merged(epochs["1"]) == _mix_order(data, 2)


@pytest.mark.slow
def test_trainer_resumes_a_mixture_exactly_from_its_checkpoint(tmp_path: Path) -> None:
    data = _mix_data(tmp_path / "data")
    step = random.Random(3).randint(1, 6)
    common = ["--mix", "--loader", "stateful", "--workers", "2"]
    run(python("run_lightning.py", str(data), str(tmp_path), "whole", *common))
    run(
        python(
            "run_lightning.py", str(data), str(tmp_path), "first", *common,
            "--max-steps", str(step), "--save-at", str(step),
        )
    )  # fmt: skip
    run(
        python(
            "run_lightning.py", str(data), str(tmp_path), "second", *common,
            "--resume", str(tmp_path / "first.ckpt"),
        )
    )  # fmt: skip
    whole, first, second = (_epochs(tmp_path, tag)["0"] for tag in ("whole", "first", "second"))
    assert _merged(whole) == _mix_order(data, 1)
    for rank in range(2):
        assert len(first[rank]) == 8 * step
        assert first[rank] + second[rank] == whole[rank], f"rank {rank}, resumed at step {step}"


# The doctor and the Prefetcher inside the frameworks, in this process (one CPU device).


def _fit_two_epochs(loader: Any) -> dict[int, list[int]]:
    """Fit a one-weight model for 2 epochs on one CPU device; the labels of each epoch."""
    import lightning as L
    import torch

    seen: dict[int, list[int]] = {}

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch: dict[str, Any], index: int) -> torch.Tensor:
            seen.setdefault(self.current_epoch, []).extend(batch["label"].tolist())
            return (self.w * batch["x"]).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(Model(), train_dataloaders=loader)
    return seen


def test_the_doctor_traces_the_loader_a_trainer_fits_on(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    ds = ShardedDataset(write_labels(tmp_path / "data", N))
    loader = DataLoader(
        ds, batch_size=8, sampler=ShardSampler(ds, seed=1), num_workers=2,
        multiprocessing_context="fork",
    )  # fmt: skip
    with shardio.trace(loader) as tr:
        seen = _fit_two_epochs(loader)
    assert sorted(seen) == [0, 1]
    for labels in seen.values():
        assert_once_each(labels, N, padding=0)
    assert seen[0] != seen[1]  # Lightning's set_epoch reached the sampler through the trace
    assert tr.passes == 2 and len(tr.records) == 2 * 25
    assert {r.worker for r in tr.records} == {0, 1}  # timed in the DataLoader's workers
    assert "DataLoader(2 workers): 50 batches in 2 pass(es)" in tr.report()


@pytest.mark.slow
def test_the_doctor_traces_a_ddp_trainer_on_every_rank(tmp_path: Path) -> None:
    """Under strategy="ddp" each rank's trace times its own loop; leaving the block
    gathers the two ranks' summaries (a collective every rank reaches)."""
    data = write_labels(tmp_path / "data", N)
    argv = ["run_lightning.py", str(data), str(tmp_path), "traced", "--trace", "--epochs", "2"]
    run(python(*argv, "--workers", "1"))
    records = results(tmp_path, "traced")
    for epoch in ("0", "1"):
        per_rank = [record["epochs"][epoch] for record in records]
        assert_once_each(per_rank[0] + per_rank[1], N, padding=0)
    for record in records:  # 13 batches of 8 (the last short) per rank and epoch
        assert record["trace"] == {"passes": 2, "records": 26, "ranks": 2}


@pytest.mark.slow  # importing Lightning alone takes seconds
def test_the_prefetcher_in_a_fabric_loop(tmp_path: Path) -> None:
    import lightning as L
    import torch

    torch.set_num_threads(1)
    ds = ShardedDataset(write_labels(tmp_path / "data", N))
    fabric = L.Fabric(accelerator="cpu", devices=1)
    fabric.launch()
    linear = torch.nn.Linear(1, 1)
    model, optimizer = fabric.setup(linear, torch.optim.SGD(linear.parameters(), lr=0.0))
    loader = fabric.setup_dataloaders(
        DataLoader(ds, batch_size=8, sampler=ShardSampler(ds, seed=1)), move_to_device=False
    )
    seen = []
    for _ in range(2):
        labels = []
        for batch in shardio.Prefetcher(loader, device=fabric.device, depth=2):
            assert batch["x"].device == fabric.device
            labels += batch["label"].tolist()
            fabric.backward(model(batch["x"][:, None]).mean())
            optimizer.step()
        seen.append(labels)
    for labels in seen:
        assert_once_each(labels, N, padding=0)
    assert seen[0] != seen[1]  # Fabric's loader calls set_epoch at each iter()


@pytest.mark.slow  # importing Lightning alone takes seconds
def test_the_prefetcher_in_a_trainer_run(tmp_path: Path) -> None:
    """The Trainer iterates a Prefetcher as its train loader and reaches the sampler
    through it for set_epoch: each epoch in our order, each sample once."""
    import torch

    torch.set_num_threads(1)
    ds = ShardedDataset(write_labels(tmp_path / "data", N))
    sampler = ShardSampler(ds, seed=1)
    prefetcher = shardio.Prefetcher(DataLoader(ds, batch_size=8, sampler=sampler), device="cpu")
    assert prefetcher.sampler is sampler
    seen = _fit_two_epochs(prefetcher)
    assert seen == {0: sampler.indices(0).tolist(), 1: sampler.indices(1).tolist()}
    assert prefetcher.stats.batches == 25
