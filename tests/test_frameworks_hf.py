"""The HF Trainer under torchrun on 2 CPU ranks (gloo): a field named ``label`` through its
default collator, ShardSampler through ``_get_train_sampler``, every sample once, and
``resume_from_checkpoint`` at a random step resuming exactly."""

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
