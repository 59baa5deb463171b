"""Worker hand-over: DataLoader workers write batches into reused shared-memory slots.

A worker allocates a *ring* of slots in shared memory once (pre-faulted), reads each
batch's fixed fields straight into a free slot, and sends the main process a small
message: the slot number and where each field lies in it. The ring's storage itself
travels once, with the first batch of the ring, through torch's own sharing strategy
(by default ``file_descriptor``: the segment is unlinked when it is made, so nothing
can be left in ``/dev/shm`` by a crash). The main process maps each ring once, copies
the batch out of its slot (into pinned memory when it is torch's pin-memory thread
and CUDA is there) and marks the slot free in the ring's header; the worker reuses it.

Lifetimes: a batch the loop holds is a copy, never a slot, so no later batch can
overwrite it. A worker that finds no free slot grows its ring (to at most
`MAX_SLOTS`), then falls back to a fresh segment for that batch, so it never waits
on the main process and can never deadlock a shutdown.
"""

from __future__ import annotations

import functools
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from shardio.core.errors import ShardioError
from shardio.core.schema import Schema

from .blocks import BLOCKS
from .returns import FieldBatch

__all__ = [
    "MAX_SLOTS",
    "SLOTS",
    "HandedBatch",
    "SlotLease",
    "handover_stats",
    "slot_columns",
]

SLOTS = 4
"""Slots a ring starts with: a worker's batches in flight with ``prefetch_factor=2``."""
MAX_SLOTS = 16
"""Slots a ring grows to before a worker falls back to one segment per batch."""

_HEADER = 4096  # slot flags (one byte per slot) live in the ring's first page
_ALIGN = 64
_PAGE = 4096
_TORCH_KINDS = frozenset("biufc")


