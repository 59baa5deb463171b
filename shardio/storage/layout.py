"""The sharded dataset directory: what its entries are called and which files a shard is.

A dataset directory holds ``manifest.json`` and shards named ``shard-NNNNN<suffix>``
(the suffix is the backend's, see `Backend`). A
shard is written as ``.shard-NNNNN<suffix>.partial`` and renamed when complete;
hidden ``.shardio-*`` files hold bookkeeping (conversion progress, the output lock).
Reader, writer, registry and converter all name entries through this module.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Collection
from dataclasses import dataclass

from shardio.core.errors import OutputExistsError, OutputWriteError
from shardio.core.safeopen import check_regular, refuse_special

from .outputlock import lock_output

__all__ = [
    "MANIFEST_NAME",
    "foreign_entries",
    "holds_shards",
    "is_own_entry",
    "partial_name",
    "prepare_output",
    "remove_path",
    "scan_shard",
    "ShardFiles",
    "shard_files_as_written",
    "shard_name",
    "shard_number",
]

MANIFEST_NAME = "manifest.json"
_SHARD_PREFIX = "shard-"
_SHARD_NAME = re.compile(r"^shard-(\d+)\.[a-z0-9]+$")


def shard_name(number: int, suffix: str) -> str:
    """The entry of shard ``number`` of a backend whose shards end in ``suffix``."""
    return f"{_SHARD_PREFIX}{number:05d}{suffix}"


def shard_number(name: str) -> int | None:
    """The number of a shard entry named by `shard_name`; None for other names."""
    named = _SHARD_NAME.match(name)
    return None if named is None else int(named.group(1))


def partial_name(name: str) -> str:
    """The entry a shard is written under until it is complete."""
    return f".{name}.partial"


def is_own_entry(name: str) -> bool:
    """True for what shardio writes into a dataset directory: the manifest (and its
    temporary), shards, partial shards and hidden ``.shardio-*`` bookkeeping files."""
    return (
        name == MANIFEST_NAME
        or name.startswith(f"{MANIFEST_NAME}.tmp-")
        or name.lstrip(".").startswith(_SHARD_PREFIX)
        or name.startswith(".shardio-")
    )


def holds_shards(directory: str) -> bool:
    """True when ``directory`` holds shards or partial shards (with or without a manifest)."""
    return any(e.lstrip(".").startswith(_SHARD_PREFIX) for e in os.listdir(directory))


def foreign_entries(path: str) -> list[str]:
    """Entries of directory ``path`` that shardio did not write, sorted."""
    return sorted(e for e in os.listdir(path) if not is_own_entry(e))


@dataclass(frozen=True)
class ShardFiles:
    """The files of one shard, their sizes, and the symbolic links met listing them."""

    paths: list[str]  # sorted
    sizes: list[int]
    links: list[str]

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)

    def without(self, names: Collection[str]) -> ShardFiles:
        """These files less those named ``names`` (the links stay)."""
        keep = [i for i, p in enumerate(self.paths) if os.path.basename(p) not in names]
        return ShardFiles([self.paths[i] for i in keep], [self.sizes[i] for i in keep], self.links)


def scan_shard(path: str) -> ShardFiles:
    """Every file of a shard (a file, or a directory listed recursively: links to
    files count as files, links to directories are not followed) with its size, in one
    pass; errors listing a directory are raised, not skipped (a shard would otherwise
    look empty when the real problem is, say, EMFILE)."""
    links = [path] if os.path.islink(path) else []
    if not os.path.isdir(path):
        return ShardFiles([path], [check_regular(path).st_size], links)
    found: list[tuple[str, int]] = []
    pending = [path]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                link = entry.is_symlink()
                if link:
                    links.append(entry.path)
                if entry.is_dir():  # follows links, as os.walk lists them
                    if not link:
                        pending.append(entry.path)
                else:
                    status = entry.stat()
                    refuse_special(entry.path, status.st_mode)  # a FIFO would block reads
                    found.append((entry.path, status.st_size))
    found.sort()
    return ShardFiles([p for p, _ in found], [n for _, n in found], links)


def shard_files_as_written(path: str, nbytes: int, transient: Collection[str]) -> ShardFiles:
    """The files of a shard that make up the ``nbytes`` recorded for it: without the
    ``transient`` files a library added since, or with them where they were there
    when the shard was recorded."""
    every = scan_shard(path)
    files = every.without(transient)
    if transient and files.nbytes != nbytes and every.nbytes == nbytes:
        return every
    return files


def remove_path(path: str) -> None:
    """Remove a file, link or directory tree; nothing when ``path`` does not exist."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def prepare_output(path: str, overwrite: bool) -> None:
    """Create the output directory; refuse an existing one unless ``overwrite``."""
    if os.path.lexists(path):
        if not overwrite:
            raise OutputExistsError(
                f"output {path} already exists; pass overwrite=True to replace it"
            )
        if not os.path.isdir(path):
            raise OutputExistsError(f"output {path} exists and is not a directory; remove it first")
        foreign = foreign_entries(path)
        if foreign:
            raise OutputExistsError(
                f"refusing to overwrite {path}: it holds {foreign[:3]}, which shardio did not write"
            )
        lock = lock_output(path, "overwrite")  # a conversion in progress keeps its output
        try:
            shutil.rmtree(path)
        except OSError as exc:
            raise _unwritable(path, exc) from exc
        finally:
            os.close(lock)
    try:
        os.makedirs(path)
    except OSError as exc:
        raise _unwritable(path, exc) from exc


def _unwritable(path: str, exc: OSError) -> OutputWriteError:
    """The error for a dataset directory that cannot be written."""
    reason = exc.strerror or str(exc)
    return OutputWriteError(f"cannot write the dataset directory {path}: {reason}")
