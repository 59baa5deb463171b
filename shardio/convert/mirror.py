"""A remote dataset copied to a local directory, for `verify` to check as a local one.

The shards are copied as they are on the server (only their sizes are checked here):
`verify` then reports digests that differ, samples that do not decode, and so on.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from shardio.core.errors import ShardioError
from shardio.storage.cache.fetch import download_shard
from shardio.storage.manifest import Manifest
from shardio.storage.remote import filesystem

__all__ = ["mirror_dataset"]


def mirror_dataset(
    url: str, storage_options: dict[str, Any] | None, directory: str
) -> list[tuple[str, str]]:
    """Copy the dataset at ``url`` into ``directory``; returns (shard, problem) for
    each shard that could not be copied (missing, or of another size than recorded)."""
    url = url.rstrip("/")
    manifest = Manifest.load_remote(url, storage_options)
    problems = []
    for info in manifest.shards:
        fs, path = filesystem(f"{url}/{info.path}", storage_options)
        unchecked = dataclasses.replace(info, checksum=None)  # verify checks it, and says so
        try:
            download_shard(
                fs, path, f"{url}/{info.path}", unchecked, os.path.join(directory, info.path),
                frozenset(),
            )  # fmt: skip
        except ShardioError as exc:
            problems.append((info.path, str(exc)))
    manifest.save(directory)
    return problems
