"""Dates and durations (`datetime64`, `timedelta64`) in backends that have no such type.

mmap and LMDB shards hold a field's bytes and Zarr has the numpy types, so those store
them as they are; HDF5 has no such type, so its shards store the int64 count of units
and the schema (in the shard and the manifest) keeps the unit: a read gives back the
same `datetime64[unit]` values, NaT included. torch has no time type: a batch carries
them as numpy arrays (select them out with `fields=` or `returns=`, or view them as
int64).
"""

from __future__ import annotations

import numpy as np

__all__ = ["TIME_KINDS", "as_stored", "stored_dtype"]

#: numpy dtype kinds of dates (M) and durations (m).
TIME_KINDS = "mM"


def stored_dtype(dtype: np.dtype) -> np.dtype:
    """int64 (in the same byte order) for a date or duration dtype, else `dtype`."""
    if dtype.kind in TIME_KINDS:
        return np.dtype(np.int64).newbyteorder(dtype.byteorder)
    return dtype


def as_stored(values: np.ndarray) -> np.ndarray:
    """`values` as a backend without time types stores them (a view, never a copy)."""
    if values.dtype.kind in TIME_KINDS:
        return values.view(stored_dtype(values.dtype))
    return values
