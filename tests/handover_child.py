"""A training loop in its own process, for the hand-over tests to kill from outside.

Usage: python handover_child.py DATASET CONTEXT MODE, where MODE is
``end`` (read every batch), ``break`` (stop after one), ``error`` (a worker raises),
``hang`` (print the worker pids and wait to be killed) or ``kill-worker`` (kill -9 one
worker mid-epoch). Prints ``workers PID PID`` once the workers read.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from shardio import ShardedDataset

torch.set_num_threads(1)


class Failing(ShardedDataset):
    def __getitems__(self, indices: Any) -> Any:
        if 20 in indices:
            raise ValueError("a worker's read failed on purpose")
        return super().__getitems__(indices)


def main() -> None:
    path, context, mode = sys.argv[1:4]
    kind = Failing if mode == "error" else ShardedDataset
    ds = kind(path)
    loader = DataLoader(
        ds, batch_size=4, num_workers=2, multiprocessing_context=context, persistent_workers=True
    )
    it = iter(loader)
    # NOTE: one batch from each worker first: a worker whose parent dies before its
    # loop starts takes init as its parent and never notices (torch's ManagerWatchdog
    # reads getppid() once there); that race is torch's, not the hand-over's.
    next(it)
    next(it)
    workers = [w.pid for w in it._workers]  # type: ignore[attr-defined]
    print("workers", *workers, flush=True)
    if mode == "hang":
        time.sleep(120)
    if mode == "break":
        del it
        print("done", flush=True)
        return
    if mode == "kill-worker":
        os.kill(workers[0], signal.SIGKILL)
    try:
        for _ in it:
            pass
    except Exception as error:  # the worker error, or torch's "worker killed" error
        print("error", type(error).__name__, flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
