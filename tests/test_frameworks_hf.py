"""The HF Trainer under torchrun on 2 CPU ranks (gloo): a field named ``label`` through its
default collator, ShardSampler through ``_get_train_sampler``, every sample once,
``resume_from_checkpoint`` at a random step resuming exactly (in a later epoch too, with
`TrainerResume` setting the sampler's epoch), and a resume at another world size refused
by `TrainerResume` before a batch is read."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from framework_runs import assert_once_each, results, run, torchrun, write_labels

N = 200
BATCH = 8

pytestmark = pytest.mark.slow


def test_trainer_reads_every_sample_once_and_resumes_exactly(tmp_path: Path) -> None:
    data = write_labels(tmp_path / "data", N)
    common = [str(data), str(tmp_path)]
    run(torchrun("run_hf_trainer.py", *common, "whole"))
    whole = results(tmp_path, "whole")
    assert_once_each(whole[0]["labels"] + whole[1]["labels"], N, padding=2 * BATCH)

    step = random.Random(3).randint(1, 11)
    run(
        torchrun(
            "run_hf_trainer.py", *common, "first", "--max-steps", str(step), "--save-at", str(step)
        )
    )
    checkpoint = tmp_path / "first-run" / f"checkpoint-{step}"
    assert checkpoint.is_dir()
    run(torchrun("run_hf_trainer.py", *common, "second", "--resume", str(checkpoint)))
    first, second = results(tmp_path, "first"), results(tmp_path, "second")
    for rank in range(2):
        assert len(first[rank]["labels"]) == BATCH * step
        assert first[rank]["labels"] + second[rank]["labels"] == whole[rank]["labels"], (
            f"rank {rank}, resumed at step {step}"
        )


@pytest.mark.parametrize(("saved_at", "resumed_at"), [(2, 1), (1, 2)])
def test_a_resume_at_another_world_size_is_refused_before_the_first_batch(
    tmp_path: Path, saved_at: int, resumed_at: int
) -> None:
    data = write_labels(tmp_path / "data", N)
    common = [str(data), str(tmp_path)]
    stop = ["--max-steps", "4", "--save-at", "4"]
    run(torchrun("run_hf_trainer.py", *common, "first", *stop, nproc=saved_at))
    checkpoint = str(tmp_path / "first-run" / "checkpoint-4")
    run(torchrun("run_hf_trainer.py", *common, "second", "--resume", checkpoint, nproc=resumed_at))
    first = results(tmp_path, "first", saved_at)
    assert [len(r["labels"]) for r in first] == [4 * BATCH] * saved_at
    for record in results(tmp_path, "second", resumed_at):
        assert record["labels"] == []  # nothing trained on in silence
        assert record["error"].startswith("StateMismatchError: cannot resume from the checkpoint")
        assert f"world_size (processes) {saved_at} (now {resumed_at})" in record["error"]
        assert (
            f"Resume with world_size={saved_at}, per_device_train_batch_size=8" in (record["error"])
        )


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resume_in_a_later_epoch_goes_on_in_that_epoch(tmp_path: Path, workers: int) -> None:
    data = write_labels(tmp_path / "data", N)
    common = [str(data), str(tmp_path), "--epochs", "2", "--workers", str(workers)]
    run(torchrun("run_hf_trainer.py", *common, "whole"))
    steps_per_epoch = -(-N // (2 * BATCH))  # 13: the last batch of each rank is short
    step = steps_per_epoch + random.Random(5 + workers).randint(1, 11)
    stop = ["--max-steps", str(step), "--save-at", str(step)]
    run(torchrun("run_hf_trainer.py", *common, "first", *stop))
    checkpoint = str(tmp_path / "first-run" / f"checkpoint-{step}")
    run(torchrun("run_hf_trainer.py", *common, "second", "--resume", checkpoint))
    whole, first, second = (results(tmp_path, tag) for tag in ("whole", "first", "second"))
    for rank in range(2):
        assert second[rank]["error"] is None
        assert first[rank]["labels"] + second[rank]["labels"] == whole[rank]["labels"], (
            f"rank {rank}, resumed at step {step}"
        )
    epoch0, epoch1 = whole[0]["labels"][: 8 * 13], whole[0]["labels"][8 * 13 :]
    assert epoch0 != epoch1[: len(epoch0)]  # two epochs, two orders


def test_a_resume_without_trainer_resume_is_refused_before_the_first_batch(
    tmp_path: Path,
) -> None:
    """Without the callback the Trainer's skip of the first batches cannot be checked
    (another world size, a later epoch): the sampler refuses it, naming the callback,
    instead of training on some samples twice and others never."""
    data = write_labels(tmp_path / "data", N)
    common = [str(data), str(tmp_path), "--no-callback"]
    run(torchrun("run_hf_trainer.py", *common, "first", "--max-steps", "3", "--save-at", "3"))
    checkpoint = str(tmp_path / "first-run" / "checkpoint-3")
    run(torchrun("run_hf_trainer.py", *common, "second", "--resume", checkpoint))
    for record in results(tmp_path, "second"):
        assert record["labels"] == []
        assert record["error"].startswith("StateMismatchError: ShardSampler (epoch 0)")
        assert "skip_first_batches (skipping 3 batches)" in record["error"]
        assert "callbacks=[shardio.TrainerResume()]" in record["error"]
