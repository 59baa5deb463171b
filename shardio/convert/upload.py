"""Conversion into object storage: a local staging directory, uploaded shard by shard
with the manifest last, so a reader never finds a manifest naming shards not there yet.

Resumable: a shard whose files are all on the server with the sizes the manifest
records is not uploaded again, and the staging directory is a conversion output that
``resume=True`` continues.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from typing import Any

from shardio.core.errors import OutputExistsError, OutputWriteError
from shardio.storage.cache.fetch import _with_retries, remote_listing
from shardio.storage.layout import MANIFEST_NAME, scan_shard
from shardio.storage.manifest import Manifest
from shardio.storage.remote import filesystem, remote_errors

__all__ = ["UploadResult", "staging_dir", "upload_dataset"]


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


def upload_dataset(
    local: str, url: str, storage_options: dict[str, Any] | None, overwrite: bool, resume: bool
) -> UploadResult:
    """Upload the dataset directory ``local`` to ``url``: each shard, then the manifest."""
    url = url.rstrip("/")
    manifest = Manifest.load(local)
    fs, root = filesystem(url, storage_options)
    where = f"{url}/{MANIFEST_NAME}"
    with remote_errors(where):
        exists = fs.exists(f"{root}/{MANIFEST_NAME}")
    if exists and not (overwrite or resume):
        raise OutputExistsError(
            f"{url} already holds a dataset ({MANIFEST_NAME}); pass overwrite=True to "
            "replace it, or resume=True to finish an upload"
        )
    if exists:  # readers must not open a manifest naming shards being replaced
        with remote_errors(where):
            fs.rm_file(f"{root}/{MANIFEST_NAME}")
    uploaded = present = nbytes = 0
    for shard in manifest.shards:
        path = os.path.join(local, shard.path)
        files = scan_shard(path)
        single = not os.path.isdir(path)
        wanted = {
            ("" if single else os.path.relpath(p, path)): size
            for p, size in zip(files.paths, files.sizes, strict=True)
        }
        remote = f"{root}/{shard.path}"
        shard_url = f"{url}/{shard.path}"
        try:
            listed = _with_retries(shard_url, partial(remote_listing, fs, remote, shard_url))
        except FileNotFoundError:
            listed = {}
        if listed == wanted:
            present += 1
            continue
        for relative, size in sorted(wanted.items()):
            source = path if single else os.path.join(path, relative)
            target = remote if single else f"{remote}/{relative}"
            _with_retries(f"{shard_url}/{relative}", _putter(fs, source, target))
            nbytes += size
        uploaded += 1
    _with_retries(where, _putter(fs, os.path.join(local, MANIFEST_NAME), f"{root}/{MANIFEST_NAME}"))
    return UploadResult(url, uploaded, present, nbytes)


def _putter(fs: Any, source: str, target: str) -> Any:
    def put() -> None:
        try:
            fs.put_file(source, target)
        except PermissionError as exc:
            raise OutputWriteError(f"uploading {source} to {target} was refused: {exc}") from exc

    return put
