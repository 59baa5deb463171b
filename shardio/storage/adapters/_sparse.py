"""CSR matrices stored as groups, read as dense rows (HDF5 and Zarr alike).

AnnData and scipy store a sparse matrix as a group holding `data`, `indices` and
`indptr` arrays and a `shape` attribute; a model's first layer wants each cell's full
row. Anything that slices like an array (h5py datasets, Zarr arrays) serves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SPARSE_ENCODINGS", "SparseRows"]

#: The `encoding-type` attributes of sparse matrices (CSC is left out: by column).
SPARSE_ENCODINGS = ("csr_matrix", "csc_matrix")


class SparseRows:
    """A CSR matrix stored as a group (``data``, ``indices``, ``indptr``, as AnnData and
    scipy write it) read as dense rows: ``rows[sel]`` for a slice or sorted indices."""

    chunks = None
    ndim = 2

    def __init__(self, group: Any) -> None:
        self.data = group["data"]
        self.indices = group["indices"]
        self.indptr = group["indptr"]
        shape = group.attrs.get("shape", group.attrs.get("h5sparse_shape"))  # anndata < 0.8
        if shape is None:
            raise KeyError(f"{getattr(group, 'name', group)} has no shape attribute")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(self.data.dtype)
        self.name = str(getattr(group, "name", "") or getattr(group, "path", ""))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, selection: slice | np.ndarray) -> np.ndarray:
        rows = np.arange(self.shape[0])[selection]
        out = np.zeros((len(rows), self.shape[1]), dtype=self.dtype)
        if len(rows) == 0:
            return out
        first, last = int(rows.min()), int(rows.max())
        bounds = self.indptr[first : last + 2].astype(np.int64)
        low, high = int(bounds[0]), int(bounds[-1])
        values = self.data[low:high]
        columns = self.indices[low:high]
        for row, index in enumerate(rows.tolist()):
            start, stop = bounds[index - first] - low, bounds[index - first + 1] - low
            out[row, columns[start:stop]] = values[start:stop]
        return out
