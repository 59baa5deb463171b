"""``manifest.json``: the table of contents of a sharded dataset directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from shardio.core.checksum import BLOCK_BYTES
from shardio.core.config import MAX_EXPANSION
from shardio.core.errors import DatasetNotFoundError, ManifestError, SchemaError
from shardio.core.jsonio import read_json, write_json_atomic
from shardio.core.schema import Schema

from .adapters.registry import format_names, formats
from .layout import MANIFEST_NAME, shard_name, shard_number
from .remote import open_remote, remote_errors

__all__ = ["MANIFEST_VERSION", "ShardInfo", "Manifest", "write_json_atomic"]

MANIFEST_VERSION = 1
#: Counts and sizes above this are no real dataset's (and would overflow int64 sums).
_MAX_COUNT = 2**53


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT


def _shard_from_json(raw: Any, number: int, where: str) -> ShardInfo:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: shard {number} should be an object, but got {raw!r:.80}")
    path, count, nbytes = raw.get("path"), raw.get("num_samples"), raw.get("nbytes")
    checksum = raw.get("checksum")
    if (
        not isinstance(path, str)
        or not path
        or path != os.path.basename(path)
        or path
        in (
            ".",
            "..",
        )
    ):
        raise ManifestError(
            f"{where}: shard {number} 'path' should be a file name inside the dataset "
            f"directory, but got {path!r:.80}"
        )
    for key, value in (("num_samples", count), ("nbytes", nbytes)):
        if not _is_count(value):
            raise ManifestError(
                f"{where}: shard {number} ({path}) '{key}' should be an integer from 0 to "
                f"2**53, but got {value!r:.40}"
            )
    assert isinstance(count, int) and isinstance(nbytes, int)  # checked just above
    if checksum is not None and not isinstance(checksum, str):
        raise ManifestError(
            f"{where}: shard {number} ({path}) 'checksum' should be a string, "
            f"but got {checksum!r:.80}"
        )
    if count > max(nbytes, 1) * MAX_EXPANSION:
        raise ManifestError(
            f"{where}: shard {number} ({path}) claims {count} samples in {nbytes} bytes, "
            "more than its files can hold"
        )
    return ShardInfo(
        path, count, nbytes, checksum, _blocks_from_json(raw.get("blocks"), path, where)
    )


def _blocks_from_json(raw: Any, path: str, where: str) -> dict[str, str] | None:
    if raw is None:
        return None
    files = raw.get("files") if isinstance(raw, dict) else None
    if (
        not isinstance(raw, dict)
        or raw.get("block_bytes") != BLOCK_BYTES
        or not isinstance(files, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    ):
        raise ManifestError(
            f"{where}: shard {path} 'blocks' should map file names to block digests of "
            f"{BLOCK_BYTES} bytes, but got {raw!r:.80}"
        )
    return dict(files)


def _check_shard_order(shards: list[ShardInfo], where: str) -> None:
    """Shards appear once each, and shardio-named shards (``shard-NNNNN``) in the order
    of their numbers: a duplicated or reordered entry would silently repeat or move
    samples."""
    seen: set[str] = set()
    for number, shard in enumerate(shards):
        if shard.path in seen:
            raise ManifestError(f"{where}: shard {shard.path} is listed twice")
        seen.add(shard.path)
        named = shard_number(shard.path)
        if named is not None and named != number:
            raise ManifestError(
                f"{where}: entry {number} is {shard.path}, but shardio writes shard {number} "
                f"as {shard_name(number, '.*')}: the entries were reordered or edited"
            )


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its path relative to the dataset directory and what it must hold."""

    path: str
    num_samples: int
    nbytes: int
    checksum: str | None = None
    #: Per-block digests of each file by path inside the shard (see shardio.core.checksum).
    blocks: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "path": self.path,
            "num_samples": self.num_samples,
            "nbytes": self.nbytes,
            "checksum": self.checksum,
        }
        if self.blocks is not None:
            described["blocks"] = {"block_bytes": BLOCK_BYTES, "files": self.blocks}
        return described

    @classmethod
    def from_json(cls, raw: Any, number: int, where: str) -> ShardInfo:
        """Entry ``number`` of a manifest, checked: a damaged one raises ManifestError."""
        return _shard_from_json(raw, number, where)


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
        if fmt not in formats():
            raise ManifestError(
                f"{where}: 'format' should be one of {format_names()}, but got {fmt!r} "
                "(a backend of another package: import it, or register it with "
                "shardio.storage.adapters.register_backend, before opening the dataset)"
            )
        try:
            schema = Schema.from_json(data.get("schema"))
        except SchemaError as exc:
            raise ManifestError(f"{where}: bad 'schema': {exc}") from exc
        raw_shards = data.get("shards")
        if not isinstance(raw_shards, list):
            raise ManifestError(f"{where}: 'shards' should be a list")
        shards = [ShardInfo.from_json(raw, n, where) for n, raw in enumerate(raw_shards)]
        _check_shard_order(shards, where)
        declared = data.get("num_samples")
        metadata = data.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ManifestError(
                f"{where}: 'metadata' should be an object, but got {metadata!r:.80}"
            )
        manifest = cls(fmt, schema, tuple(shards), version, dict(metadata or {}))
        if declared is not None and (not _is_count(declared) or declared != manifest.num_samples):
            raise ManifestError(
                f"{where}: 'num_samples' is {declared!r:.40}, but the shards hold "
                f"{manifest.num_samples}"
            )
        return manifest

    @classmethod
    def load(cls, directory: str) -> Manifest:
        path = os.path.join(directory, MANIFEST_NAME)
        try:
            data = read_json(path)
        except (FileNotFoundError, NotADirectoryError):
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

    def check_directory(self, directory: str) -> None:
        """Raise when ``directory`` holds shards the manifest does not list (shards
        dropped from the manifest would silently vanish from the dataset)."""
        try:
            entries = os.listdir(directory)
        except OSError as exc:
            raise ManifestError(f"cannot list dataset directory {directory}: {exc}") from exc
        listed = {s.path for s in self.shards}
        unlisted = sorted(e for e in entries if shard_number(e) is not None and e not in listed)
        if unlisted:
            raise ManifestError(
                f"{os.path.join(directory, MANIFEST_NAME)} does not list shard(s) "
                f"{unlisted[:3]} found in {directory}: the manifest was edited or belongs to "
                "another write; write the dataset again or restore its manifest"
            )

    def save(self, directory: str) -> None:
        """Write atomically: readers see the old manifest or the new one, never a part."""
        write_json_atomic(os.path.join(directory, MANIFEST_NAME), self.to_json())
