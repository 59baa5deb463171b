"""Samplers that only need shard lengths: shard-aware shuffling, rank partitioning, resume.

Layering: this package duck-types the dataset (``len``, ``shard_lengths``,
``shard_nbytes``, and ``readahead(start, stop)`` where present) and never imports
the dataset or adapter modules.
"""

from __future__ import annotations

from .accelerate_resume import AccelerateResume
from .layout import ShardedSource, ShardLayout
from .mixsampler import MixSampler
from .orders import ORDERS, epoch_order
from .partition import PARTITIONS, rank_indices, samples_per_rank
from .sampler import ShardSampler
from .state import find_sampler_state

__all__ = [
    "ShardSampler",
    "MixSampler",
    "ShardedSource",
    "ShardLayout",
    "ORDERS",
    "PARTITIONS",
    "epoch_order",
    "rank_indices",
    "samples_per_rank",
    "find_sampler_state",
    "AccelerateResume",
]
