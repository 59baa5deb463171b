"""A training-like read run for test_cgroup_budget.py, meant to run in its own process
(inside a memory cgroup): epochs of random batches through DataLoader workers.

    python cgroup_job.py PATH MAX_RSS|none EPOCHS WORKERS BATCH

Prints one JSON line: the sum of every sample's first byte, the samples read, and the
last memory stats of each reading process.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from torch.utils.data import DataLoader

from shardio import ShardedDataset


class Probe(torch.utils.data.Dataset):
    def __init__(self, ds: ShardedDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        x = self.ds.read_batch(indices)["x"]
        first = int(x[:, 0].astype("int64").sum())
        return [{"sum": first, "count": len(indices), "stats": self.ds.memory_stats()}]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]


def first(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return batch[0]


def main(path: str, max_rss: str, epochs: int, workers: int, batch: int) -> None:
    torch.set_num_threads(1)
    ds = ShardedDataset(path, max_rss=None if max_rss == "none" else max_rss)
    loader = DataLoader(
        Probe(ds),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=first,
        generator=torch.Generator().manual_seed(0),
    )
    total = count = 0
    last: dict[int, dict[str, Any]] = {}
    for _ in range(epochs):
        for report in loader:
            total += report["sum"]
            count += report["count"]
            last[report["stats"]["pid"]] = report["stats"]
    print(json.dumps({"sum": total, "count": count, "processes": list(last.values())}))


if __name__ == "__main__":
    path, max_rss, epochs, workers, batch = sys.argv[1:6]
    main(path, max_rss, int(epochs), int(workers), int(batch))
