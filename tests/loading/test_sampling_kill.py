"""kill -9 of a training process mid-epoch, then a resume from its last checkpoint.

A real training script (a subprocess with DataLoader workers) writes what each step
trained on to a log, then checkpoints the sampler state to a file (atomically). It is
killed with SIGKILL mid-epoch; steps after its last checkpoint are lost, as in a real
job. A new process resumes from the checkpoint with another worker count.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from shardio import ShardedDataset, ShardWriter
from shardio.loading.sampling import ShardSampler

SAMPLES, BATCH = 240, 4
TRAIN = """
import json, os, sys, time
import torch
from torch.utils.data import DataLoader
from shardio import ShardedDataset
from shardio.loading.sampling import ShardSampler

data, ckpt, log, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)
dataset = ShardedDataset(data)
sampler = ShardSampler(dataset, seed=5, window="1KB")
step = 0
if os.path.exists(ckpt):
    with open(ckpt) as f:
        saved = json.load(f)
    sampler.load_state_dict(saved["sampler"])
    step = saved["step"]
loader = DataLoader(
    dataset, batch_size=BATCH_SIZE, sampler=sampler, num_workers=workers,
    multiprocessing_context="fork" if workers else None,
)
sampler.set_epoch(0)
seen = 0
with open(log, "a") as out:
    for batch in loader:
        step += 1
        seen += len(batch["x"])
        out.write(json.dumps({"step": step, "x": batch["x"].tolist()}) + "\\n")
        out.flush()
        state = {"step": step, "sampler": sampler.state_dict(consumed=seen)}
        with open(ckpt + ".tmp", "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(ckpt + ".tmp", ckpt)
        time.sleep(0.03)  # the training step
""".replace("BATCH_SIZE", str(BATCH))


def _train(tmp_path: Path, workers: int) -> subprocess.Popen[bytes]:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    args = [str(tmp_path / n) for n in ("data", "ckpt.json", "log.jsonl")]
    return subprocess.Popen(
        [sys.executable, str(script), *args, str(workers)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,  # its own process group: the workers go with it
    )


def _checkpointed_step(tmp_path: Path) -> int:
    try:
        return int(json.loads((tmp_path / "ckpt.json").read_text())["step"])
    except FileNotFoundError:
        return 0


def test_kill_9_mid_epoch_then_resume_from_the_last_checkpoint(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "data", format="mmap", shard_size=500) as writer:
        writer.write_batch({"x": np.arange(SAMPLES)})
    steps = SAMPLES // BATCH

    first = _train(tmp_path, workers=2)
    deadline = time.monotonic() + 120
    while _checkpointed_step(tmp_path) < 10 and first.poll() is None:
        assert time.monotonic() < deadline, "the training process made no progress"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    with contextlib.suppress(ProcessLookupError):  # its DataLoader workers, if still there
        os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == -signal.SIGKILL
    saved = json.loads((tmp_path / "ckpt.json").read_text())
    assert 10 <= saved["step"] < steps  # killed mid-epoch
    before = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]

    second = _train(tmp_path, workers=0)
    assert second.wait(timeout=120) == 0
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    after = lines[len(before) :]

    # Steps the killed process took after its last checkpoint are lost with it.
    committed = [x for line in before if line["step"] <= saved["step"] for x in line["x"]]
    resumed = [x for line in after for x in line["x"]]
    assert [line["step"] for line in after] == list(range(saved["step"] + 1, steps + 1))
    expected = ShardSampler(ShardedDataset(tmp_path / "data"), seed=5, window="1KB").indices()
    assert committed + resumed == expected.tolist()  # every sample once, in order
