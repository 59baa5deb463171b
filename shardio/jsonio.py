"""JSON files shardio owns (manifests, shard metadata): clear errors, atomic writes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import IO, Any

from .errors import ManifestError

__all__ = ["read_json", "write_json_atomic"]


def read_json(path: str, open_file: Callable[[str], IO[Any]] | None = None) -> Any:
    """The parsed file; ``FileNotFoundError`` passes through for the caller to word."""
    try:
        with (open_file or _open_binary)(path) as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc


def _open_binary(path: str) -> IO[bytes]:
    return open(path, "rb")


def write_json_atomic(path: str, data: Any) -> None:
    """Readers see the old file or the new one, never a part of it."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
