"""The reference consumer: a small transformer trained with 8-bit saved activations.

It keeps every activation needed for backward as head-wise 8-bit codes with running
scale estimates (the Mesa method) and is fed end to end by shardio in ``shardio demo``.
Uses only shardio's public API; nothing in the library imports it.
"""

from __future__ import annotations

from .layers import set_quantize
from .model import ModelConfig, ReferenceTransformer
from .quant import HeadwiseQuantizer
from .saved import SavedBytesCounter, saved_activation_bytes

__all__ = [
    "HeadwiseQuantizer",
    "ModelConfig",
    "ReferenceTransformer",
    "SavedBytesCounter",
    "saved_activation_bytes",
    "set_quantize",
]
