"""Turn the ``device`` option into a usable ``torch.device``, or say why not."""

from __future__ import annotations

import torch

from shardio.core.errors import DeviceError
from shardio.core.warn import warn_user

__all__ = ["resolve_device"]

_EXPECTED = "'cpu', 'cuda' or 'cuda:N'"


def resolve_device(
    device: str | torch.device | int | None, *, fallback_to_cpu: bool = True
) -> torch.device:
    """The device batches go to.

    ``None`` picks the current CUDA device when there is one, else the CPU.  An int is
    a CUDA index, as in ``torch.cuda.set_device``.  Asking for CUDA on a machine without
    it falls back to the CPU with a warning (so one script runs on a laptop and a GPU
    node), or raises with ``fallback_to_cpu=False``; a device that cannot exist (a typo,
    an index past the last GPU, another backend) raises
    `DeviceError`.
    """
    if device is None:
        return _cuda_device(None) if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise DeviceError(f"device should be {_EXPECTED} or a torch.device, but got {device!r}")
    try:
        parsed = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device should be {_EXPECTED}, but got device={device!r}") from None
    if parsed.type == "cpu":
        return torch.device("cpu")
    if parsed.type != "cuda":
        raise DeviceError(
            f"shardio moves batches to the CPU or a CUDA GPU, so device should be "
            f"{_EXPECTED}, but got device={device!r}"
        )
    if not torch.cuda.is_available():
        if not fallback_to_cpu:
            raise DeviceError(f"device={device!r} was asked for, but this machine has no CUDA")
        warn_user(
            f"device={device!r} was asked for but CUDA is not available; the Prefetcher "
            "falls back to device='cpu' and batches stay in host memory",
            UserWarning,
        )
        return torch.device("cpu")
    return _cuda_device(parsed.index)


def _cuda_device(index: int | None) -> torch.device:
    count = torch.cuda.device_count()
    if index is None:
        index = torch.cuda.current_device()
    if not 0 <= index < count:
        have = ", ".join(f"'cuda:{i}'" for i in range(count))
        raise DeviceError(
            f"device should be one of this machine's {count} CUDA device(s) ({have}), "
            f"but got device='cuda:{index}'"
        )
    return torch.device("cuda", index)
