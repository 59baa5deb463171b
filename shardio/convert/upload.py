"""Conversion into object storage: each shard uploaded as soon as it is complete, the
manifest last, so a reader never finds a manifest naming shards not there yet.

The local staging directory holds only the shards being written or uploaded: an
uploaded shard is removed from it. Resumable: a shard recorded as complete counts as
done when its files are on the server with the bytes the record says (or, still in
staging, when they verify there; those are uploaded at the end).
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from typing import Any

from shardio.core.errors import OutputExistsError, OutputWriteError
from shardio.storage.cache.fetch import _with_retries, remote_listing
from shardio.storage.cache.store import remove_tree
from shardio.storage.layout import MANIFEST_NAME, scan_shard
from shardio.storage.manifest import Manifest, ShardInfo
from shardio.storage.remote import filesystem, remote_errors

__all__ = ["UPLOADER", "ShardUploader", "UploadResult", "staging_dir"]

#: The uploader of the conversion running in this context (set by `convert` for a
#: URL, read where its local conversion completes or resumes a shard).
UPLOADER: contextvars.ContextVar[ShardUploader | None] = contextvars.ContextVar(
    "shardio_uploader", default=None
)


@dataclass(frozen=True)
class UploadResult:
    url: str
    shards_uploaded: int
    shards_present: int
    bytes_uploaded: int


def staging_dir(url: str, staging: str | os.PathLike[str] | None) -> str:
    """Where a conversion to ``url`` is written before it is uploaded: ``staging``, or
    a directory under the system's temporary directory named after the URL (the same
    each run, so ``resume=True`` finds it)."""
    if staging is not None:
        return os.fspath(staging)
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"shardio-upload-{digest}")


class ShardUploader:
    """Uploads the shards of a conversion staged in ``local`` to ``url``, one by one."""

    def __init__(
        self,
        local: str,
        url: str,
        storage_options: dict[str, Any] | None,
        overwrite: bool,
        resume: bool,
    ) -> None:
        self.local = local
        self.url = url.rstrip("/")
        self.fs, self.root = filesystem(self.url, storage_options)
        self.uploaded = self.present = self.nbytes = 0
        where = f"{self.url}/{MANIFEST_NAME}"
        with remote_errors(where):
            exists = self.fs.exists(f"{self.root}/{MANIFEST_NAME}")
        if exists and not (overwrite or resume):
            raise OutputExistsError(
                f"{self.url} already holds a dataset ({MANIFEST_NAME}); pass overwrite=True "
                "(--overwrite) to replace it, or resume=True (--resume) to finish an upload"
            )
        if exists:  # readers must not open a manifest naming shards being replaced
            with remote_errors(where):
                self.fs.rm_file(f"{self.root}/{MANIFEST_NAME}")

    def _listing(self, info: ShardInfo) -> dict[str, int]:
        shard_url = f"{self.url}/{info.path}"
        remote = f"{self.root}/{info.path}"
        try:
            return dict(
                _with_retries(shard_url, partial(remote_listing, self.fs, remote, shard_url))
            )
        except FileNotFoundError:
            return {}

    def on_server(self, info: ShardInfo) -> bool:
        """True when shard ``info`` is on the server with the bytes recorded."""
        listed = self._listing(info)
        return bool(listed) and sum(listed.values()) == info.nbytes

    def shard_done(self, info: ShardInfo) -> None:
        """Upload the complete shard ``info`` from staging, then remove it there."""
        path = os.path.join(self.local, info.path)
        files = scan_shard(path)
        single = not os.path.isdir(path)
        wanted = {
            ("" if single else os.path.relpath(p, path)): size
            for p, size in zip(files.paths, files.sizes, strict=True)
        }
        if self._listing(info) == wanted:
            self.present += 1
        else:
            remote = f"{self.root}/{info.path}"
            for relative, size in sorted(wanted.items()):
                source = path if single else os.path.join(path, relative)
                target = remote if single else f"{remote}/{relative}"
                where = f"{self.url}/{info.path}" + (f"/{relative}" if relative else "")
                _with_retries(where, _putter(self.fs, source, target))
                self.nbytes += size
            self.uploaded += 1
        remove_tree(path)

    def finish(self, manifest: Manifest) -> UploadResult:
        """Upload the shards still staged (kept by a resume), then the manifest."""
        for info in manifest.shards:
            if os.path.lexists(os.path.join(self.local, info.path)):
                self.shard_done(info)
        where = f"{self.url}/{MANIFEST_NAME}"
        source = os.path.join(self.local, MANIFEST_NAME)
        _with_retries(where, _putter(self.fs, source, f"{self.root}/{MANIFEST_NAME}"))
        return UploadResult(self.url, self.uploaded, self.present, self.nbytes)


def _putter(fs: Any, source: str, target: str) -> Any:
    def put() -> None:
        try:
            fs.put_file(source, target)
        except PermissionError as exc:
            raise OutputWriteError(f"uploading {source} to {target} was refused: {exc}") from exc

    return put
