"""shardio: data loading for deep learning from datasets larger than memory.

Storage (adapters, writers, conversion) imports no torch; the torch-facing pieces
(:class:`ShardedDataset`, :class:`Prefetcher`, samplers) are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import format_size, parse_size
from .errors import *  # noqa: F403
from .errors import __all__ as _error_names
from .manifest import Manifest
from .memory import MemoryPolicy
from .reader import DatasetReader
from .schema import Field, Schema
from .writer import ShardWriter

__version__ = "0.1.0"

# name -> module that defines it; imported lazily so `import shardio` stays torch-free.
_LAZY = {
    "ShardedDataset": "shardio.dataset",
    "Loader": "shardio.loader",
    "Prefetcher": "shardio.prefetch",
    "ShardSampler": "shardio.sampling",
    "Mix": "shardio.mix",
    "MixSampler": "shardio.sampling",
    "verify": "shardio.convert",
    "trace": "shardio.diagnose",
}
# name -> module that *is* the export: the package shardio.convert is callable as
# convert() (see its docstring), so the attribute is the same object either way.
_LAZY_MODULES = {"convert": "shardio.convert"}

if TYPE_CHECKING:
    from .convert import verify
    from .convert.converter import convert
    from .dataset import ShardedDataset
    from .diagnose import trace
    from .loader import Loader
    from .mix import Mix
    from .prefetch import Prefetcher
    from .sampling import MixSampler, ShardSampler

__all__ = [
    *_error_names,
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
