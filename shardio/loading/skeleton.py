"""A batch's structure without its tensors, so a worker can send the tensors' places.

`strip` walks what a collate function, ``returns=`` or a ``batch_transform`` gives
(dicts, lists, tuples and named tuples of tensors, arrays and plain values) and
replaces every tensor by a marker; `fill` puts tensors back where the markers are.
Anything else (an object of the user's own class) cannot be walked: `Unwalkable`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .returns import FieldBatch

__all__ = ["Leaf", "Unwalkable", "fill", "strip"]

# Values that go by value as they are (pickled): they hold no tensor.
_PLAIN = (int, float, complex, str, bytes, type(None), np.generic, np.ndarray)


class Unwalkable(Exception):
    """A batch holds an object `strip` cannot look into."""


class Leaf:
    """Where the ``index``-th tensor of a stripped batch goes."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> Any:
        return Leaf, (self.index,)


def strip(value: Any, tensors: list[torch.Tensor]) -> Any:
    """``value`` with each tensor appended to ``tensors`` and replaced by its `Leaf`."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return Leaf(len(tensors) - 1)
    return _map(value, lambda item: strip(item, tensors))


def fill(skeleton: Any, tensor: Callable[[int], Any]) -> Any:
    """``skeleton`` with each `Leaf` replaced by ``tensor(leaf.index)``."""
    if isinstance(skeleton, Leaf):
        return tensor(skeleton.index)
    return _map(skeleton, lambda item: fill(item, tensor))


def _map(value: Any, step: Callable[[Any], Any]) -> Any:
    kind = type(value)
    if kind is dict or kind is FieldBatch:
        return kind({key: step(item) for key, item in value.items()})
    if kind is list:
        return [step(item) for item in value]
    if kind is tuple:
        return tuple(step(item) for item in value)
    if isinstance(value, tuple) and hasattr(kind, "_fields"):  # a named tuple
        return kind(*(step(item) for item in value))
    if isinstance(value, _PLAIN):
        return value
    raise Unwalkable(f"a {kind.__name__} in a batch")
