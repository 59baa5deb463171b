"""Worker hand-over: DataLoader workers write batches into reused shared-memory slots.

A worker allocates a *ring* of slots in shared memory once (pre-faulted), reads each
batch's fixed fields straight into a free slot, and sends the main process a small
message: the slot number and where each field lies in it. The ring's storage itself
travels once, with the first batch of the ring, through torch's own sharing strategy
(by default ``file_descriptor``: the segment is unlinked when it is made, so nothing
can be left in ``/dev/shm`` by a crash). The main process maps each ring once and
hands the loop tensors that are views of the slot; when the last of them is freed, it
marks the slot free in the ring's header and the worker reuses it. Where the batch goes
on to a GPU (torch's pin-memory thread, or the `Prefetcher`'s, with CUDA there) it is
copied once, straight into pinned memory, and the slot is free at once.

Lifetimes: a slot is written only while its flag is clear, and the flag is cleared
only when nothing in the main process shows the slot any more, so no later batch can
overwrite a batch the loop holds. A loop that keeps batches keeps their slots: a worker
that finds no free slot grows its ring (to at most `MAX_SLOTS`), then falls back to a
fresh segment for that batch, so it never waits on the main process and can never
deadlock a shutdown.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from shardio.core.errors import ShardioError
from shardio.core.perprocess import process_alive
from shardio.core.schema import Schema

from .blocks import BLOCKS, Layout, fixed_layout
from .dtypes import torch_dtype_of
from .returns import FieldBatch
from .skeleton import Unwalkable, fill, strip

__all__ = [
    "COPY_OUT",
    "MAX_SLOTS",
    "SLOTS",
    "HandedBatch",
    "SlotLease",
    "hand_over",
    "handover_stats",
    "receive_pinned",
    "receiving_pinned",
    "slot_columns",
]

COPY_OUT = False
"""Copy each batch out of its slot in the main process (into a pooled block) instead of
handing the loop views of the slot; for measuring the two (benchmarks/bench_loader.py)."""
SLOTS = 4
"""Slots a ring starts with: a worker's batches in flight with ``prefetch_factor=2``."""
MAX_SLOTS = 16
"""Slots a ring grows to before a worker falls back to one segment per batch."""

_HEADER = 4096  # slot flags (one byte per slot) live in the ring's first page
_ALIGN = 64
_PAGE = 4096


