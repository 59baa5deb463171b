"""Datasets with known sleeps for the loader-doctor tests (a module of its own so spawned
DataLoader workers can import them)."""

from __future__ import annotations

import mmap
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info


class SleepyBatches(Dataset[Any]):
    """Each batch read sleeps ``load`` seconds once; worker ``slow_worker`` sleeps ``slow``."""

    def __init__(
        self, n: int, load: float, slow_worker: int | None = None, slow: float = 0.0
    ) -> None:
        self.n, self.load, self.slow_worker, self.slow = n, load, slow_worker, slow

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        info = get_worker_info()
        slow = info is not None and info.id == self.slow_worker
        time.sleep(self.slow if slow else self.load)
        return [torch.tensor([i]) for i in indices]


class Leaky(Dataset[Any]):
    """Worker 0 keeps ``leak`` more bytes resident with every sample it reads."""

    def __init__(self, n: int, leak: int) -> None:
        self.n, self.leak = n, leak
        self.kept: list[mmap.mmap] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        info = get_worker_info()
        if info is not None and info.id == 0:
            # Fresh anonymous pages, written so they are resident. (A malloc could reuse
            # heap the forked worker inherited already resident, and RSS would not move.)
            kept = mmap.mmap(-1, self.leak)
            kept.write(b"x" * self.leak)
            self.kept.append(kept)
        time.sleep(0.005)
        return torch.tensor([index])


class Counting(IterableDataset[Any]):
    """Yields ``start..stop``; a worker_init_fn splits the range between workers."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(self.start, self.stop):
            time.sleep(0.001)
            yield torch.tensor(i)


def split_range(worker_id: int) -> None:
    """The torch recipe: configure this worker's copy of the dataset."""
    info = get_worker_info()
    assert info is not None
    dataset = info.dataset
    per = -(-(dataset.stop - dataset.start) // info.num_workers)
    start = dataset.start + worker_id * per
    dataset.start, dataset.stop = start, min(start + per, dataset.stop)


class Failing(Dataset[Any]):
    """Raises on sample ``bad``."""

    def __init__(self, n: int, bad: int) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == self.bad:
            raise ValueError(f"sample {index} is damaged")
        return torch.tensor([index])


class BusyBatches(SleepyBatches):
    """Each batch read keeps a CPU busy for ``load`` seconds of its thread's CPU time."""

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        until = time.thread_time() + self.load
        while time.thread_time() < until:
            pass
        return [torch.tensor([i]) for i in indices]
