"""Bounds on what a local Zarr store may make shardio read or allocate.

zarr-python reads a metadata file or a chunk whole and decompresses a chunk to
whatever size its bytes say. A chunk that decompresses past the size its array
declares is corrupt; so is metadata larger than any real `zarr.json`, and an array
declaring chunks larger than `MAX_CHUNK_BYTES`. `BoundedStore` checks each of these
before zarr allocates for it, so a bomb costs at most about twice its declared chunk
size (the check and zarr's own decode) per chunk being decoded.
"""

from __future__ import annotations

import math
import os
import zlib
from typing import Any

import numpy as np
import zarr.storage
from zarr.abc.store import RangeByteRequest

from shardio.core.errors import ShardCorruptError
from shardio.core.safeopen import MAX_CHUNK_BYTES, check_regular

__all__ = ["MAX_CHUNK_BYTES", "MAX_METADATA_BYTES", "BoundedStore", "chunk_nbytes"]

#: The largest metadata file (zarr.json, .zarray, .zattrs, .zgroup) read.
MAX_METADATA_BYTES = 64 * 1024 * 1024
_METADATA = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def chunk_nbytes(array: Any) -> int:
    """Bytes of one decoded chunk of ``array`` as its metadata declares it."""
    return math.prod(int(c) for c in array.chunks) * np.dtype(array.dtype).itemsize


def _codec(array: Any) -> str | None:
    """The one compressor's kind ("zstd", "gzip", "blosc", "none"), or None where the
    pipeline is something else (filters, sharding): no bound is checked there."""
    if array.filters or array.shards is not None or np.dtype(array.dtype).hasobject:
        return None  # variable-length values: no decoded size is declared
    compressors = array.compressors
    if not compressors:
        return "none"
    if len(compressors) > 1:
        return None
    name = type(compressors[0]).__name__
    return {"ZstdCodec": "zstd", "GzipCodec": "gzip", "BloscCodec": "blosc"}.get(name)


def _zstd_content_size(data: bytes) -> int | None:
    """The first frame's declared content size, or None when it declares none."""
    if len(data) < 6 or data[:4] != _ZSTD_MAGIC:
        return None
    descriptor = data[4]
    single = (descriptor >> 5) & 1
    field = (1 if single else 0, 2, 4, 8)[descriptor >> 6]
    if not field:
        return None
    start = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
    raw = data[start : start + field]
    if len(raw) < field:
        return None
    size = int.from_bytes(raw, "little")
    return size + 256 if field == 2 else size


def _decoded_past(data: np.ndarray, codec: str, limit: int) -> bool:
    """True when ``data`` (a chunk's bytes, as a uint8 view) decodes to more than
    ``limit`` bytes (never allocating much more than ``limit`` to tell). zstd and
    blosc declare the decoded size in their first bytes: only those are read."""
    if codec == "none":
        return len(data) > limit
    if codec == "blosc":
        return len(data) >= 8 and int.from_bytes(data[4:8].tobytes(), "little") > limit
    if codec == "gzip":
        try:
            return len(zlib.decompressobj(wbits=47).decompress(data.data, limit + 1)) > limit
        except zlib.error:
            return False  # damaged otherwise: zarr's decode says how
    declared = _zstd_content_size(data[:18].tobytes())
    if declared is not None:
        return declared > limit
    from numcodecs import Zstd

    try:
        Zstd().decode(data, out=np.empty(max(1, limit), np.uint8))
    except RuntimeError as exc:
        return "too small" in str(exc)
    except ValueError:
        return False
    return False


class BoundedStore(zarr.storage.WrapperStore[Any]):
    """A store whose metadata files and chunks are checked against their bounds before
    zarr reads or decodes them. A local file's size is read first; a remote object is
    fetched with a range one byte past its bound, so no object larger than its bound is
    ever held whole (`where` names it in errors: the store's root path or URL)."""

    def __init__(self, store: Any, where: str | None = None) -> None:
        super().__init__(store)
        self._chunks: dict[str, tuple[int, str]] = {}  # array path -> (bytes, codec)
        self._where = where  # None: a local store, whose files are looked at first

    @property
    def local(self) -> bool:
        return self._where is None

    @property
    def root(self) -> Any:  # shardio reads uncompressed chunk files itself from here
        return self._store.root

    def bound(self, array: Any) -> None:
        """Check chunks of ``array`` against its declared chunk size from now on."""
        codec = _codec(array)
        if codec is not None:
            self._chunks[array.path] = (chunk_nbytes(array), codec)

    def _chunk_of(self, key: str) -> tuple[int, str] | None:
        parts = key.split("/")
        for depth in range(len(parts) - 1, -1, -1):
            found = self._chunks.get("/".join(parts[:depth]))
            if found is not None:
                return found
        return None

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        name = key.rsplit("/", 1)[-1]
        bound = None if name in _METADATA or byte_range is not None else self._chunk_of(key)
        if name not in _METADATA and bound is None:
            return await self._store.get(key, prototype, byte_range)
        limit = MAX_METADATA_BYTES if bound is None else bound[0] + bound[0] // 8 + (64 << 10)
        what = "metadata file" if bound is None else "chunk of this array"
        if self._where is None:
            path = os.path.join(str(self.root), key)
            try:
                size = check_regular(path).st_size
            except (FileNotFoundError, NotADirectoryError):
                size = 0  # the store answers None
            if size > limit:
                raise ShardCorruptError(
                    f"{path} holds {size} bytes, more than any {what} can ({limit}): corrupt"
                )
            buffer = await self._store.get(key, prototype, byte_range)
        else:
            path = f"{self._where.rstrip('/')}/{key}"
            buffer = await self._store.get(key, prototype, RangeByteRequest(0, limit + 1))
            if buffer is not None and len(buffer) > limit:
                raise ShardCorruptError(
                    f"{path} holds more than the {limit} bytes any {what} can: corrupt"
                )
        if buffer is not None and bound is not None:
            past = (
                len(buffer) > bound[0]
                if bound[1] == "none"
                else _decoded_past(buffer.as_numpy_array().view(np.uint8), bound[1], bound[0])
            )
            if past:
                raise ShardCorruptError(
                    f"{path} decodes to more than the {bound[0]} bytes its array declares "
                    f"per chunk ({bound[1]}): the chunk is corrupt"
                )
        return buffer
