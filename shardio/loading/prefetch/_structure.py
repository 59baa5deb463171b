"""Walk nested batches (dict, list, tuple, namedtuple) and turn numpy leaves into tensors."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np
import torch

from ..dtypes import TORCH_KINDS, torch_dtype_of

__all__ = ["map_structure", "iter_leaves", "to_tensor", "torch_dtype_of", "is_convertible_array"]


def map_structure(fn: Callable[[Any], Any], data: Any) -> Any:
    """Apply ``fn`` to every leaf of ``data``, rebuilding its containers with their own types.

    Containers are mappings, lists and tuples (namedtuples included); everything else,
    strings and bytes included, is a leaf.
    """
    if isinstance(data, (str, bytes, torch.Tensor, np.ndarray)):
        return fn(data)
    if isinstance(data, Mapping):
        items = {key: map_structure(fn, value) for key, value in data.items()}
        if isinstance(data, MutableMapping):
            # A copy keeps a subclass's extra state (defaultdict's factory, OrderedDict order).
            clone = copy.copy(data)
            clone.update(items)
            return clone
        try:
            return type(data)(items)  # type: ignore[call-arg]
        except TypeError:
            return items
    if isinstance(data, tuple):
        values = [map_structure(fn, value) for value in data]
        if hasattr(data, "_fields"):  # namedtuple
            return type(data)(*values)
        try:
            return type(data)(values)
        except TypeError:
            return tuple(values)
    if isinstance(data, list):
        values = [map_structure(fn, value) for value in data]
        try:
            return type(data)(values)
        except TypeError:
            return values
    return fn(data)


def iter_leaves(data: Any) -> Iterator[Any]:
    """Yield the leaves of ``data`` in the order `map_structure` visits them."""
    if isinstance(data, (str, bytes, torch.Tensor, np.ndarray)):
        yield data
    elif isinstance(data, Mapping):
        for value in data.values():
            yield from iter_leaves(value)
    elif isinstance(data, (tuple, list)):
        for value in data:
            yield from iter_leaves(value)
    else:
        yield data


def is_convertible_array(leaf: Any) -> bool:
    """True for numpy arrays and scalars whose dtype torch can hold (not strings or objects)."""
    return isinstance(leaf, (np.ndarray, np.generic)) and leaf.dtype.kind in TORCH_KINDS


def to_tensor(leaf: Any) -> Any:
    """A tensor for a numeric numpy leaf; any other leaf is returned unchanged.

    Writable native arrays are shared without a copy, as ``torch.from_numpy`` does.
    Read-only arrays (memory maps, LMDB buffers) are copied: a tensor over them would
    let the training loop write into read-only memory.  Byte-swapped and negatively
    strided arrays, which ``from_numpy`` rejects, are copied too.
    """
    if not is_convertible_array(leaf):
        return leaf
    if isinstance(leaf, np.generic):
        return torch.as_tensor(leaf)
    array: np.ndarray[Any, Any] = leaf
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    elif not array.flags.writeable or any(stride < 0 for stride in array.strides):
        array = np.array(array)
    return torch.from_numpy(array)
