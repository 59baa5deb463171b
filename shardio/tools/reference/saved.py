"""Count the bytes autograd keeps for backward, with ``saved_tensors_hooks``."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["saved_activation_bytes", "SavedBytesCounter"]


class SavedBytesCounter:
    """Pack/unpack hooks that add up the storages saved for backward, each once.

    Parameters (leaf tensors that require grad) are not activations and are skipped.
    A storage counts once however many views of it are saved; the weak reference check
    keeps a freed-and-reused address from being taken for the same storage.
    """

    def __init__(self) -> None:
        self.nbytes = 0
        self.tensors = 0
        self._seen: dict[int, weakref.ref[Tensor]] = {}

    def pack(self, tensor: Tensor) -> Tensor:
        alias = tensor.detach()  # never hand autograd back its own input object
        if tensor.is_leaf and tensor.requires_grad:
            return alias
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        earlier = self._seen.get(key)
        known = earlier is not None and (held := earlier()) is not None
        if not known or held is None or held.untyped_storage().data_ptr() != key:
            self._seen[key] = weakref.ref(alias)
            self.nbytes += storage.nbytes()
            self.tensors += 1
        return alias

    @staticmethod
    def unpack(tensor: Tensor) -> Tensor:
        return tensor

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def saved_activation_bytes(forward: Callable[[], Any]) -> int:
    """Bytes of activations kept for backward by ``forward()`` (called once, no backward)."""
    counter = SavedBytesCounter()
    with counter.hooks():
        result = forward()
    del result
    return counter.nbytes
