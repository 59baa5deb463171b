"""The ShardioError tree.

Every error a user can see is a `ShardioError` and also the builtin a caller
would naturally catch (``IndexError`` for a bad index, ``FileNotFoundError`` for a
missing path, ...), so ``except KeyError`` keeps working around shardio code.
Messages name the path, index, field or option and what was expected.
"""

from __future__ import annotations

__all__ = [
    "ShardioError",
    "DatasetNotFoundError",
    "SampleIndexError",
    "FieldNotFoundError",
    "UnknownFormatError",
    "BackendNotInstalledError",
    "InvalidOptionError",
    "ManifestError",
    "SchemaError",
    "ShardCorruptError",
    "RemoteReadError",
    "RemoteAccessError",
    "CacheError",
    "OutputExistsError",
    "UnsupportedFeatureError",
    "VerificationError",
    "DeviceError",
    "OutputWriteError",
    "StateMismatchError",
    "UnreadableFileError",
    "TooManyOpenFilesError",
    "ShardioWarning",
    "FieldsChosenWarning",
]


class ShardioError(Exception):
    """Base class of every error shardio raises on purpose."""


class DatasetNotFoundError(ShardioError, FileNotFoundError):
    """A dataset path or shard file does not exist."""


class SampleIndexError(ShardioError, IndexError):
    """A sample index is outside the dataset."""


class FieldNotFoundError(ShardioError, KeyError):
    """A field name that the dataset does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class UnknownFormatError(ShardioError, ValueError):
    """A path or format name no adapter can read or write."""


class BackendNotInstalledError(ShardioError, ImportError):
    """The optional package a backend needs is not installed."""


class InvalidOptionError(ShardioError, ValueError):
    """An option has a value outside what it accepts."""


class ManifestError(ShardioError, ValueError):
    """A dataset manifest is missing fields, malformed or of an unknown version."""


class SchemaError(ShardioError, ValueError):
    """A sample or batch does not match the dataset's schema."""


class ShardCorruptError(ShardioError, OSError):
    """A shard file is truncated, damaged or disagrees with its manifest."""


class RemoteReadError(ShardioError, OSError):
    """Reading a remote URL failed: the server is unreachable, stopped answering within
    the timeouts, or kept failing through the retries."""


class RemoteAccessError(ShardioError, PermissionError):
    """The object store refused a URL (HTTP 403): the credentials or permissions in use
    do not allow it. Not retried."""


class OutputExistsError(ShardioError, FileExistsError):
    """An output path exists and neither overwrite nor resume was asked for."""


class UnsupportedFeatureError(ShardioError, ValueError):
    """Input that shardio understands but cannot convert or read (a dtype, a filter)."""


class VerificationError(ShardioError, ValueError):
    """A dataset does not match its checksums or its source."""


class DeviceError(ShardioError, ValueError):
    """An unknown or unavailable device."""


class OutputWriteError(ShardioError, OSError):
    """Writing output failed: the disk is full, a quota is reached, or the path is read-only."""


class CacheError(ShardioError, OSError):
    """The node's shard cache cannot hold or serve a shard: its directory is full,
    read-only or held by other readers past the wait, or a download did not match
    the digest its writer recorded."""


class StateMismatchError(InvalidOptionError):
    """A saved (sampler) state belongs to another dataset or order than the one loading it."""


class UnreadableFileError(ShardioError, OSError):
    """A file shardio must read is no regular file (a FIFO, a device), is larger than
    any such file can be, or may not be read (permissions)."""


class TooManyOpenFilesError(ShardioError, OSError):
    """The process ran out of file descriptors (`ulimit -n`) opening a shard."""


class ShardioWarning(UserWarning):
    """Base class of the warnings shardio gives."""


class FieldsChosenWarning(ShardioWarning):
    """A file was read on some of its datasets: which, and which were left out.

    Given once per process and file (``warnings.simplefilter("ignore",
    FieldsChosenWarning)`` silences it; ``fields=`` picks the datasets instead).
    """
