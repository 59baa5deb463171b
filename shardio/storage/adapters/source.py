"""Conversion sources: a dataset as a schema, a length and row ranges.

Every array a source hands out is in native byte order, so a converted dataset feeds
torch without a byte swap on every read. A backend whose files hold more than its
reader shows (HDF5 files written by other tools) provides a source of its own (see
`source`); every other input is read
through its reader by `ReaderSource`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import xxhash

from shardio.core.schema import Field, Schema

from .base import Columns
from .registry import is_remote

__all__ = ["Skipped", "Source", "SourceClass", "native_dtype", "path_signature", "to_field"]

_SIGNATURE_MAX_FILES = 100_000


@dataclass(frozen=True)
class Skipped:
    """An object of the file left out of the fields, and why."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name!r}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


def native_dtype(dtype: np.dtype) -> np.dtype:
    """``dtype`` in native byte order, without h5py's metadata (enum, string info)."""
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return np.dtype((native_dtype(base), shape))
    if dtype.fields is not None:
        assert dtype.names is not None
        return np.dtype(
            {
                "names": list(dtype.names),
                "formats": [native_dtype(dtype.fields[n][0]) for n in dtype.names],
                "offsets": [int(dtype.fields[n][1]) for n in dtype.names],
                "itemsize": dtype.itemsize,
            }
        )
    plain = np.dtype(dtype.str)
    return plain if plain.isnative else plain.newbyteorder("=")


def path_signature(path: str) -> str | None:
    """A digest of the sizes and modification times of the files under ``path``.

    Resuming compares it to tell a source changed since the interrupted run.
    ``None`` for remote URLs, whose listing would cost a round trip per object.
    """
    if is_remote(path):
        return None
    local = path.removeprefix("file://")
    digest = xxhash.xxh3_64()
    if os.path.isfile(local):
        files = [local]
    else:
        files = []
        for directory, _, names in os.walk(local):
            files.extend(os.path.join(directory, n) for n in names)
            if len(files) > _SIGNATURE_MAX_FILES:
                break
        files.sort()
    for name in files:
        try:
            stat = os.stat(name)
        except OSError:
            continue
        relative = os.path.relpath(name, local) if name != local else ""
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class Source(ABC):
    """Rows of a dataset as columns following `schema`, in native byte order, for
    conversion; picklable without handles."""

    #: Backend options the source takes besides ``fields``, ``split_compound`` and
    #: ``skip_unsupported``.
    options: ClassVar[frozenset[str]] = frozenset()

    path: str
    schema: Schema
    num_samples: int
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()
    split_compound: bool = False
    #: The HDF5 group whose datasets are the fields (named relative to it), if any.
    group: str | None = None

    @abstractmethod
    def read_range(self, start: int, stop: int) -> Columns:
        """Samples ``start`` to ``stop`` (exclusive) as validated columns."""

    @abstractmethod
    def read_many(self, indices: np.ndarray) -> Columns:
        """Samples at sorted, distinct ``indices`` as validated columns."""

    @property
    def chunk_rows(self) -> int | None:
        """Rows per storage chunk of the largest field, to align reads with; None if none."""
        return None

    def signature(self) -> str | None:
        return path_signature(self.path)

    @abstractmethod
    def close(self) -> None:
        """Release this process's handles; reading reopens them."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_field(value: Any, fld: Field, count: int) -> Any:
    """``count`` values of ``fld`` as a validated column of native byte order."""
    if fld.kind == "bytes":
        return [
            v if isinstance(v, bytes) else (v.encode() if isinstance(v, str) else bytes(v))
            for v in value
        ]
    if fld.kind == "ragged":
        return [np.ascontiguousarray(v, dtype=fld.dtype).reshape(-1) for v in value]
    array = np.ascontiguousarray(value, dtype=fld.dtype)
    return array.reshape(count, *fld.shape)


class SourceClass(Protocol):
    """A backend's own `Source` class, as the registry hands it out."""

    options: frozenset[str]

    def __call__(
        self,
        path: str,
        *,
        fields: Sequence[str] | None,
        split_compound: bool,
        skip_unsupported: bool,
        **options: Any,
    ) -> Source: ...
