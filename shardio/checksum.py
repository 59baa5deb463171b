"""Content hashes of shard files (xxHash, XXH3 128-bit)."""

from __future__ import annotations

import os
from collections.abc import Iterable

import xxhash

__all__ = ["ALGORITHM", "hash_files", "files_nbytes"]

ALGORITHM = "xxh3_128"
_BLOCK = 8 * 1024 * 1024


def hash_files(paths: Iterable[str], root: str) -> str:
    """One hash over the files' paths (relative to ``root``) and contents, in sorted order."""
    digest = xxhash.xxh3_128()
    for path in sorted(paths):
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
        digest.update(b"\0")
    return f"{ALGORITHM}:{digest.hexdigest()}"


def files_nbytes(paths: Iterable[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)
