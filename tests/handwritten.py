"""A hand-written h5py Dataset as tutorials write it (importable by spawned workers)."""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np
import torch.utils.data


def write_images(path: str, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """`images` (uint8, n x 3 x 4 x 4) and `labels` (int64), written by h5py."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 255, size=(n, 3, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["labels"] = labels
    return images, labels


class H5Tuples(torch.utils.data.Dataset[Any]):
    """Opens the file lazily in each worker and returns `(image, label)`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file: h5py.File | None = None
        with h5py.File(path, "r") as f:
            self.length = len(f["labels"])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.file is None:
            self.file = h5py.File(self.path, "r")
        return self.file["images"][i], self.file["labels"][i]


def tuple_loop(loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial loop body: unpack, cast, accumulate; returns all images and labels seen."""
    seen_images, seen_labels = [], []
    for images, labels in loader:
        seen_images.append(images.float())
        seen_labels.append(labels.long())
    return torch.cat(seen_images), torch.cat(seen_labels)
