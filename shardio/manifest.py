"""``manifest.json``: the table of contents of a sharded dataset directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .adapters.registry import FORMATS, MANIFEST_NAME
from .errors import DatasetNotFoundError, ManifestError, SchemaError
from .jsonio import read_json, write_json_atomic
from .remote import open_remote, remote_errors
from .schema import Schema

__all__ = ["MANIFEST_VERSION", "ShardInfo", "Manifest", "write_json_atomic"]

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its path relative to the dataset directory and what it must hold."""

    path: str
    num_samples: int
    nbytes: int
    checksum: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "num_samples": self.num_samples,
            "nbytes": self.nbytes,
            "checksum": self.checksum,
        }


@dataclass(frozen=True)
class Manifest:
    format: str
    schema: Schema
    shards: tuple[ShardInfo, ...]
    version: int = MANIFEST_VERSION
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "shardio_manifest": self.version,
            "format": self.format,
            "num_samples": self.num_samples,
            "schema": self.schema.to_json(),
            "shards": [s.to_json() for s in self.shards],
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST_NAME) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("shardio_manifest")
        if version != MANIFEST_VERSION:
            raise ManifestError(
                f"{where}: 'shardio_manifest' should be {MANIFEST_VERSION}, but got {version!r} "
                "(not a shardio manifest, or written by a newer shardio)"
            )
        fmt = data.get("format")
        if fmt not in FORMATS:
            raise ManifestError(f"{where}: 'format' should be one of {FORMATS}, but got {fmt!r}")
        try:
            schema = Schema.from_json(data.get("schema"))
        except SchemaError as exc:
            raise ManifestError(f"{where}: bad 'schema': {exc}") from exc
        raw_shards = data.get("shards")
        if not isinstance(raw_shards, list):
            raise ManifestError(f"{where}: 'shards' should be a list")
        shards = []
        for number, raw in enumerate(raw_shards):
            try:
                shard = ShardInfo(
                    path=str(raw["path"]),
                    num_samples=int(raw["num_samples"]),
                    nbytes=int(raw["nbytes"]),
                    checksum=raw.get("checksum"),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ManifestError(
                    f"{where}: shard {number} is malformed ({exc!r}): {raw!r:.200}"
                ) from None
            if (
                shard.num_samples < 0
                or shard.nbytes < 0
                or os.path.isabs(shard.path)
                or ".." in shard.path.split("/")
            ):
                raise ManifestError(f"{where}: shard {number} has an invalid entry: {raw!r:.200}")
            shards.append(shard)
        declared = data.get("num_samples")
        manifest = cls(fmt, schema, tuple(shards), version, dict(data.get("metadata") or {}))
        if declared is not None and declared != manifest.num_samples:
            raise ManifestError(
                f"{where}: 'num_samples' is {declared}, but the shards hold {manifest.num_samples}"
            )
        return manifest

    @classmethod
    def load(cls, directory: str) -> Manifest:
        path = os.path.join(directory, MANIFEST_NAME)
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"{directory} is not a shardio dataset: {MANIFEST_NAME} is missing"
            ) from None
        return cls.from_json(data, where=path)

    @classmethod
    def load_remote(cls, url: str, storage_options: dict[str, Any] | None = None) -> Manifest:
        where = f"{url.rstrip('/')}/{MANIFEST_NAME}"
        try:
            with remote_errors(where):
                data = read_json(where, lambda p: open_remote(p, storage_options))
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"{url} is not a shardio dataset: {MANIFEST_NAME} is missing"
            ) from None
        return cls.from_json(data, where=where)

    def save(self, directory: str) -> None:
        """Write atomically: readers see the old manifest or the new one, never a part."""
        write_json_atomic(os.path.join(directory, MANIFEST_NAME), self.to_json())
