"""Remote reads (fsspec URLs): bounded timeouts and retries, and one error for a fault.

Every place that opens a remote path gets its file system from `filesystem`,
which lays shardio's defaults under the user's ``storage_options``, and wraps the
access in `remote_errors`, which turns a network fault into a
`RemoteReadError` naming the URL.

Defaults for S3 (s3fs over aiobotocore), each overridable through
``storage_options``::

    {"config_kwargs": {"connect_timeout": 5, "read_timeout": 10,
                       "retries": {"mode": "standard", "total_max_attempts": 3}}}

botocore's retry config is the only retry layer: shardio sets s3fs's own loop
(``S3FileSystem.retries``, 5 tries nested twice on a range read) to one try on the
file systems it opens, so a server that stops answering fails one request after at
most ``total_max_attempts * read_timeout`` plus the backoff between attempts (at
most 1 s + 2 s): 33 s with the defaults, instead of minutes. HTTP(S) gets
aiohttp socket timeouts (``client_kwargs={"timeout": ...}``) and no retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from shardio.core.errors import RemoteAccessError, RemoteReadError, ShardioError

__all__ = [
    "S3_DEFAULTS",
    "HTTP_TIMEOUTS",
    "GuardedFile",
    "filesystem",
    "is_fault",
    "is_remote",
    "open_remote",
    "remote_errors",
    "storage_options_for",
    "tune",
]

S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {
        "connect_timeout": 5,
        "read_timeout": 10,
        "retries": {"mode": "standard", "total_max_attempts": 3},
    }
}
#: aiohttp socket timeouts (seconds) for http:// and https:// URLs.
HTTP_TIMEOUTS: dict[str, float] = {"sock_connect": 5, "sock_read": 10}

# Exceptions from these packages are network or protocol faults of a remote read.
_FAULT_MODULES = (
    "asyncio",
    "botocore",
    "aiobotocore",
    "aiohttp",
    "urllib3",
    "requests",
    "s3fs",
    "fsspec",
)


def is_remote(path: str) -> bool:
    """True for fsspec URLs other than ``file://`` (read through fsspec, not the OS)."""
    return "://" in path and not path.startswith("file://")


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def storage_options_for(url: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """``given`` laid over shardio's defaults for the URL's protocol.

    Dicts at the top level and one level down (``config_kwargs``, ``client_kwargs``)
    merge key by key, the user's value winning; deeper values (``retries``) are
    replaced whole, so a user's retry config is never mixed with the default one."""
    given = dict(given or {})
    defaults = _defaults(_protocol(url))
    merged = {**defaults, **given}
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(given.get(key), dict):
            merged[key] = {**value, **given[key]}
    return merged


def _defaults(name: str) -> dict[str, Any]:
    if name in ("s3", "s3a"):
        config = dict(S3_DEFAULTS["config_kwargs"])
        config["retries"] = dict(config["retries"])
        return {"config_kwargs": config}
    if name in ("http", "https"):
        try:
            import aiohttp
        except ImportError:  # fsspec will say that http needs aiohttp
            return {}
        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(**HTTP_TIMEOUTS)}}
    return {}


def filesystem(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec file system and path of ``url``, with shardio's defaults applied."""
    import fsspec.core

    options = storage_options_for(url, storage_options)
    with remote_errors(url):
        fs, path = fsspec.core.url_to_fs(url, **options)
    return tune(fs, url), path


def tune(fs: Any, url: str) -> Any:
    """``fs`` with shardio's retry policy (see the module docstring); returns it."""
    if _protocol(url) in ("s3", "s3a") and hasattr(fs, "retries"):
        # NOTE: s3fs retries read timeouts itself, nested twice for a range read,
        # around botocore's retries: 5 x 5 x attempts x read_timeout when frozen.
        # Leaving it to botocore's config keeps one knob and one bound.
        fs.retries = 1
    return fs


def open_remote(url: str, storage_options: dict[str, Any] | None) -> Any:
    """``url`` opened for binary reading (a `GuardedFile`: its faults raise
    `RemoteReadError`)."""
    fs, path = filesystem(url, storage_options)
    with remote_errors(url):
        return GuardedFile(fs.open(path, "rb"), url)


class GuardedFile:
    """A remote file whose reads raise `RemoteReadError` on a fault.

    Libraries that read through a Python file object (h5py) pass its exceptions on
    unchanged, so the error reaches the caller already translated."""

    def __init__(self, handle: Any, url: str) -> None:
        self._handle = handle
        self.url = url

    def read(self, size: int = -1) -> bytes:
        with remote_errors(self.url):
            return bytes(self._handle.read(size))

    def readinto(self, buffer: Any) -> int:
        with remote_errors(self.url):
            return int(self._handle.readinto(buffer))

    def seek(self, offset: int, whence: int = 0) -> int:
        with remote_errors(self.url):
            return int(self._handle.seek(offset, whence))

    def tell(self) -> int:
        return int(self._handle.tell())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> GuardedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def is_fault(exc: BaseException) -> bool:
    """True for an exception that a network or remote-store fault raises."""
    if isinstance(exc, ShardioError):
        return False
    if isinstance(exc, (OSError, TimeoutError)) and not isinstance(
        exc, (FileNotFoundError, PermissionError)
    ):
        return True
    return any(cls.__module__.split(".")[0] in _FAULT_MODULES for cls in type(exc).__mro__)


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Turn a remote fault inside the block into a `RemoteReadError` naming ``url``, and
    a refusal (``PermissionError``, HTTP 403) into a `RemoteAccessError`.

    A missing object (``FileNotFoundError``) and shardio's own errors pass through."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, PermissionError) and not isinstance(exc, ShardioError):
            raise RemoteAccessError(
                f"the object store refused {url}: {exc} (check the credentials and "
                "permissions that storage_options or the environment give; see "
                "docs/remote.md)"
            ) from exc
        if not is_fault(exc):
            raise
        raise RemoteReadError(
            f"reading {url} failed: {type(exc).__name__}: {exc} (timeouts and retries are "
            "set through storage_options; see docs/remote.md)"
        ) from exc