def _round_up(value: int, to: int) -> int:
    return -(-value // to) * to


@dataclass
class _Stats:
    rings: int = 0
    slot_batches: int = 0
    fallback_batches: int = 0
    received: int = 0
    received_pinned: int = 0
    kept_slots: int = 0


_STATS = _Stats()


def handover_stats() -> dict[str, int]:
    """Counters of this process: rings made and batches sent through slots or through a
    fresh segment (in a worker), batches received from slots (in the main process), and
    fields copied out of a slot straight into pinned memory."""
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
        # (slot, id(layout)) -> the arrays and tensors of that layout in that slot: the
        # slot's views are made once, not per batch (the layout object is kept in them,
        # so its id is not reused while they are here).
        self.views: dict[tuple[int, int], _SlotViews] = {}
        # A layout's places (not its object, whose id may be reused once it is gone) ->
        # its number on this ring: the same number always means the same places.
        self.layout_numbers: dict[tuple[tuple[int, str, tuple[int, ...]], ...], int] = {}
        self.layouts_sent: set[int] = set()  # numbers the main process already knows
        _STATS.rings += 1

    def acquire(self) -> int | None:
        with self.lock:
            slot = self.flags.tobytes().find(0)  # ``count`` bytes: one C scan
            if slot < 0:
                return None
            self.flags[slot] = 1
            return slot

    def views_for(self, slot: int, layout: Layout) -> _SlotViews:
        """The arrays and tensors of ``layout`` in ``slot``, made on first use."""
        key = (slot, id(layout))
        views = self.views.get(key)
        if views is not None and views.layout is layout and views.intact():
            return views
        if len(self.views) >= 4 * MAX_SLOTS:  # a few layouts (batch sizes) in practice
            self.views.clear()
        views = _SlotViews(self.bytes, _HEADER + slot * self.slot_nbytes, layout)
        views.number = self.layout_numbers.setdefault(views.wire, len(self.layout_numbers))
        self.views[key] = views
        return views

    def release(self, slot: int) -> None:
        self.flags[slot] = 0


class _SlotViews:
    """A layout's arrays in one slot, the tensors over them, and where each lies (for
    the message that hands a batch of exactly these tensors over)."""

    __slots__ = ("arrays", "checks", "index", "layout", "number", "tensors", "wire")

    def __init__(self, whole: torch.Tensor, start: int, layout: Layout) -> None:
        self.layout = layout
        self.number = -1  # set by the ring
        self.arrays: dict[str, np.ndarray] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        wire = []
        for name, (at, dtype, shape) in layout.items():
            # Views of the ring's shared storage (torch's own sharing, where a batch goes
            # that way, then sends the ring rather than a copy), and numpy views of them.
            tensor = _view(whole, start + at, torch_dtype_of(dtype), shape)
            self.tensors[name] = tensor
            self.arrays[name] = tensor.numpy()
            wire.append((at, dtype.str, shape))
        self.wire = tuple(wire)  # what the main process needs to make the views
        tensors = list(self.tensors.values())
        self.index = {id(t): i for i, t in enumerate(tensors)}
        # What an in-place change of a tensor's place or shape (a transform's `t_()`,
        # `unsqueeze_()`, `set_()`) would change: such a batch takes the general path.
        self.checks = [(t, t.data_ptr(), t.shape, t.stride()) for t in tensors]

    def intact(self) -> bool:
        """Whether every tensor still shows its place as made (a transform may have
        changed one in place, for this batch and, as they are reused, the next)."""
        for tensor, pointer, shape, stride in self.checks:
            if (
                tensor.requires_grad
                or tensor.data_ptr() != pointer
                or tensor.shape != shape
                or tensor.stride() != stride
            ):
                return False
        return True


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
    views: _SlotViews | None = field(default=None)
    sent: bool = field(default=False)

    def __del__(self) -> None:
        if not self.sent:  # never pickled (a custom collate_fn): the slot is free again
            self.ring.release(self.slot)

    @property
    def start(self) -> int:
        return _HEADER + self.slot * self.ring.slot_nbytes


def hand_over(batch: Any, lease: SlotLease) -> Any:
    """In a worker: the collated ``batch`` (after ``returns=`` and ``batch_transform``),
    which pickles as the places of its tensors in a slot: those already in ``lease``'s
    slot stay there, the others are copied into a free slot once. A dict, list or tuple
    stays one (a subclass); a batch of another kind goes as torch sends it, with copies
    of the tensors that show the slot (as does a handed batch pickled a second time)."""
    kind = type(batch)
    if kind is dict or kind is FieldBatch:  # subclasses may not rebuild from a dict
        return HandedBatch(batch, lease, kind)
    if kind is list:
        return _HandedList(batch, lease, kind)
    if kind is tuple:
        return _HandedTuple(batch, lease)
    return _detached(batch, lease)


class HandedBatch(dict[str, Any]):
    """A collated batch in a worker whose tensors lie in a slot: it pickles as the slot's
    place and its structure, and unpickles in the main process with copies."""

    __slots__ = ("kind", "lease")

    def __init__(self, values: Mapping[str, Any], lease: SlotLease, kind: type) -> None:
        super().__init__(values)
        self.lease = lease
        self.kind = kind

    def __reduce__(self) -> Any:
        return _reduce(self.kind(self), self.lease)


class _HandedList(list[Any]):
    __slots__ = ("kind", "lease")

    def __init__(self, values: list[Any], lease: SlotLease, kind: type) -> None:
        super().__init__(values)
        self.lease = lease
        self.kind = kind

    def __reduce__(self) -> Any:
        return _reduce(list(self), self.lease)


class _HandedTuple(tuple[Any, ...]):
    lease: SlotLease

    def __new__(cls, values: tuple[Any, ...], lease: SlotLease) -> _HandedTuple:
        made = super().__new__(cls, values)
        made.lease = lease
        return made

    def __reduce__(self) -> Any:
        return _reduce(tuple(self), self.lease)


def _same(value: Any) -> Any:
    return value


def _detached(batch: Any, lease: SlotLease) -> Any:
    """``batch`` with copies of its tensors, for torch's own sharing (which would send
    the slot's segment itself); what cannot be walked keeps the slot for good."""
    tensors: list[torch.Tensor] = []
    try:
        skeleton = strip(batch, tensors)
    except Unwalkable:
        # NOTE: an object of the user's own class may hold views of the slot: the slot
        # goes with it and is never reused (a ring then falls back to fresh segments).
        lease.sent = True
        _STATS.kept_slots += 1
        return batch
    return fill(skeleton, lambda i: tensors[i].clone())


def _sendable(tensor: torch.Tensor) -> bool:
    return (
        tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and not tensor.requires_grad
        and not tensor.is_quantized
    )


def _reduce(batch: Any, lease: SlotLease) -> Any:
    """What a handed batch pickles as: the slot's place, its tensors' places in it and
    the batch's structure; or, when that cannot be, the batch as torch sends it."""
    if lease.sent:  # pickled before: its first receiver may have let go of the slot
        return _same, (_detached(batch, lease),)
    flat = _flat(batch, lease)
    if flat is not None:
        return flat
    tensors: list[torch.Tensor] = []
    try:
        skeleton = strip(batch, tensors)
    except Unwalkable:
        return _same, (_detached(batch, lease),)
    if not tensors or not all(_sendable(t) for t in tensors):
        return _same, (_detached(batch, lease),)
    places = _places_in(lease, tensors)
    if places is None:  # tensors made by a transform: copied into a free slot once
        layout, nbytes = [], 0
        for tensor in tensors:
            layout.append((nbytes, tensor.dtype, tuple(tensor.shape)))
            nbytes += _round_up(tensor.numel() * tensor.element_size(), _ALIGN)
        found = _ring_for(nbytes)
        if found is None:
            _STATS.fallback_batches += 1
            return _same, (_detached(batch, lease),)
        lease = SlotLease(*found)
        for tensor, (at, dtype, shape) in zip(tensors, layout, strict=True):
            _view(lease.ring.bytes, lease.start + at, dtype, shape).copy_(tensor)
        places = layout
    ring = lease.ring
    with ring.lock:
        storage = None if ring.announced else ring.storage
        ring.announced = True
        lease.sent = True
    return _receive, (ring.token, storage, ring.count, lease.slot, lease.start, skeleton, places)


_KINDS: tuple[type, ...] = (FieldBatch, dict, tuple, list)


def _flat(batch: Any, lease: SlotLease) -> Any:
    """The short message for the usual batch: a dict, tuple or list of exactly the
    slot's own tensors (as `Batch.collate` makes them, after ``returns=``), unchanged.
    It names the slot, the layout's number (the layout itself goes once per ring) and
    which tensor goes where; ``None`` for any other batch."""
    views = lease.views
    if views is None:
        return None
    kind = type(batch)
    if kind is FieldBatch or kind is dict:
        keys: tuple[str, ...] | None = tuple(batch.keys())
        values = batch.values()
    elif kind is tuple or kind is list:
        keys, values = None, batch
    else:
        return None
    index = views.index
    order = []
    for value in values:
        position = index.get(id(value))
        if position is None:
            return None
        order.append(position)
    if not views.intact():
        return None
    ring = lease.ring
    with ring.lock:
        storage = None if ring.announced else ring.storage
        ring.announced = True
        wire = None if views.number in ring.layouts_sent else views.wire
        ring.layouts_sent.add(views.number)
        lease.sent = True
    return _receive_flat, (
        ring.token,
        storage,
        ring.count,
        lease.slot,
        lease.start,
        views.number,
        wire,
        _KINDS.index(kind),
        keys,
        tuple(order),
    )


def _places_in(
    lease: SlotLease, tensors: list[torch.Tensor]
) -> list[tuple[int, torch.dtype, tuple[int, ...]]] | None:
    """Where each of ``tensors`` lies in ``lease``'s slot, or ``None`` if one does not
    (or is not contiguous there)."""
    ring = lease.ring
    base = ring.bytes.data_ptr() + lease.start
    places = []
    for tensor in tensors:
        at = tensor.data_ptr() - base
        nbytes = tensor.numel() * tensor.element_size()
        if not (at >= 0 and at + nbytes <= ring.slot_nbytes and tensor.is_contiguous()):
            return None
        places.append((at, tensor.dtype, tuple(tensor.shape)))
    return places


def slot_columns(
    schema: Schema, count: int
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor], SlotLease | None]:
    """Arrays a reader fills for the fixed fields of ``count`` samples, the tensors over
    them, and the lease of the ring slot they lie in (``None``: a fresh segment, as
    when every slot is in flight). The dicts are the caller's; the arrays and tensors
    are the slot's own, made once per slot and layout."""
    layout, nbytes = fixed_layout(schema, count)
    if not layout:
        return {}, {}, None
    found = _ring_for(nbytes)
    if found is None:
        _STATS.fallback_batches += 1
        arrays, tensors = _fresh_columns(layout, nbytes)
        return arrays, tensors, None
    ring, slot = found
    views = ring.views_for(slot, layout)
    _STATS.slot_batches += 1
    return dict(views.arrays), dict(views.tensors), SlotLease(ring, slot, views)


