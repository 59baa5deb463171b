"""ShardWriter: write samples into a sharded dataset directory of any backend.

Each shard is written under a temporary name and renamed when complete; the
manifest is written last, atomically. A reader never sees a partial shard, and a
directory without a manifest is not a dataset.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from shardio.core.checksum import hash_shard
from shardio.core.config import parse_size
from shardio.core.errors import InvalidOptionError, SchemaError, UnsupportedFeatureError
from shardio.core.fieldnames import check_field_dtypes, check_field_names
from shardio.core.schema import Sample, Schema, fit_dtype

from .adapters.base import Columns, ShardFileWriter, concat_columns, samples_to_columns
from .adapters.registry import get_backend, is_remote, writer_class
from .layout import partial_name, prepare_output, remove_path, scan_shard, shard_name
from .manifest import Manifest, ShardInfo
from .outputlock import lock_output
from .writefailure import write_failure

__all__ = ["ShardWriter", "finish_shard", "validate_columns"]

_ROW_BUFFER = 1024  # samples buffered by write() before they become columns
_FLUSH_BYTES = 16 * 1024 * 1024  # bytes buffered before a backend append


def finish_shard(
    directory: str,
    name: str,
    num_samples: int,
    checksum: bool = True,
    partial: str | None = None,
) -> ShardInfo:
    """Rename a completed partial shard (``partial``, by default `partial_name`)
    to ``name`` and describe it for the manifest."""
    final = os.path.join(directory, name)
    remove_path(final)
    os.replace(os.path.join(directory, partial or partial_name(name)), final)
    files = scan_shard(final)
    digest, blocks = hash_shard(files.paths, final) if checksum else (None, None)
    return ShardInfo(
        path=name,
        num_samples=num_samples,
        nbytes=files.nbytes,
        checksum=digest,
        blocks=blocks,
    )


def validate_columns(
    batch: Mapping[str, Any], schema: Schema, first: int = 0
) -> tuple[Columns, int]:
    """Columns of ``batch`` checked against ``schema``; returns them and the sample count."""
    if not isinstance(batch, Mapping):
        raise SchemaError(
            f"a batch should be a dict of field -> column, but got {type(batch).__name__}"
        )
    missing = [n for n in schema.names if n not in batch]
    extra = [n for n in batch if n not in schema]
    if missing or extra:
        raise SchemaError(
            f"batch fields {list(batch)} do not match the schema {list(schema.names)}"
            + (f": missing {missing}" if missing else "")
            + (f": unexpected {extra}" if extra else "")
        )
    counts = {n: len(batch[n]) for n in schema.names}
    if len(set(counts.values())) > 1:
        raise SchemaError(f"batch columns differ in length: {counts}")
    count = next(iter(counts.values()))
    columns: Columns = {}
    for fld in schema:
        column = batch[fld.name]
        if fld.variable:
            columns[fld.name] = [
                fld.validate(v, where=f"sample {first + i}") for i, v in enumerate(column)
            ]
            continue
        array = np.asarray(column)
        if array.shape[1:] != fld.shape:
            raise SchemaError(
                f"samples {first}..{first + count - 1}: field {fld.name!r} expects shape "
                f"{fld.shape}, but the batch column has shape {array.shape[1:]} per sample"
            )
        where = f"samples {first}..{first + count - 1}: field {fld.name!r}"
        columns[fld.name] = fit_dtype(array, fld.dtype, where)
    return columns, count


def _slice_columns(columns: Columns, start: int, stop: int) -> Columns:
    return {n: c[start:stop] for n, c in columns.items()}


def _sample_sizes(columns: Columns, schema: Schema, count: int) -> np.ndarray:
    sizes = np.full(count, schema.fixed_sample_nbytes, dtype=np.int64)
    for fld in schema:
        if fld.variable:
            sizes += np.fromiter(
                (len(v) if isinstance(v, bytes) else v.nbytes for v in columns[fld.name]),
                dtype=np.int64,
                count=count,
            )
    return sizes


class ShardWriter:
    """Writes samples into ``path``, a new dataset directory of shards of ``format``.

    >>> with ShardWriter("out.shardio", format="lmdb", shard_size="256MB") as writer:
    ...     writer.write({"image": image, "label": np.int64(3)})
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        format: str = "mmap",
        shard_size: int | str = "256MB",
        *,
        schema: Schema | None = None,
        overwrite: bool = False,
        checksum: bool = True,
        metadata: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.path = os.fspath(path)
        if is_remote(self.path):
            raise UnsupportedFeatureError(
                f"ShardWriter writes local directories; write locally, then upload {self.path}"
            )
        backend = get_backend(format)
        self.format = backend.name
        self._suffix = backend.shard_suffix
        self.shard_size = parse_size(shard_size, "shard_size")
        if self.shard_size <= 0:
            raise InvalidOptionError(
                f"shard_size should be > 0 bytes, but got shard_size={shard_size!r}"
            )
        if schema is not None:
            self._checked(schema)
        self.schema = schema
        self.checksum = checksum
        self.metadata = dict(metadata or {})
        self.options = options
        if self.format == "hdf5":
            # NOTE: a write failing inside libhdf5 (a full disk) leaves it in a state that
            # segfaults at exit; a shard built in memory fails with an ordinary OSError
            # (HDF5Writer's NOTE). It costs about twice the shard's size while closing.
            self.options.setdefault("in_memory", True)
        self._writer_class = writer_class(self.format, self.path)
        prepare_output(self.path, overwrite)
        self._lock: int | None = lock_output(self.path)  # released by close() or abort()
        self.shards: list[ShardInfo] = []
        self._rows: list[Sample] = []
        self._pending: list[Columns] = []
        self._pending_count = 0
        self._pending_bytes = 0
        self._current: ShardFileWriter | None = None
        self._current_bytes = 0
        self._written = 0
        self._closed = False
        self.manifest: Manifest | None = None

    @property
    def num_samples(self) -> int:
        """Samples accepted so far."""
        return self._written + len(self._rows)

    # ------------------------------------------------------------------- input
    def write(self, sample: Mapping[str, Any]) -> None:
        """Add one sample (a dict of field -> array, number or bytes)."""
        self._check_open()
        if self.schema is None:
            self.schema = self._checked(Schema.infer(sample))
        if not isinstance(sample, Mapping) or set(sample) != set(self.schema.names):
            got = list(sample) if isinstance(sample, Mapping) else type(sample).__name__
            raise SchemaError(
                f"sample {self.num_samples}: fields {got} do not match the schema "
                f"{list(self.schema.names)}"
            )
        where = f"sample {self.num_samples}"
        self._rows.append({f.name: f.validate(sample[f.name], where) for f in self.schema})
        if len(self._rows) >= _ROW_BUFFER:
            self._flush_rows()

    def write_batch(self, batch: Mapping[str, Any]) -> None:
        """Add samples given as columns with a leading sample axis (lists for bytes)."""
        self._check_open()
        self._flush_rows()
        if self.schema is None:
            self.schema = self._checked(Schema.infer_batch(batch))
        columns, count = validate_columns(batch, self.schema, first=self._written)
        self._add_columns(columns, count)

    def _checked(self, schema: Schema) -> Schema:
        check_field_names(schema.names, f"ShardWriter({self.path!r})")
        check_field_dtypes(schema, f"ShardWriter({self.path!r})")
        return schema

    def _flush_rows(self) -> None:
        if not self._rows:
            return
        assert self.schema is not None
        rows, self._rows = self._rows, []
        self._add_columns(samples_to_columns(rows, self.schema), len(rows))

    def _add_columns(self, columns: Columns, count: int) -> None:
        assert self.schema is not None
        sizes = _sample_sizes(columns, self.schema, count)
        start = 0
        while start < count:
            room = self.shard_size - self._current_bytes - self._pending_bytes
            taken = int(np.searchsorted(np.cumsum(sizes[start:]), room, side="right"))
            if taken == 0:
                if self._current_bytes + self._pending_bytes > 0:
                    self._finish_current()
                    continue
                taken = 1  # a sample larger than a shard gets a shard of its own
            stop = start + taken
            self._pending.append(_slice_columns(columns, start, stop))
            self._pending_count += taken
            self._pending_bytes += int(sizes[start:stop].sum())
            self._written += taken
            start = stop
            if self._pending_bytes >= _FLUSH_BYTES:
                self._flush_pending()

    # ------------------------------------------------------------------ shards
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write becomes `OutputWriteError` (a full disk says so, as in
        conversion) after the partial shard is removed; other errors pass."""
        try:
            yield
        except Exception as exc:
            name = shard_name(len(self.shards), self._suffix)
            then = "write the dataset again"
            failure = write_failure(exc, self.path, name, self._writer_class.libraries, then)
            if failure is None:
                if self._current is None:  # the shard writer failed to start: no leftover
                    with contextlib.suppress(OSError):
                        remove_path(os.path.join(self.path, partial_name(name)))
                raise
            with contextlib.suppress(Exception):
                self.abort()
            with contextlib.suppress(OSError):  # one whose writer had been let go
                remove_path(os.path.join(self.path, partial_name(name)))
            raise failure from exc

    def _flush_pending(self) -> None:
        with self._writing():
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending_count:
            return
        assert self.schema is not None
        if self._current is None:
            name = shard_name(len(self.shards), self._suffix)
            self._current = self._writer_class(
                os.path.join(self.path, partial_name(name)), self.schema, **self.options
            )
        columns = self._pending[0] if len(self._pending) == 1 else concat_columns(self._pending)
        self._current.append(columns, self._pending_count)
        self._current_bytes += self._pending_bytes
        self._pending, self._pending_count, self._pending_bytes = [], 0, 0

    def _finish_current(self) -> None:
        with self._writing():
            self._finish_shard()

    def _finish_shard(self) -> None:
        self._write_pending()
        if self._current is None:
            return
        writer, self._current = self._current, None
        writer.close()
        name = shard_name(len(self.shards), self._suffix)
        self.shards.append(finish_shard(self.path, name, writer.count, self.checksum))
        self._current_bytes = 0

    # ------------------------------------------------------------------- close
    def close(self) -> Manifest:
        """Finish the last shard and write the manifest; returns it."""
        if self.manifest is not None:
            return self.manifest
        self._check_open()
        self._flush_rows()
        self._finish_current()
        if self.schema is None:
            self.abort()
            raise SchemaError(f"nothing was written to {self.path} and no schema= was given")
        self.manifest = Manifest(
            self.format, self.schema, tuple(self.shards), metadata=self.metadata
        )
        with self._writing():
            self.manifest.save(self.path)
        self._closed = True
        self._unlock()
        return self.manifest

    def abort(self) -> None:
        """Stop without a manifest; completed shards stay, the partial one is removed."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._current is not None:
                path = self._current.path
                self._current.abort()
                self._current = None
                remove_path(path)
        finally:
            self._unlock()

    def _unlock(self) -> None:
        lock = getattr(self, "_lock", None)  # absent when __init__ failed before taking it
        if lock is not None:
            self._lock = None
            os.close(lock)

    def __del__(self) -> None:  # a writer dropped without close() frees its directory
        self._unlock()

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidOptionError(f"ShardWriter for {self.path} is closed")

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
