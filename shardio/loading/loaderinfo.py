"""Which DataLoader worker this process is: the torch-side lookup that the memory
guard (storage, torch-free) is given to split a job budget between workers."""

from __future__ import annotations

import torch.utils.data

__all__ = ["dataloader_worker"]


def dataloader_worker() -> tuple[int, int] | None:
    """``(worker id, num_workers)`` in a DataLoader worker; ``None`` elsewhere."""
    info = torch.utils.data.get_worker_info()
    return None if info is None else (info.id, info.num_workers)