def _fresh_columns(
    layout: Layout, nbytes: int
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """A new segment for one batch: tensors that are views of its shared storage (so
    torch sends them by the segment's place), and the arrays over them."""
    storage = torch.UntypedStorage._new_shared(max(nbytes, 1))
    whole = torch.empty(0, dtype=torch.uint8).set_(storage)
    tensors = {
        name: _view(whole, at, torch_dtype_of(dtype), shape)
        for name, (at, dtype, shape) in layout.items()
    }
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
    layouts: dict[int, _Places] = field(default_factory=dict)  # by the ring's numbers


_Place = tuple[int, np.dtype[Any], tuple[int, ...], int, torch.dtype]
"""Where a tensor lies in a slot: byte offset, numpy dtype, shape, bytes, torch dtype."""


@dataclass
class _Places:
    """The tensors of a batch in a slot, and the bytes from its start to the last's end."""

    places: list[_Place]
    span: int

    @classmethod
    def of_wire(cls, wire: tuple[tuple[int, str, tuple[int, ...]], ...]) -> _Places:
        places = []
        for at, code, shape in wire:
            dtype = np.dtype(code)
            nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
            places.append((at, dtype, shape, nbytes, torch_dtype_of(dtype)))
        return cls(places, max((p[0] + p[3] for p in places), default=0))


_mapped: dict[str, _Mapped] = {}
_mapped_lock = threading.Lock()


def _register(token: str, storage: torch.UntypedStorage, count: int) -> _Mapped:
    """Map a worker's new ring; forget its older rings and those of ended workers
    (every message of an older ring of the same worker arrived before this one)."""
    pid = int(token.split("-", 1)[0])
    whole = torch.empty(0, dtype=torch.uint8).set_(storage)
    array = whole.numpy()
    ring = _Mapped(pid, whole, array, array[:count])
    for old, known in list(_mapped.items()):
        if known.pid == pid or not process_alive(known.pid):
            del _mapped[old]
    _mapped[token] = ring
    return ring


def _receive(
    token: str,
    storage: torch.UntypedStorage | None,
    count: int,
    slot: int,
    start: int,
    skeleton: Any,
    places: list[tuple[int, torch.dtype, tuple[int, ...]]],
) -> Any:
    """In the main process: the batch in ``slot`` copied out, and the slot freed."""
    with _mapped_lock:
        ring = _ring_here(token, storage, count)
    described = []
    for at, dtype, shape in places:
        numpy_dtype, nbytes = _described(dtype, shape)
        described.append((at, numpy_dtype, shape, nbytes, dtype))
    tensors = _slot_tensors(ring, slot, start, _Places(described, _span(places)))
    return fill(skeleton, tensors.__getitem__)


def _ring_here(token: str, storage: torch.UntypedStorage | None, count: int) -> _Mapped:
    """Worker ring ``token`` in this process, mapped from ``storage`` (sent with its
    first batch only); the caller holds `_mapped_lock`."""
    ring = _mapped.get(token)
    if ring is None:
        if storage is None:
            raise ShardioError(
                f"a batch from DataLoader worker ring {token} arrived in process "
                f"{os.getpid()}, which never received that ring: batches a worker "
                "hands over are unpickled once, by the process the worker serves"
            )
        ring = _register(token, storage, count)
    return ring


_MAKE: tuple[type, ...] = (FieldBatch, dict, tuple, list)  # as `_KINDS` in the worker


def _receive_flat(
    token: str,
    storage: torch.UntypedStorage | None,
    count: int,
    slot: int,
    start: int,
    number: int,
    wire: tuple[tuple[int, str, tuple[int, ...]], ...] | None,
    kind: int,
    keys: tuple[str, ...] | None,
    order: tuple[int, ...],
) -> Any:
    """In the main process: a batch of a slot's own tensors (see `_flat`), as views."""
    with _mapped_lock:
        ring = _ring_here(token, storage, count)
        if wire is not None:
            ring.layouts[number] = _Places.of_wire(wire)
        places = ring.layouts.get(number)
    if places is None:
        ring.flags[slot] = 0
        raise ShardioError(
            f"a batch from DataLoader worker ring {token} names layout {number}, which "
            f"never arrived in process {os.getpid()}: batches a worker hands over are "
            "unpickled once, in order, by the process the worker serves"
        )
    tensors = _slot_tensors(ring, slot, start, places)
    made = [tensors[i] for i in order]
    if keys is not None:
        return _MAKE[kind](zip(keys, made, strict=True))
    return made if kind == 3 else tuple(made)


def _slot_tensors(ring: _Mapped, slot: int, start: int, places: _Places) -> list[torch.Tensor]:
    """The tensors of a slot: views (the slot is freed with the last of them), or
    copies into pinned memory or a pooled block (the slot is freed at once)."""
    _STATS.received += 1
    pinning = _pinning()
    if pinning or COPY_OUT:
        try:
            return _copied(ring, start, places, pinned=pinning)
        finally:
            ring.flags[slot] = 0  # copied out (or failed): the worker may reuse the slot
    # The slot is the worker's again once the last of these views (or of views of them)
    # is freed. NOTE: views of `owner` keep it as their base (np.frombuffer of a
    # memoryview; see shardio.loading.blocks).
    owner = np.frombuffer(ring.array[start : start + max(places.span, 1)].data, dtype=np.uint8)
    done = weakref.finalize(owner, _free_slot, ring.flags, slot)
    done.atexit = False
    return [
        torch.from_numpy(np.ndarray(shape, dtype=dtype, buffer=owner, offset=at))
        for at, dtype, shape, _, _ in places.places
    ]


def _free_slot(flags: np.ndarray, slot: int) -> None:
    flags[slot] = 0


def _copied(ring: _Mapped, start: int, places: _Places, pinned: bool) -> list[torch.Tensor]:
    """The tensors of a slot copied out: into pinned memory, or into a pooled block."""
    owner = None if pinned else BLOCKS.take(places.span)
    tensors = []
    for at, numpy_dtype, shape, nbytes, dtype in places.places:
        source = ring.array[start + at : start + at + nbytes]
        if owner is None:
            target = torch.empty(shape, dtype=dtype, pin_memory=True)
            target.view(-1).view(torch.uint8).copy_(torch.from_numpy(source))
            _STATS.received_pinned += 1
            tensors.append(target)
        else:
            place = owner[at : at + nbytes]
            np.copyto(place, source)
            tensors.append(torch.from_numpy(place.view(numpy_dtype).reshape(shape)))
    return tensors


def _span(places: list[tuple[int, torch.dtype, tuple[int, ...]]]) -> int:
    """Bytes from a slot's start to the end of its last tensor."""
    return max((at + _described(dtype, shape)[1] for at, dtype, shape in places), default=0)


@functools.lru_cache(maxsize=256)
def _described(dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[np.dtype[Any], int]:
    """The numpy dtype and the byte count of a field's rows (cached: per batch it is
    a dict lookup, not torch calls)."""
    numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    return numpy_dtype, int(np.prod(shape, dtype=np.int64)) * numpy_dtype.itemsize


_receiver = threading.local()


@contextlib.contextmanager
def receive_pinned() -> Iterator[None]:
    """Batches this thread receives from worker slots meanwhile are copied straight into
    pinned memory (with CUDA present): the `Prefetcher`'s read-ahead thread then sends
    them to the device with no second host copy."""
    before = getattr(_receiver, "pinned", False)
    _receiver.pinned = True
    try:
        yield
    finally:
        _receiver.pinned = before


def receiving_pinned() -> bool:
    """Whether this thread is in `receive_pinned` with CUDA present (a `Loader` made
    here then reads its batches straight into pinned memory)."""
    return getattr(_receiver, "pinned", False) and torch.cuda.is_available()


def _pinning() -> bool:
    """Whether this thread is torch's pin-memory thread, or one in `receive_pinned`, with
    CUDA present: then the one copy out of a slot goes straight into pinned memory,
    which ``pin_memory`` and the `Prefetcher` keep."""
    if getattr(_receiver, "pinned", False):
        return torch.cuda.is_available()
    thread = threading.current_thread()
    target = getattr(thread, "_target", None)
    if target is None or getattr(target, "__name__", "") != "_pin_memory_loop":
        return False
    return torch.cuda.is_available()
