"""Which numpy dtypes torch holds, and as which torch dtype."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

__all__ = ["TORCH_KINDS", "torch_dtype_of"]

TORCH_KINDS = frozenset("biufc")
"""numpy dtype kinds torch can hold: bool, signed, unsigned, float, complex."""


@functools.lru_cache(maxsize=64)
def torch_dtype_of(dtype: np.dtype[Any]) -> torch.dtype:
    """The torch dtype matching a numpy dtype of either byte order."""
    return torch.from_numpy(np.empty(0, dtype=dtype.newbyteorder("="))).dtype
