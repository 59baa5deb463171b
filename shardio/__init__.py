"""shardio: data loading for deep learning from datasets larger than memory.

Storage (adapters, writers, conversion) imports no torch; the torch-facing pieces
(`ShardedDataset`, `Prefetcher`, samplers) are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.config import format_size, parse_size
from .core.errors import *  # noqa: F403
from .core.errors import __all__ as _error_names
from .core.schema import Field, Schema
from .memory import MemoryPolicy
from .storage.manifest import Manifest
from .storage.reader import DatasetReader
from .storage.writer import ShardWriter

__version__ = "0.1.0"

# name -> module that defines it; imported lazily so `import shardio` stays torch-free.
_LAZY = {
    "AccelerateResume": "shardio.loading.sampling",
    # Not in __all__: it imports transformers, which `from shardio import *` must not need.
    "TrainerResume": "shardio.loading.sampling.trainer_resume",
    "ShardedDataset": "shardio.loading.dataset",
    "Loader": "shardio.loading.loader",
    "Prefetcher": "shardio.loading.prefetch",
    "ShardSampler": "shardio.loading.sampling",
    "Mix": "shardio.loading.mix",
    "MixSampler": "shardio.loading.sampling",
    "verify": "shardio.convert",
    "trace": "shardio.tools.diagnose",
}
# name -> module that *is* the export: the package shardio.convert is callable as
# convert() (see its docstring), so the attribute is the same object either way.
_LAZY_MODULES = {"convert": "shardio.convert"}

if TYPE_CHECKING:
    from .convert import verify
    from .convert.converter import convert
    from .loading.dataset import ShardedDataset
    from .loading.loader import Loader
    from .loading.mix import Mix
    from .loading.prefetch import Prefetcher
    from .loading.sampling import AccelerateResume, MixSampler, ShardSampler
    from .loading.sampling.trainer_resume import TrainerResume as TrainerResume
    from .tools.diagnose import trace

__all__ = [
    *_error_names,
    "AccelerateResume",
    "DatasetReader",
    "Field",
    "Loader",
    "Manifest",
    "MemoryPolicy",
    "Mix",
    "MixSampler",
    "Prefetcher",
    "Schema",
    "ShardSampler",
    "ShardWriter",
    "ShardedDataset",
    "__version__",
    "convert",
    "format_size",
    "parse_size",
    "trace",
    "verify",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(_LAZY_MODULES[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
