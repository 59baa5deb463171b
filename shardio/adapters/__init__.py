"""Storage adapters: one contract (:mod:`.base`), one registry, one module per backend.

Backend modules (``_lmdb``, ``_hdf5``, ``_zarr``, ``_mmap``) are private and loaded by the
registry on first use, so a missing optional package gives an install hint.
"""

from .base import Columns, ShardFileWriter, ShardReader
from .registry import FORMATS, detect_format, get_backend, reader_class, writer_class

__all__ = [
    "FORMATS",
    "Columns",
    "ShardFileWriter",
    "ShardReader",
    "detect_format",
    "get_backend",
    "reader_class",
    "writer_class",
]
