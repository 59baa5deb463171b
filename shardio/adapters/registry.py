"""Which adapter reads a path: URL scheme, then suffix, then a marker inside a directory.

Backends are named by dotted path and imported on first use, so a missing optional
package gives "install X to read Y" instead of an ImportError from deep inside.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from ..errors import BackendNotInstalledError, DatasetNotFoundError, UnknownFormatError
from ..remote import filesystem, remote_errors

__all__ = [
    "FORMATS",
    "MANIFEST_NAME",
    "Backend",
    "detect_format",
    "get_backend",
    "format_names",
    "FORMAT_ALIASES",
    "reader_class",
    "writer_class",
    "is_remote",
]

MANIFEST_NAME = "manifest.json"
#: The format name of a sharded dataset directory (a manifest plus shards).
SHARDED = "shardio"


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # dotted module holding the reader and writer
    reader: str
    writer: str
    package: str  # pip package that provides the backend library
    suffixes: tuple[str, ...]
    markers: tuple[str, ...]  # files that identify a directory of this backend


_BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "lmdb",
            "shardio.adapters._lmdb",
            "LMDBReader",
            "LMDBWriter",
            "lmdb",
            (".lmdb", ".mdb"),
            ("data.mdb",),
        ),
        Backend(
            "hdf5",
            "shardio.adapters._hdf5",
            "HDF5Reader",
            "HDF5Writer",
            "h5py",
            (".h5", ".hdf5", ".hdf", ".he5"),
            (),
        ),
        Backend(
            "zarr",
            "shardio.adapters._zarr",
            "ZarrReader",
            "ZarrWriter",
            "zarr",
            (".zarr",),
            ("zarr.json",),
        ),
        Backend(
            "mmap",
            "shardio.adapters._mmap",
            "MmapReader",
            "MmapWriter",
            "numpy",
            (".mmap",),
            ("shardio-mmap.json",),
        ),
    )
}
FORMATS: tuple[str, ...] = tuple(_BACKENDS)
#: Other names accepted for a format; the canonical name is what manifests, ``inspect``
#: and every message use.
FORMAT_ALIASES: dict[str, str] = {"raw": "mmap"}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_remote(path: str) -> bool:
    """True for fsspec URLs other than ``file://``."""
    return "://" in path and not path.startswith("file://")


def format_names() -> str:
    """The accepted format names for messages: ``lmdb, hdf5, zarr, mmap (alias raw)``."""
    aliases: dict[str, list[str]] = {}
    for alias, name in FORMAT_ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    return ", ".join(
        name + (f" (alias {', '.join(aliases[name])})" if name in aliases else "")
        for name in FORMATS
    )


def get_backend(name: str) -> Backend:
    """The backend of format ``name`` (a canonical name or an alias such as ``raw``)."""
    key = name.lower() if isinstance(name, str) else name
    try:
        return _BACKENDS[FORMAT_ALIASES.get(key, key)]
    except (KeyError, TypeError):
        raise UnknownFormatError(
            f"format should be one of {format_names()}, but got format={name!r}"
        ) from None


def _load(backend: Backend, attribute: str, path: str | None) -> Any:
    try:
        module = importlib.import_module(backend.module)
    except ImportError as exc:
        target = f" to read {path}" if path else ""
        raise BackendNotInstalledError(
            f"the {backend.name} backend needs the {backend.package!r} package: "
            f"pip install {backend.package}{target} ({exc})"
        ) from exc
    return getattr(module, attribute)


def reader_class(name: str, path: str | None = None) -> Any:
    """The :class:`~shardio.adapters.base.ShardReader` subclass of format ``name``."""
    backend = get_backend(name)
    return _load(backend, backend.reader, path)


def writer_class(name: str, path: str | None = None) -> Any:
    """The :class:`~shardio.adapters.base.ShardFileWriter` subclass of format ``name``."""
    backend = get_backend(name)
    return _load(backend, backend.writer, path)


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
        if any(e.lstrip(".").startswith("shard-") for e in os.listdir(local)):
            raise DatasetNotFoundError(
                f"{path} holds shards but no {MANIFEST_NAME}: the write that made it did not "
                "finish, so it is not a complete dataset (write it again, or resume the conversion)"
            )
    elif _has_hdf5_signature(local):
        return "hdf5"
    known = ", ".join(s for b in _BACKENDS.values() for s in b.suffixes)
    raise UnknownFormatError(
        f"cannot tell the format of {path}: expected a shardio dataset directory (with "
        f"{MANIFEST_NAME}), a path ending in one of {known}, or a directory holding "
        "data.mdb or zarr.json; pass format= to say which"
    )


def _has_hdf5_signature(path: str) -> bool:
    # The signature sits at byte 0, 512, 1024, ... (a user block may precede it).
    try:
        with open(path, "rb") as handle:
            for offset in (0, 512, 1024, 2048):
                handle.seek(offset)
                if handle.read(8) == _HDF5_SIGNATURE:
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
        if fs.exists(f"{root}/zarr.json"):
            return "zarr"
        if not fs.exists(root):
            raise DatasetNotFoundError(f"no dataset at {url}: the object does not exist")
    raise UnknownFormatError(f"cannot tell the format of {url}; pass format= to say which")
