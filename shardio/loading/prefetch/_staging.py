"""Reusable page-locked host buffers that batches are staged in before a device copy."""

from __future__ import annotations

import math
from typing import Protocol

import torch

from shardio.core.config import positive_int

__all__ = ["StagingPool", "StagingSlot"]


class Fence(Protocol):
    """Anything that can wait for the copies out of a slot to finish (a CUDA event)."""

    def synchronize(self) -> None: ...


class StagingSlot:
    """The buffers of one batch in flight: the i-th staged leaf goes to the i-th buffer.

    Buffers are raw bytes viewed as each leaf's dtype and shape, so a smaller last batch
    or a variable-length field reuses the buffer of a larger one.
    """

    def __init__(self, pin_memory: bool) -> None:
        self._pin_memory = pin_memory
        self._buffers: list[torch.Tensor] = []
        self._taken = 0
        self.fence: Fence | None = None

    @property
    def nbytes(self) -> int:
        return sum(buffer.numel() for buffer in self._buffers)

    def reset(self) -> None:
        """Wait until the device has read the slot's previous batch, then start over."""
        if self.fence is not None:
            self.fence.synchronize()
            self.fence = None
        self._taken = 0

    def take(self, dtype: torch.dtype, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """A host tensor of ``dtype`` and ``shape`` backed by this slot's next buffer."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        index = self._taken
        self._taken += 1
        if index == len(self._buffers):
            self._buffers.append(self._allocate(nbytes))
        elif self._buffers[index].numel() < nbytes:
            # Grow geometrically so a slowly growing field re-pins O(log n) times.
            self._buffers[index] = self._allocate(max(nbytes, 2 * self._buffers[index].numel()))
        return self._buffers[index][:nbytes].view(dtype).view(shape)

    def _allocate(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self._pin_memory)


class StagingPool:
    """A ring of slots, so staging batch N+1 overlaps the device copy of batch N.

    Taking a slot waits on its fence, the event recorded after the copies that last
    read it; with two slots that copy was issued one batch earlier and has normally
    finished, so the wait is free.
    """

    def __init__(self, slots: int = 2, *, pin_memory: bool = True) -> None:
        positive_int(slots, "slots")
        self._slots = [StagingSlot(pin_memory) for _ in range(slots)]
        self._turn = 0

    @property
    def nbytes(self) -> int:
        """Bytes of host memory the pool holds."""
        return sum(slot.nbytes for slot in self._slots)

    def next_slot(self) -> StagingSlot:
        slot = self._slots[self._turn]
        self._turn = (self._turn + 1) % len(self._slots)
        slot.reset()
        return slot
