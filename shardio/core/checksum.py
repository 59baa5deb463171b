"""Content hashes of shard files (xxHash): one XXH3-128 per shard, and an XXH3-64 per
block of each file, which readers with ``verify="first-read"`` check block by block."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Iterator

import xxhash

__all__ = ["ALGORITHM", "BLOCK_BYTES", "hash_files", "hash_shard"]

ALGORITHM = "xxh3_128"
#: Block size of the per-block digests: 2.7 MB of manifest per TB of data.
BLOCK_BYTES = 4 * 1024 * 1024


def _blocks(paths: Iterable[str], root: str) -> Iterator[tuple[str, bytes | None]]:
    """(relative path, block) for every block of every file, then (path, None)."""
    for path in sorted(paths):
        relative = os.path.relpath(path, root)
        with open(path, "rb") as handle:
            while block := handle.read(BLOCK_BYTES):
                yield relative, block
        yield relative, None


def hash_files(paths: Iterable[str], root: str) -> str:
    """One hash over the files' paths (relative to ``root``) and contents, in sorted order."""
    return _shard_digest(paths, root, with_blocks=False)[0]


def hash_shard(paths: Iterable[str], root: str) -> tuple[str, dict[str, str]]:
    """`hash_files`, and each file's block digests (base64 of big-endian
    XXH3-64s, one per `BLOCK_BYTES`) by relative path, in one read of the files."""
    return _shard_digest(paths, root, with_blocks=True)


def _shard_digest(paths: Iterable[str], root: str, with_blocks: bool) -> tuple[str, dict[str, str]]:
    digest = xxhash.xxh3_128()
    blocks: dict[str, bytearray] = {}
    current = None
    for relative, block in _blocks(paths, root):
        if relative != current:
            digest.update(relative.encode() + b"\0")
            current = relative
            blocks[relative] = bytearray()
        if block is None:
            digest.update(b"\0")
            continue
        digest.update(block)
        if with_blocks:
            blocks[relative] += xxhash.xxh3_64_digest(block)
    encoded = {k: base64.b64encode(v).decode("ascii") for k, v in blocks.items()}
    return f"{ALGORITHM}:{digest.hexdigest()}", encoded if with_blocks else {}
