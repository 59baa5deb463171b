"""A forked DataLoader worker opens an LMDB environment its parent has open.

py-lmdb refuses a second open "in this process" and its record of open environments
is inherited by a forked child, so the child must close the handles it inherited.
"""

from __future__ import annotations

from pathlib import Path

import lmdb
import numpy as np
import pytest
from torch.utils.data import DataLoader

import shardio

N = 40


def _decode(value: bytes) -> dict[str, np.ndarray]:
    return {"x": np.frombuffer(value, np.int64)}


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.lmdb"
    with lmdb.open(str(path), map_size=2**22) as env, env.begin(write=True) as txn:
        for i in range(N):
            txn.put(b"%04d" % i, np.int64(i).tobytes())
    return path


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    path = tmp_path / "d.shardio"
    with shardio.ShardWriter(path, format="lmdb") as writer:
        writer.write_batch({"x": np.arange(N, dtype=np.int64)})
    return path


def _read_in_workers(dataset: shardio.ShardedDataset) -> list[int]:
    loader = DataLoader(dataset, batch_size=8, num_workers=2, multiprocessing_context="fork")
    return sorted(int(v) for batch in loader for v in batch["x"].reshape(-1))


@pytest.mark.parametrize("kind", ["foreign", "sharded"])
def test_workers_open_what_the_parent_has_open(kind: str, foreign: Path, sharded: Path) -> None:
    path, options = (foreign, {"decode": _decode}) if kind == "foreign" else (sharded, {})
    first = shardio.ShardedDataset(path, **options)
    assert int(np.asarray(first[3]["x"]).reshape(-1)[0]) == 3  # opened in the parent
    second = shardio.ShardedDataset(path, **options)  # e.g. a validation copy
    assert _read_in_workers(second) == list(range(N))
    assert _read_in_workers(first) == list(range(N))
    assert int(np.asarray(first[5]["x"]).reshape(-1)[0]) == 5  # the parent still reads
