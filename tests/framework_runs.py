"""Helpers for the framework tests: a tiny labelled dataset, a run of a script under
tests/frameworks/ in real processes, and the labels each rank's steps received."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from shardio import ShardWriter

HERE = Path(__file__).parent
ROOT = HERE.parent
SCRIPTS = HERE / "frameworks"


def write_labels(path: Path, n: int, first: int = 0) -> Path:
    """A dataset of ``n`` samples whose ``label`` is ``first`` plus their index, in
    several shards."""
    labels = np.arange(first, first + n, dtype=np.int64)
    with ShardWriter(path, format="mmap", shard_size=600) as writer:
        writer.write_batch({"label": labels, "x": labels.astype(np.float32)})
    return path


def run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command (a script under tests/frameworks/, or torchrun of one); raise with its
    output when it fails."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT)
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{argv} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    return done


def torchrun(script: str, *args: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(_free_port()),
        str(SCRIPTS / script),
        *args,
    ]


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPTS / script), *args]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def results(out: Path, tag: str, world: int = 2) -> list[dict[str, Any]]:
    """Each rank's record of a run."""
    return [json.loads((out / f"{tag}-rank{r}.json").read_text()) for r in range(world)]


def assert_once_each(labels: list[int], n: int, padding: int = 1) -> None:
    """Every one of ``n`` samples read, each once, but for at most ``padding`` repeats
    (DistributedSampler's padding: fewer than the world size; accelerate's
    ``even_batches``: fewer than a batch per process)."""
    counts = Counter(labels)
    assert set(counts) == set(range(n)), f"never read: {sorted(set(range(n)) - set(counts))[:20]}"
    repeats = sum(c - 1 for c in counts.values())
    assert repeats <= padding, f"{repeats} samples read more than once"
