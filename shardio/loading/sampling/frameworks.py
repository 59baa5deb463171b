"""Checks that a framework does not split a rank's order again, losing samples in silence.

Lightning and Fabric keep a ``DistributedSampler`` (which ShardSampler and MixSampler
are) as it is.
accelerate's ``prepare`` (and so the HF Trainer) shares one order between processes
itself: it gives each process every ``num_processes``-th batch (``BatchSamplerShard``)
or slices of the batches of process 0 (``dispatch_batches``). A sampler that already
yields only this rank's share would then lose the other ranks' batches of it: half of
an epoch at 2 processes. That is refused at the first index, with the fix named.

The check looks at accelerate's objects only where accelerate is imported already; it
imports nothing.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

from shardio.core.errors import InvalidOptionError

__all__ = ["accelerate_path", "check_not_split"]

_LINKS = ("base_dataloader", "batch_sampler", "sampler")  # how accelerate wraps a loader


class _Placed(Protocol):
    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...


def check_not_split(sampler: _Placed) -> None:
    """Raise `InvalidOptionError` when accelerate splits the batches of ``sampler``,
    a sampler of one rank's share (``world_size > 1``)."""
    if sampler.world_size == 1:
        return
    splitter = _accelerate_splitter(sampler)
    if splitter is None:
        return
    name = type(sampler).__name__
    source = "mix" if name == "MixSampler" else "dataset"
    raise InvalidOptionError(
        f"{name}(rank={sampler.rank}, world_size={sampler.world_size}) yields one "
        f"rank's share of the epoch, but it is inside accelerate's {splitter}, which "
        "shares one order between the processes itself: the other shares would never be "
        f"read. Create it with {name}({source}, rank=0, world_size=1) under accelerate "
        "and the HF Trainer (every process then has the whole order, and accelerate gives "
        "each its batches); see docs/frameworks.md"
    )


def _accelerate_splitter(sampler: object) -> str | None:
    """The name of the accelerate object that splits ``sampler``'s batches, if any."""
    loaders = sys.modules.get("accelerate.data_loader")
    path = accelerate_path(sampler)
    if loaders is None or path is None:
        return None
    splitters = tuple(
        cls
        for cls in (
            getattr(loaders, "BatchSamplerShard", None),
            getattr(loaders, "DataLoaderDispatcher", None),
        )
        if isinstance(cls, type)
    )
    found = [type(node).__name__ for node in path if isinstance(node, splitters)]
    return found[-1] if found else None


def accelerate_path(sampler: object) -> list[Any] | None:
    """The objects from a loader accelerate is iterating now down to ``sampler`` (the
    loader first), or None where accelerate is not iterating one that holds it."""
    state = sys.modules.get("accelerate.state")
    if state is None or sys.modules.get("accelerate.data_loader") is None:
        return None
    gradient_state = getattr(state, "GradientState", None)
    # NOTE: GradientState is a shared-state singleton; reading it before accelerate set
    # it up would initialize it, so it is only read once accelerate has.
    if gradient_state is None or not getattr(gradient_state, "_shared_state", None):
        return None
    try:
        references = gradient_state().dataloader_references
    except Exception:  # another accelerate version: nothing to check against
        return None
    for loader in references:
        if loader is None:
            continue
        path = _path_to(loader, sampler, 0)
        if path is not None:
            return path
    return None


def _path_to(node: Any, sampler: object, depth: int) -> list[Any] | None:
    if node is sampler:
        return []
    if node is None or depth > 8:
        return None
    for link in _LINKS:
        child = getattr(node, link, None) if link in _attributes(node) else None
        if child is not None and child is not node:
            found = _path_to(child, sampler, depth + 1)
            if found is not None:
                return [node, *found]
    return None


def _attributes(node: Any) -> set[str]:
    """The links ``node`` holds itself (not through ``__getattr__`` delegation)."""
    names = set(getattr(node, "__dict__", {}))
    return {link for link in _LINKS if link in names or hasattr(type(node), link)}
