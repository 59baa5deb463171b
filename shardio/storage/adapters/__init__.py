"""Storage adapters: one contract (`.base`), one registry, one module per backend.

Backend modules (``_lmdb``, ``_hdf5``, ``_zarr``, ``_mmap``) are private and loaded by the
registry on first use, so a missing optional package gives an install hint.
"""

from .base import Columns, ShardFileWriter, ShardReader
from .registry import (
    Backend,
    detect_format,
    formats,
    get_backend,
    reader_class,
    register_backend,
    unregister_backend,
    writer_class,
)

__all__ = [
    "Backend",
    "Columns",
    "ShardFileWriter",
    "ShardReader",
    "detect_format",
    "formats",
    "get_backend",
    "reader_class",
    "register_backend",
    "unregister_backend",
    "writer_class",
]
