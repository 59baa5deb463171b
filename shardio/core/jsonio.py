"""JSON files shardio owns (manifests, shard metadata): clear errors, atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import IO, Any

from .errors import ManifestError
from .safeopen import open_regular

__all__ = ["read_json", "write_json_atomic"]


#: Metadata files larger than this are not shardio's (a manifest of a million shards
#: is about 200 MB): refused before they are read into memory.
MAX_JSON_BYTES = 512 * 1024 * 1024


def read_json(path: str, open_file: Callable[[str], IO[Any]] | None = None) -> Any:
    """The parsed file; ``FileNotFoundError`` passes through for the caller to word."""
    try:
        with (open_file or _open_binary)(path) as handle:
            text = _read_at_most(handle, MAX_JSON_BYTES + 1)
    except IsADirectoryError:
        raise ManifestError(f"{path} should be a JSON file, but it is a directory") from None
    except NotADirectoryError:
        raise FileNotFoundError(path) from None
    if len(text) > MAX_JSON_BYTES:
        raise ManifestError(f"{path} is larger than {MAX_JSON_BYTES} bytes: not shardio metadata")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc


def _read_at_most(handle: IO[Any], limit: int) -> bytes:
    """Up to ``limit`` bytes, read in pieces (``read(limit)`` would allocate ``limit``)."""
    pieces, total = [], 0
    while total < limit and (piece := handle.read(min(1 << 20, limit - total))):
        pieces.append(piece)
        total += len(piece)
    return b"".join(pieces)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number shardio writes")


def _open_binary(path: str) -> IO[bytes]:
    handle = open_regular(path)  # a FIFO or a device is refused before it is read
    size = os.fstat(handle.fileno()).st_size
    if size > MAX_JSON_BYTES:
        handle.close()
        raise ManifestError(
            f"{path} holds {size} bytes, more than {MAX_JSON_BYTES}: not shardio metadata"
        )
    return handle


def write_json_atomic(path: str, data: Any) -> None:
    """Readers see the old file or the new one, never a part of it."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk leaves no half-written file
            os.remove(temporary)
        raise
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
