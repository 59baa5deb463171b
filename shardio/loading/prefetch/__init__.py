"""Overlap data loading and host-to-device copies with the training step.

Layer 4: needs torch, never imports shardio's adapters or dataset, so it wraps any
iterable of batches.
"""

from __future__ import annotations

from ._device import resolve_device
from .prefetcher import Prefetcher, PrefetchStats

__all__ = ["Prefetcher", "PrefetchStats", "resolve_device"]
