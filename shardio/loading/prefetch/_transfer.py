"""How a batch gets to its device: prepared on the read-ahead thread, handed over on the loop's.

``prepare`` runs on the read-ahead thread and returns the batch with a readiness token;
``hand_over`` runs on the training loop's thread just before the batch is yielded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from ._staging import StagingPool, StagingSlot
from ._structure import is_convertible_array, iter_leaves, map_structure, to_tensor, torch_dtype_of

__all__ = ["Transfer", "HostTransfer", "CudaTransfer", "make_transfer"]

Transform = Callable[[Any], Any]


class Transfer(Protocol):
    pins: bool  # whether batches should reach it in pinned memory

    def start_thread(self) -> None: ...

    def prepare(self, batch: Any) -> tuple[Any, Any]: ...

    def hand_over(self, batch: Any, token: Any) -> Any: ...

    def release(self) -> None: ...

    @property
    def staged_bytes(self) -> int: ...


def make_transfer(device: torch.device, transform: Transform | None) -> Transfer:
    if device.type == "cuda":
        return CudaTransfer(device, transform)
    return HostTransfer(device, transform)


class HostTransfer:
    """CPU target: numpy leaves become tensors and the transform runs on the read-ahead thread."""

    pins = False

    def __init__(self, device: torch.device, transform: Transform | None) -> None:
        self._device = device
        self._transform = transform

    @property
    def staged_bytes(self) -> int:
        return 0

    def start_thread(self) -> None:
        pass

    def prepare(self, batch: Any) -> tuple[Any, None]:
        batch = map_structure(self._convert, batch)
        if self._transform is not None:
            batch = self._transform(batch)
        return batch, None

    def hand_over(self, batch: Any, token: None) -> Any:
        return batch

    def release(self) -> None:
        pass

    def _convert(self, leaf: Any) -> Any:
        leaf = to_tensor(leaf)
        if isinstance(leaf, torch.Tensor) and leaf.device != self._device:
            return leaf.to(self._device)
        return leaf


class CudaTransfer:
    """CUDA target: pinned staging, copies and transform on a side stream, an event per batch.

    On the read-ahead thread each host leaf is copied into a reused pinned buffer and
    sent with ``non_blocking=True`` on a side stream, so it overlaps the step running
    on the loop's stream; the transform runs on the side stream too and an event marks
    the batch ready.  On the loop's thread the current stream waits on that event and
    every device tensor is ``record_stream``-ed on it: the tensors were allocated on the
    side stream, and without this the caching allocator could hand their memory to the
    next batch while the step still reads it.

    A leaf already in pinned memory (``pin_memory=True``, or a batch the read-ahead
    thread received from a worker's slot, see `shardio.loading.handover`) is sent from
    where it is: one host copy per batch, never two.
    """

    pins = True

    def __init__(self, device: torch.device, transform: Transform | None) -> None:
        self._device = device
        self._transform = transform
        # Created on first use, so building a Prefetcher does not initialise CUDA
        # before DataLoader workers fork.
        self._stream: torch.cuda.Stream | None = None
        self._pool: StagingPool | None = None

    @property
    def staged_bytes(self) -> int:
        return 0 if self._pool is None else self._pool.nbytes

    def start_thread(self) -> None:
        # The current device is per thread; the read-ahead thread starts on cuda:0.
        torch.cuda.set_device(self._device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self._device)
            self._pool = StagingPool(slots=2, pin_memory=True)

    def prepare(self, batch: Any) -> tuple[Any, torch.cuda.Event]:
        assert self._stream is not None and self._pool is not None, "start_thread() first"
        slot = self._pool.next_slot()
        with torch.cuda.stream(self._stream):
            try:
                batch = map_structure(lambda leaf: self._send(leaf, slot), batch)
            finally:
                # Fence even a half-sent batch: its issued copies may still read the slot.
                slot.fence = copied = self._record()
            if self._transform is None:
                return batch, copied
            batch = self._transform(batch)
            return batch, self._record()

    def hand_over(self, batch: Any, token: torch.cuda.Event) -> Any:
        compute = torch.cuda.current_stream(self._device)
        compute.wait_event(token)
        for leaf in iter_leaves(batch):
            if isinstance(leaf, torch.Tensor) and leaf.device == self._device:
                leaf.record_stream(compute)
        return batch

    def release(self) -> None:
        # In-flight copies out of the pool are safe: the caching host allocator records
        # an event for every non_blocking copy and frees the memory only after it.
        self._pool = None
        self._stream = None

    def _record(self) -> torch.cuda.Event:
        # blocking=True: a fence wait on the read-ahead thread sleeps instead of spinning
        # on a core the DataLoader workers need.
        event = torch.cuda.Event(blocking=True)
        event.record(self._stream)
        return event

    def _send(self, leaf: Any, slot: StagingSlot) -> Any:
        if is_convertible_array(leaf):
            if isinstance(leaf, np.generic):
                return torch.as_tensor(leaf).to(self._device, non_blocking=True)
            host = slot.take(torch_dtype_of(leaf.dtype), leaf.shape)
            np.copyto(host.numpy(), leaf, casting="equiv")
            return host.to(self._device, non_blocking=True)
        if not isinstance(leaf, torch.Tensor) or leaf.device == self._device:
            return leaf
        if leaf.device.type != "cpu" or leaf.is_pinned():
            # Already pinned (DataLoader(pin_memory=True)) or on another GPU: copy directly.
            return leaf.to(self._device, non_blocking=True)
        host = slot.take(leaf.dtype, leaf.shape)
        host.copy_(leaf)
        return host.to(self._device, non_blocking=True)
