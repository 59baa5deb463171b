"""Deflate chunks bounded by their declared size before libhdf5 inflates them.

libhdf5's deflate filter grows its buffer for as long as a chunk's stream inflates, and
a chunk that inflates past its declared size comes back as fill values: a 100 KB
stream read as zeros after allocating 100 MB. Each deflate chunk is inflated once here,
into at most its declared size plus one byte, the first time a reader touches it; one
that would pass the declaration is a `ShardCorruptError`.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from shardio.core.errors import RemoteReadError, ShardCorruptError

__all__ = ["DeflateBound"]

_DEFLATE = 1  # H5Z_FILTER_DEFLATE


class DeflateBound:
    """Checks the deflate chunks of one dataset, each once per open handle."""

    def __init__(self, path: str, name: str, dataset: Any) -> None:
        self.path, self.name, self.dataset = path, name, dataset
        self.rows = int(dataset.chunks[0])
        self.chunk_nbytes = math.prod(int(c) for c in dataset.chunks) * dataset.dtype.itemsize
        self.trailing = (0,) * (len(dataset.chunks) - 1)
        self.checked: set[int] = set()

    @classmethod
    def of(cls, path: str, name: str, dataset: Any) -> DeflateBound | None:
        """A bound for ``dataset`` where its only size-changing filter is deflate."""
        if getattr(dataset, "chunks", None) is None or dataset.dtype.hasobject:
            return None
        plist = dataset.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        if _DEFLATE not in filters or any(f not in (_DEFLATE, 2) for f in filters):  # 2: shuffle
            return None
        return cls(path, name, dataset)

    def check(self, rows: np.ndarray) -> None:
        """Check the chunks holding ``rows`` (sorted) not checked yet."""
        for chunk in np.unique(rows // self.rows).tolist():
            if chunk in self.checked:
                continue
            try:
                mask, data = self.dataset.id.read_direct_chunk((chunk * self.rows, *self.trailing))
            except RemoteReadError:
                raise
            except (KeyError, RuntimeError, OSError, ValueError):  # unallocated: fill values
                self.checked.add(chunk)
                continue
            if not mask & 1:  # the deflate filter was applied to this chunk
                try:
                    inflated = zlib.decompressobj().decompress(data, self.chunk_nbytes + 1)
                except zlib.error:
                    inflated = b""  # damaged otherwise: libhdf5 says how
                if len(inflated) > self.chunk_nbytes:
                    raise ShardCorruptError(
                        f"{self.path}: chunk {chunk} of dataset {self.name!r} inflates to more "
                        f"than the {self.chunk_nbytes} bytes its chunks declare: it is corrupt"
                    )
            self.checked.add(chunk)
