"""Which adapter reads a path: URL scheme, then suffix, then a marker inside a directory.

The registry is open: `register_backend` adds a backend (docs/backends.md shows
one). shardio's own backends are named by dotted path and imported on first use, so a
missing optional package gives "install X to read Y" instead of an ImportError from
deep inside.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardio.core.errors import (
    BackendNotInstalledError,
    DatasetNotFoundError,
    InvalidOptionError,
    UnknownFormatError,
    UnsupportedFeatureError,
)

from ..layout import MANIFEST_NAME, holds_shards
from ..remote import filesystem, is_remote, remote_errors

if TYPE_CHECKING:
    from .base import ShardFileWriter, ShardReader
    from .source import SourceClass

__all__ = [
    "SHARDED",
    "Backend",
    "detect_format",
    "format_names",
    "formats",
    "get_backend",
    "is_remote",
    "reader_class",
    "register_backend",
    "signature_format",
    "source_class",
    "unregister_backend",
    "writer_class",
]

#: The format name of a sharded dataset directory (a manifest plus shards).
SHARDED = "shardio"


@dataclass(frozen=True, kw_only=True)
class Backend:
    """A storage backend: its format name, how its files are recognized, and its classes.

    The reader and writer classes declare everything else (options, budget knobs,
    writer defaults). They are given as classes, or as dotted paths imported on first
    use, so a missing optional package gives an install hint instead of an
    ImportError at ``import shardio``. DataLoader workers started with ``spawn``
    unpickle a dataset's reader class by reference: define it in an importable module.
    """

    #: The format name in manifests, ``format=`` options and messages.
    name: str
    #: Path suffixes that identify the format; the first names the shards it writes.
    suffixes: tuple[str, ...]
    #: The `ShardReader` subclass, or its dotted path.
    reader: str | type[ShardReader[Any]]
    #: The `ShardFileWriter` subclass, or its dotted
    #: path; None for a backend shardio reads but does not write.
    writer: str | type[ShardFileWriter] | None = None
    #: The pip package providing the backend's library, named in install hints.
    package: str | None = None
    #: Files whose presence identifies a directory of this backend.
    markers: tuple[str, ...] = ()
    #: Other names accepted for the format (``raw`` for ``mmap``).
    aliases: tuple[str, ...] = ()
    #: Bytes that identify a file of this format whatever its name, and the offsets
    #: they may start at.
    signature: bytes = b""
    signature_offsets: tuple[int, ...] = (0,)
    #: A conversion `Source` for files of this format,
    #: or its dotted path; None: conversion reads them through the reader.
    source: str | SourceClass | None = None

    @property
    def shard_suffix(self) -> str:
        """The suffix of the shards this backend writes (``shard-00000.h5``)."""
        return self.suffixes[0]

    @property
    def names(self) -> tuple[str, ...]:
        """The format name and its aliases, as looked up (lower case)."""
        return (self.name.lower(), *(a.lower() for a in self.aliases))


_BACKENDS: dict[str, Backend] = {}
_ALIASES: dict[str, str] = {}
_LOCK = threading.Lock()


def register_backend(backend: Backend, *, replace: bool = False) -> None:
    """Make ``backend`` readable (and writable) by shardio under ``backend.name``.

    A name or alias another backend holds is refused; so is the backend's own name
    unless ``replace=True``."""
    if not isinstance(backend, Backend):
        raise InvalidOptionError(
            f"register_backend takes a Backend, but got {type(backend).__name__}"
        )
    if not backend.suffixes or not all(
        isinstance(s, str) and s.startswith(".") and len(s) > 1 for s in backend.suffixes
    ):
        raise InvalidOptionError(
            f"suffixes should be strings starting with '.', such as ('.npy',), but got "
            f"suffixes={backend.suffixes!r} for backend {backend.name!r}"
        )
    if not backend.name or not backend.name.replace("-", "").replace("_", "").isalnum():
        raise InvalidOptionError(
            f"name should be a word such as 'npy', but got name={backend.name!r}"
        )
    with _LOCK:
        key = backend.name.lower()
        owner = _BACKENDS.get(key)
        owners = {n: _ALIASES.get(n, n if n in _BACKENDS else None) for n in backend.names}
        clash = [n for n, held in owners.items() if held is not None and held != key]
        if key == SHARDED or clash or (owner is not None and not replace):
            taken = SHARDED if key == SHARDED else (clash or [key])[0]
            raise InvalidOptionError(
                f"format name {taken!r} is taken by a registered backend"
                + ("" if clash or key == SHARDED else "; pass replace=True to replace it")
            )
        if owner is not None:
            for alias in owner.names[1:]:
                _ALIASES.pop(alias, None)
        _BACKENDS[key] = backend
        _ALIASES.update({alias: key for alias in backend.names[1:]})


def unregister_backend(name: str) -> None:
    """Forget the backend registered as ``name`` (and its aliases)."""
    with _LOCK:
        backend = _BACKENDS.pop(get_backend(name).name.lower())
        for alias in backend.names[1:]:
            _ALIASES.pop(alias, None)


for _builtin in (
    Backend(name="lmdb", suffixes=(".lmdb", ".mdb"), markers=("data.mdb",), package="lmdb",
            reader="shardio.storage.adapters.lmdb._adapter.LMDBReader",
            writer="shardio.storage.adapters.lmdb._adapter.LMDBWriter"),
    Backend(name="hdf5", suffixes=(".h5", ".hdf5", ".hdf", ".he5"), package="h5py",
            # a user block of 512, 1024, ... bytes may precede the signature
            signature=b"\x89HDF\r\n\x1a\n", signature_offsets=(0, 512, 1024, 2048),
            reader="shardio.storage.adapters.hdf5._adapter.HDF5Reader",
            writer="shardio.storage.adapters.hdf5._adapter.HDF5Writer",
            source="shardio.storage.adapters.hdf5._source.HDF5Source"),
    Backend(name="zarr", suffixes=(".zarr",), markers=("zarr.json",), package="zarr",
            reader="shardio.storage.adapters.zarr._adapter.ZarrReader",
            writer="shardio.storage.adapters.zarr._adapter.ZarrWriter"),
    Backend(name="mmap", suffixes=(".mmap",), markers=("shardio-mmap.json",),
            aliases=("raw",), package="numpy",
            reader="shardio.storage.adapters.mmap._adapter.MmapReader",
            writer="shardio.storage.adapters.mmap._adapter.MmapWriter"),
    Backend(name="netcdf3", suffixes=(".nc3",), package="scipy",
            # classic (CDF\x01) and 64-bit offset (CDF\x02); usually named .nc, as
            # netCDF4 (HDF5) files are, so the signature tells them apart
            signature=b"CDF",
            reader="shardio.storage.adapters.netcdf3._adapter.NetCDF3Reader"),
):  # fmt: skip
    register_backend(_builtin)


def formats() -> tuple[str, ...]:
    """The canonical names of the registered formats."""
    return tuple(_BACKENDS)


def format_names() -> str:
    """The accepted format names for messages: ``lmdb, hdf5, zarr, mmap (alias raw)``."""
    return ", ".join(
        b.name + (f" (alias {', '.join(b.aliases)})" if b.aliases else "")
        for b in _BACKENDS.values()
    )


def get_backend(name: str) -> Backend:
    """The backend of format ``name`` (a canonical name or an alias such as ``raw``)."""
    key = name.lower() if isinstance(name, str) else name
    try:
        return _BACKENDS[_ALIASES.get(key, key)]
    except (KeyError, TypeError):
        raise UnknownFormatError(
            f"format should be one of {format_names()}, but got format={name!r}"
        ) from None


def _load(backend: Backend, target: Any, path: str | None) -> Any:
    """``target`` itself, or the object its dotted path names, imported now."""
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = backend.package or module_name.partition(".")[0]
        reading = f" to read {path}" if path else ""
        raise BackendNotInstalledError(
            f"the {backend.name} backend needs the {package!r} package: "
            f"pip install {package}{reading} ({exc})"
        ) from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise BackendNotInstalledError(
            f"the {backend.name} backend names {target}, which does not exist"
        ) from None


def reader_class(name: str, path: str | None = None) -> type[ShardReader[Any]]:
    """The `ShardReader` subclass of format ``name``."""
    backend = get_backend(name)
    cls: type[ShardReader[Any]] = _load(backend, backend.reader, path)
    return cls


def writer_class(name: str, path: str | None = None) -> type[ShardFileWriter]:
    """The `ShardFileWriter` subclass of format ``name``."""
    backend = get_backend(name)
    if backend.writer is None:
        raise UnsupportedFeatureError(
            f"the {backend.name} backend is read-only: shardio reads it but cannot write "
            f"format={name!r}; pick one of "
            + ", ".join(b.name for b in _BACKENDS.values() if b.writer is not None)
        )
    cls: type[ShardFileWriter] = _load(backend, backend.writer, path)
    return cls


def source_class(name: str, path: str | None = None) -> SourceClass | None:
    """The conversion `Source` of format ``name``, or
    None where conversion reads it through the reader."""
    backend = get_backend(name)
    if backend.source is None:
        return None
    cls: SourceClass = _load(backend, backend.source, path)
    return cls


def detect_format(path: str, storage_options: dict[str, Any] | None = None) -> str:
    """The format of ``path``: a backend name, or ``"shardio"`` for a dataset directory."""
    stripped = path.rstrip("/")
    if is_remote(path):
        return _detect_remote(stripped, storage_options or {})
    local = stripped.removeprefix("file://")
    if not os.path.exists(local):
        raise DatasetNotFoundError(f"no dataset at {path}: the path does not exist")
    if os.path.isdir(local) and os.path.exists(os.path.join(local, MANIFEST_NAME)):
        return SHARDED
    lowered = local.lower()
    for backend in _BACKENDS.values():
        if lowered.endswith(backend.suffixes):
            return backend.name
    if os.path.isdir(local):
        for backend in _BACKENDS.values():
            if any(os.path.exists(os.path.join(local, m)) for m in backend.markers):
                return backend.name
        if holds_shards(local):
            raise DatasetNotFoundError(
                f"{path} holds shards but no {MANIFEST_NAME}: the write that made it did not "
                "finish, so it is not a complete dataset (write it again, or resume the conversion)"
            )
    else:
        for backend in _BACKENDS.values():
            if backend.signature and _has_signature(local, backend):
                return backend.name
    known = ", ".join(s for b in _BACKENDS.values() for s in b.suffixes)
    markers = " or ".join(m for b in _BACKENDS.values() for m in b.markers)
    raise UnknownFormatError(
        f"cannot tell the format of {path}: expected a shardio dataset directory (with "
        f"{MANIFEST_NAME}), a path ending in one of {known}, or a directory holding "
        f"{markers}; pass format= to say which"
    )


def signature_format(path: str) -> str | None:
    """The format whose signature a local file starts with, or None: lets a backend
    asked to read another format's file say which format it is instead of "corrupt"."""
    for backend in _BACKENDS.values():
        if backend.signature and _has_signature(path, backend):
            return backend.name
    return None


def _has_signature(path: str, backend: Backend) -> bool:
    try:
        with open(path, "rb") as handle:
            for offset in backend.signature_offsets:
                handle.seek(offset)
                if handle.read(len(backend.signature)) == backend.signature:
                    return True
    except OSError:
        return False
    return False


def _detect_remote(url: str, storage_options: dict[str, Any]) -> str:
    fs, root = filesystem(url, storage_options)
    with remote_errors(url):
        if fs.exists(f"{root}/{MANIFEST_NAME}"):
            return SHARDED
        lowered = url.lower()
        for backend in _BACKENDS.values():
            if lowered.endswith(backend.suffixes):
                return backend.name
        for backend in _BACKENDS.values():
            if any(fs.exists(f"{root}/{m}") for m in backend.markers):
                return backend.name
        if not fs.exists(root):
            raise DatasetNotFoundError(f"no dataset at {url}: the object does not exist")
    raise UnknownFormatError(f"cannot tell the format of {url}; pass format= to say which")