def _round_up(value: int, to: int) -> int:
    return -(-value // to) * to


@dataclass
class _Stats:
    rings: int = 0
    slot_batches: int = 0
    fallback_batches: int = 0
    received: int = 0


_STATS = _Stats()


def handover_stats() -> dict[str, int]:
    """Counters of this process: rings made and batches sent through slots or through a
    fresh segment (in a worker), batches received from slots (in the main process)."""
    return dict(vars(_STATS))


# --------------------------------------------------------------------- worker side
class _Ring:
    """``count`` slots of ``slot_nbytes`` in one shared segment, behind a page of flags."""

    def __init__(self, slot_nbytes: int, count: int) -> None:
        self.token = f"{os.getpid()}-{secrets.token_hex(8)}"
        self.slot_nbytes = slot_nbytes
        self.count = count
        self.storage = torch.UntypedStorage._new_shared(_HEADER + slot_nbytes * count)
        self.bytes = torch.empty(0, dtype=torch.uint8).set_(self.storage)
        self.bytes.numpy().fill(0)  # pre-fault every page once, here
        self.flags = self.bytes.numpy()[:count]  # 1: written, not yet copied out
        self.announced = False  # the storage travels with the first message only
        self.lock = threading.Lock()
        _STATS.rings += 1

    def acquire(self) -> int | None:
        with self.lock:
            free = np.flatnonzero(self.flags == 0)
            if not len(free):
                return None
            slot = int(free[0])
            self.flags[slot] = 1
            return slot

    def release(self, slot: int) -> None:
        self.flags[slot] = 0


_ring: _Ring | None = None
_ring_pid = -1


def _ring_for(nbytes: int) -> tuple[_Ring, int] | None:
    """A ring of this process with a free slot of ``nbytes``, grown when needed."""
    global _ring, _ring_pid
    ring = _ring if _ring_pid == os.getpid() else None
    if ring is not None and ring.slot_nbytes >= nbytes:
        slot = ring.acquire()
        if slot is not None:
            return ring, slot
        if ring.count >= MAX_SLOTS:
            return None
        count = ring.count * 2
    else:
        count = ring.count if ring is not None else SLOTS
    # A new ring: the old one lives on while batches in its slots are in flight
    # (their leases hold it), and the main process drops its map at this ring's first.
    ring = _Ring(_round_up(max(nbytes, 1), _PAGE), count)
    _ring, _ring_pid = ring, os.getpid()
    slot = ring.acquire()
    assert slot is not None
    return ring, slot


@dataclass
class SlotLease:
    """One slot holding one batch in a worker; freed here unless the batch was sent."""

    ring: _Ring
    slot: int
    tensors: dict[str, torch.Tensor]
    layout: dict[str, tuple[int, torch.dtype, tuple[int, ...]]]
    sent: bool = field(default=False)

    def __del__(self) -> None:
        if not self.sent:  # never pickled (a custom collate_fn): the slot is free again
            self.ring.release(self.slot)

    def wrap(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The collated ``batch`` as a `HandedBatch` when its tensors are this slot's."""
        if any(batch.get(name) is not tensor for name, tensor in self.tensors.items()):
            return batch
        return HandedBatch(batch, self)


class HandedBatch(dict[str, Any]):
    """A collated batch in a worker whose fixed fields lie in a slot: it pickles as the
    slot's place, and unpickles in the main process as a plain dict of copies."""

    __slots__ = ("lease",)

    def __init__(self, values: Mapping[str, Any], lease: SlotLease) -> None:
        super().__init__(values)
        self.lease = lease

    def __reduce__(self) -> Any:
        lease = self.lease
        ring = lease.ring
        items = [
            (name, lease.layout[name], None) if name in lease.layout else (name, None, value)
            for name, value in self.items()
        ]
        with ring.lock:
            storage = None if ring.announced else ring.storage
            ring.announced = True
            lease.sent = True
        start = _HEADER + lease.slot * ring.slot_nbytes
        return _receive, (ring.token, storage, ring.count, lease.slot, start, items)


def slot_columns(
    schema: Schema, count: int
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor], SlotLease | None]:
    """Arrays a reader fills for the fixed fields of ``count`` samples, the tensors over
    them, and the lease of the ring slot they lie in (``None``: a fresh segment, as
    when every slot is in flight)."""
    layout: dict[str, tuple[int, torch.dtype, tuple[int, ...]]] = {}
    offset = 0
    for fld in schema:
        if fld.variable or fld.dtype.kind not in _TORCH_KINDS or count * fld.sample_nbytes == 0:
            continue
        native = fld.dtype.newbyteorder("=")  # swapped fields are converted as copied
        dtype = torch.from_numpy(np.empty(0, dtype=native)).dtype
        layout[fld.name] = (offset, dtype, (count, *fld.shape))
        offset += _round_up(count * fld.sample_nbytes, _ALIGN)
    if not layout:
        return {}, {}, None
    found = _ring_for(offset)
    if found is None:
        _STATS.fallback_batches += 1
        arrays, tensors = _fresh_columns(layout, offset)
        return arrays, tensors, None
    ring, slot = found
    start = _HEADER + slot * ring.slot_nbytes
    tensors = {
        name: _view(ring.bytes, start + at, dtype, shape)
        for name, (at, dtype, shape) in layout.items()
    }
    _STATS.slot_batches += 1
    lease = SlotLease(ring, slot, tensors, layout)
    return {name: t.numpy() for name, t in tensors.items()}, tensors, lease


def _fresh_columns(
    layout: Mapping[str, tuple[int, torch.dtype, tuple[int, ...]]], nbytes: int
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    storage = torch.UntypedStorage._new_shared(nbytes)
    whole = torch.empty(0, dtype=torch.uint8).set_(storage)
    tensors = {name: _view(whole, at, dtype, shape) for name, (at, dtype, shape) in layout.items()}
    return {name: t.numpy() for name, t in tensors.items()}, tensors


def _view(
    whole: torch.Tensor, start: int, dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor:
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
    return whole[start : start + nbytes].view(dtype).view(shape)


# ----------------------------------------------------------------------- main side
@dataclass
class _Mapped:
    pid: int
    bytes: torch.Tensor
    array: np.ndarray  # the same memory as numpy bytes: slicing it is cheap
    flags: np.ndarray


_mapped: dict[str, _Mapped] = {}
_mapped_lock = threading.Lock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _register(token: str, storage: torch.UntypedStorage, count: int) -> _Mapped:
    """Map a worker's new ring; forget its older rings and those of ended workers
    (every message of an older ring of the same worker arrived before this one)."""
    pid = int(token.split("-", 1)[0])
    whole = torch.empty(0, dtype=torch.uint8).set_(storage)
    array = whole.numpy()
    ring = _Mapped(pid, whole, array, array[:count])
    for old, known in list(_mapped.items()):
        if known.pid == pid or not _alive(known.pid):
            del _mapped[old]
    _mapped[token] = ring
    return ring


def _receive(
    token: str,
    storage: torch.UntypedStorage | None,
    count: int,
    slot: int,
    start: int,
    items: list[tuple[str, Any, Any]],
) -> dict[str, Any]:
    """In the main process: the batch in ``slot`` copied out, and the slot freed."""
    with _mapped_lock:
        ring = _mapped.get(token)
        if ring is None:
            if storage is None:
                raise ShardioError(
                    f"a batch from DataLoader worker ring {token} arrived in process "
                    f"{os.getpid()}, which never received that ring: batches a worker "
                    "hands over are unpickled once, by the process the worker serves"
                )
            ring = _register(token, storage, count)
    pinned = _pinning()
    batch: dict[str, Any] = FieldBatch()  # as collated in-process: refuses unpacking
    try:
        owner = None if pinned else BLOCKS.take(_span(items))
        for name, layout, value in items:
            if layout is None:
                batch[name] = value
                continue
            at, dtype, shape = layout
            numpy_dtype, nbytes = _described(dtype, shape)
            source = ring.array[start + at : start + at + nbytes]
            if owner is None:
                target = torch.empty(shape, dtype=dtype, pin_memory=True)
                target.view(-1).view(torch.uint8).copy_(torch.from_numpy(source))
                batch[name] = target
            else:
                place = owner[at : at + nbytes]
                np.copyto(place, source)
                batch[name] = torch.from_numpy(place.view(numpy_dtype).reshape(shape))
    finally:
        ring.flags[slot] = 0  # copied out (or failed): the worker may reuse the slot
    _STATS.received += 1
    return batch


def _span(items: list[tuple[str, Any, Any]]) -> int:
    """Bytes from a slot's start to the end of its last fixed field."""
    return max(
        (layout[0] + _described(layout[1], layout[2])[1] for _, layout, _ in items if layout),
        default=0,
    )


@functools.lru_cache(maxsize=256)
def _described(dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[np.dtype[Any], int]:
    """The numpy dtype and the byte count of a field's rows (cached: per batch it is
    a dict lookup, not torch calls)."""
    numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    return numpy_dtype, int(np.prod(shape, dtype=np.int64)) * numpy_dtype.itemsize


def _pinning() -> bool:
    """Whether this thread is torch's pin-memory thread with CUDA present: then the one
    copy out of a slot goes straight into pinned memory, which ``pin_memory`` keeps."""
    thread = threading.current_thread()
    target = getattr(thread, "_target", None)
    if target is None or getattr(target, "__name__", "") != "_pin_memory_loop":
        return False
    return torch.cuda.is_available()
