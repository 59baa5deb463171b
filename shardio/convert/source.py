"""Conversion sources: any readable dataset as a schema, a length and row ranges.

HDF5 files get a source of their own, because files written by other tools hold
what a training reader never meets: nested groups, soft and external links,
compound types to keep or split, variable-length strings, big-endian types,
scalars, filters from plugins, object references. Every other input (Zarr, LMDB,
raw shards, shardio datasets) is read through :class:`~shardio.reader.DatasetReader`.

Every array is handed out in native byte order, so a converted dataset feeds
torch without a byte swap on every read.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from ..adapters.base import Columns
from ..adapters.registry import detect_format, get_backend, is_remote
from ..errors import (
    DatasetNotFoundError,
    FieldNotFoundError,
    InvalidOptionError,
    RemoteReadError,
    SchemaError,
    ShardCorruptError,
    ShardioError,
    UnsupportedFeatureError,
)
from ..reader import DatasetReader
from ..remote import open_remote
from ..schema import Field, Schema

__all__ = [
    "Source",
    "HDF5Source",
    "ReaderSource",
    "Skipped",
    "open_source",
    "native_dtype",
    "path_signature",
]

# Filters every HDF5 library has built in: deflate, shuffle, fletcher32, szip, nbit, scaleoffset.
_BUILTIN_FILTERS = frozenset({1, 2, 3, 4, 5, 6})
# Filter ids registered with The HDF Group that hdf5plugin provides, for error messages.
_PLUGIN_NAMES = {
    307: "bzip2",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32013: "zfp",
    32015: "zstd",
    32017: "sz",
    32018: "fcidecomp",
    32024: "sz3",
    32026: "blosc2",
}
_CHUNK_CACHE_BYTES = 32 * 1024 * 1024
_SIGNATURE_MAX_FILES = 100_000


@dataclass(frozen=True)
class Skipped:
    """An object of the source left out of the conversion, and why."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name!r}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


def native_dtype(dtype: np.dtype) -> np.dtype:
    """``dtype`` in native byte order, without h5py's metadata (enum, string info)."""
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return np.dtype((native_dtype(base), shape))
    if dtype.fields is not None:
        assert dtype.names is not None
        return np.dtype(
            {
                "names": list(dtype.names),
                "formats": [native_dtype(dtype.fields[n][0]) for n in dtype.names],
                "offsets": [int(dtype.fields[n][1]) for n in dtype.names],
                "itemsize": dtype.itemsize,
            }
        )
    plain = np.dtype(dtype.str)
    return plain if plain.isnative else plain.newbyteorder("=")


def path_signature(path: str) -> str | None:
    """A digest of the sizes and modification times of the files under ``path``.

    Resuming compares it to tell a source changed since the interrupted run.
    ``None`` for remote URLs, whose listing would cost a round trip per object.
    """
    if is_remote(path):
        return None
    local = path.removeprefix("file://")
    digest = xxhash.xxh3_64()
    if os.path.isfile(local):
        files = [local]
    else:
        files = []
        for directory, _, names in os.walk(local):
            files.extend(os.path.join(directory, n) for n in names)
            if len(files) > _SIGNATURE_MAX_FILES:
                break
        files.sort()
    for name in files:
        try:
            stat = os.stat(name)
        except OSError:
            continue
        relative = os.path.relpath(name, local) if name != local else ""
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class Source(ABC):
    """Rows of a dataset as columns following :attr:`schema`; picklable without handles."""

    path: str
    schema: Schema
    num_samples: int
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()
    split_compound: bool = False

    @abstractmethod
    def read(self, start: int, stop: int) -> Columns:
        """Samples ``start`` to ``stop`` (exclusive) as validated columns."""

    @abstractmethod
    def read_rows(self, indices: np.ndarray) -> Columns:
        """Samples at sorted, distinct ``indices`` as validated columns."""

    @property
    def chunk_rows(self) -> int | None:
        """Rows per storage chunk of the largest field, to align reads with; None if none."""
        return None

    def signature(self) -> str | None:
        return path_signature(self.path)

    @abstractmethod
    def close(self) -> None:
        """Release this process's handles; reading reopens them."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------ HDF5
@dataclass(frozen=True)
class _Spec:
    """How one output field is read: dataset path, compound member, value kind."""

    field: Field
    dataset: str
    member: str | None = None
    #: Stored element type of a variable-length array field, when not native.
    foreign_vlen: np.dtype | None = None


@dataclass
class _Entry:
    """One candidate field found in the file: readable, or skipped, or unsupported."""

    name: str
    dataset: str
    spec: _Spec | None = None
    skip: str | None = None
    unsupported: str | None = None


@dataclass
class _Open:
    file: Any  # h5py.File
    datasets: dict[str, Any] = field(default_factory=dict)


def _describe_type(dataset: Any) -> str:
    try:
        tid = dataset.id.get_type()
        kind = type(tid).__name__.removeprefix("Type").removesuffix("ID")
        return f"HDF5 {kind} type of {tid.get_size()} bytes"
    except Exception:  # the description is best effort; the error is raised anyway
        return "an HDF5 type"


class HDF5Source(Source):
    """Any HDF5 file: datasets sharing a first axis become fields named by their path."""

    def __init__(
        self,
        path: str,
        *,
        fields: Sequence[str] | None = None,
        split_compound: bool = False,
        skip_unsupported: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.split_compound = split_compound
        self.storage_options = dict(storage_options or {})
        self._pid: int | None = None
        self._handle: _Open | None = None
        self._plugins = False
        self._tried_plugins = False
        file = self._open_file()
        try:
            specs, skipped, notes = self._resolve(file, fields, skip_unsupported)
            lengths = {s.dataset: int(file[s.dataset].shape[0]) for s in specs}
            chunk_rows = self._find_chunk_rows(file, specs)
        finally:
            file.close()
        if len(set(lengths.values())) > 1:
            listing = ", ".join(f"{n!r}: {length}" for n, length in lengths.items())
            raise SchemaError(
                f"{path}: datasets disagree on their first axis ({listing}); pick datasets of "
                "one length with fields=[...] (--fields)"
            )
        self._specs = tuple(specs)
        self.schema = Schema(tuple(s.field for s in specs))
        self.num_samples = next(iter(lengths.values()))
        self.skipped = tuple(skipped)
        self.notes = tuple(notes)
        self._chunk_rows = chunk_rows

    # ---------------------------------------------------------------- handles
    def _open_file(self) -> Any:
        import h5py

        if self._plugins:
            self._import_plugins()
        cache = {"rdcc_nbytes": _CHUNK_CACHE_BYTES, "rdcc_w0": 1.0}
        try:
            if is_remote(self.path):
                remote = open_remote(self.path, self.storage_options)
                return h5py.File(remote, "r", **cache)
            return h5py.File(self.path.removeprefix("file://"), "r", locking=False, **cache)
        except FileNotFoundError:
            raise DatasetNotFoundError(f"HDF5 file {self.path} does not exist") from None
        except RemoteReadError:
            raise
        except OSError as exc:
            raise ShardCorruptError(f"cannot open HDF5 file {self.path}: {exc}") from exc

    @property
    def _open(self) -> _Open:
        if self._handle is None or self._pid != os.getpid():
            # NOTE: a handle inherited through fork is dropped, never closed: closing
            # would act on HDF5 library state shared with the parent.
            self._handle = _Open(self._open_file())
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.datasets.clear()
            with contextlib.suppress(Exception):
                self._handle.file.close()
        self._handle = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _import_plugins(self) -> bool:
        """Register hdf5plugin's filters, if the package is installed."""
        try:
            import hdf5plugin  # noqa: F401
        except ImportError:
            return False
        return True

    # -------------------------------------------------------------- discovery
    def _resolve(
        self, file: Any, fields: Sequence[str] | None, skip_unsupported: bool
    ) -> tuple[list[_Spec], list[Skipped], list[str]]:
        if fields is not None:
            entries = [e for name in fields for e in self._requested(file, name)]
            skipped: list[Skipped] = []
        else:
            found, skipped = _discover(file)
            entries = [e for path, ds in found for e in self._classify(path, ds)]
        bad = [e for e in entries if e.unsupported is not None]
        if bad and (fields is not None or not skip_unsupported):
            problems = "; ".join(f"{e.name!r} {e.unsupported}" for e in bad)
            hint = (
                "choose other datasets with fields=[...] (--fields)"
                if fields is not None
                else "pass skip_unsupported=True (--skip-unsupported) to leave them out, or "
                "fields=[...] (--fields) to choose datasets"
            )
            raise UnsupportedFeatureError(f"cannot convert {self.path}: {problems}; {hint}")
        skipped.extend(Skipped(e.name, e.unsupported) for e in bad if e.unsupported is not None)
        skipped.extend(Skipped(e.name, e.skip) for e in entries if e.skip is not None)
        specs: list[_Spec] = []
        names: set[str] = set()
        for entry in entries:
            if entry.spec is not None and entry.spec.field.name not in names:
                names.add(entry.spec.field.name)  # a field asked for twice is read once
                specs.append(entry.spec)
        if not specs:
            listing = "; ".join(str(s) for s in skipped) or "it holds no datasets"
            raise SchemaError(
                f"{self.path} holds no dataset with a first axis to read samples from ({listing})"
            )
        notes = []
        for spec in specs:
            dataset = file[spec.dataset]
            stored = dataset.dtype if spec.member is None else dataset.dtype.fields[spec.member][0]
            if stored.kind != "O" and not stored.isnative:
                notes.append(
                    f"{spec.field.name!r} is stored as {stored} in the source; "
                    f"it is written in native byte order as {spec.field.dtype}"
                )
        return specs, skipped, notes

    def _requested(self, file: Any, name: str) -> list[_Entry]:
        """The entries of a dataset (or compound member) the caller asked for by name."""
        import h5py

        wanted = name.strip("/")
        obj = _get(file, wanted)
        if isinstance(obj, h5py.Dataset):
            return [_selectable(self.path, e) for e in self._classify(wanted, obj)]
        if isinstance(obj, h5py.Group):
            raise SchemaError(f"{self.path}: {name!r} is a group, not a dataset")
        if "/" in wanted:
            parent, member = wanted.rsplit("/", 1)
            dataset = _get(file, parent)
            if isinstance(dataset, h5py.Dataset) and member in _member_names(dataset):
                entries = self._classify(parent, dataset, split=True)
                return [_selectable(self.path, e) for e in entries if e.name == wanted]
        found, _ = _discover(file)
        available = [n for p, d in found for n in _field_names(p, d, self.split_compound)]
        raise FieldNotFoundError(
            f"{self.path}: no dataset {name!r}; datasets in the file are {available}"
        )

    def _classify(self, path: str, dataset: Any, split: bool | None = None) -> list[_Entry]:
        """The fields ``dataset`` becomes, or why it is skipped or unsupported."""
        split = self.split_compound if split is None else split
        if dataset.shape is None:
            return [_Entry(path, path, skip="has an empty dataspace (no values)")]
        if len(dataset.shape) == 0:
            return [_Entry(path, path, skip="is a scalar (a field needs a first axis)")]
        try:
            dtype = dataset.dtype
        except (TypeError, ValueError) as exc:
            return [
                _Entry(
                    path,
                    path,
                    unsupported=f"has {_describe_type(dataset)} that numpy cannot hold ({exc})",
                )
            ]
        missing = self._missing_filters(dataset)
        if missing:
            return [
                _Entry(
                    path,
                    path,
                    unsupported=f"is compressed with HDF5 filter {', '.join(missing)}, which is "
                    "not available: pip install hdf5plugin (or shardio[hdf5plugin]), or point "
                    "HDF5_PLUGIN_PATH at the filter",
                )
            ]
        rows = tuple(dataset.shape[1:])
        if dtype.fields is not None and split:
            assert dtype.names is not None
            return [
                _member_entry(f"{path}/{m}", path, m, dtype.fields[m][0], rows) for m in dtype.names
            ]
        if dtype.fields is not None and dtype.hasobject:
            return [
                _Entry(
                    path,
                    path,
                    unsupported=f"has a compound type {dtype} with variable-length or reference "
                    "members; pass split_compound=True (--split-compound) to store its members "
                    "as separate fields",
                )
            ]
        return [_member_entry(path, path, None, dtype, rows)]

    def _missing_filters(self, dataset: Any) -> list[str]:
        import h5py

        try:
            plist = dataset.id.get_create_plist()
            filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
        except Exception:  # not every dataset layout has a filter pipeline to query
            return []
        codes = {int(f[0]): f[3] for f in filters}
        if any(c not in _BUILTIN_FILTERS for c in codes):
            self._plugins = True
        missing = [c for c in codes if not h5py.h5z.filter_avail(c)]
        if missing and not self._tried_plugins:
            self._tried_plugins = True
            if self._import_plugins():
                missing = [c for c in codes if not h5py.h5z.filter_avail(c)]
        return [
            f"{c} ({_PLUGIN_NAMES.get(c) or codes[c].decode(errors='replace') or 'unknown'})"
            for c in missing
        ]

    @staticmethod
    def _find_chunk_rows(file: Any, specs: Sequence[_Spec]) -> int | None:
        largest = max(specs, key=lambda s: s.field.sample_nbytes)
        chunks = file[largest.dataset].chunks
        return int(chunks[0]) if chunks else None

    # ---------------------------------------------------------------- reading
    @property
    def chunk_rows(self) -> int | None:
        return self._chunk_rows

    def _dataset(self, path: str) -> Any:
        handle = self._open
        dataset = handle.datasets.get(path)
        if dataset is None:
            dataset = handle.datasets[path] = handle.file[path]
        return dataset

    def read(self, start: int, stop: int) -> Columns:
        return self._columns(slice(start, stop), stop - start)

    def read_rows(self, indices: np.ndarray) -> Columns:
        return self._columns(np.asarray(indices, dtype=np.int64), len(indices))

    def _columns(self, selection: slice | np.ndarray, count: int) -> Columns:
        blocks: dict[str, Any] = {}
        columns: Columns = {}
        for spec in self._specs:
            block = blocks.get(spec.dataset)
            if block is None:
                dataset = self._dataset(spec.dataset)
                block = dataset[0:0] if count == 0 else dataset[selection]
                blocks[spec.dataset] = block
            value = block if spec.member is None else block[spec.member]
            from ..adapters._hdf5 import vlen_reads_unswapped

            if spec.foreign_vlen is not None and vlen_reads_unswapped():
                value = [np.asarray(v).view(spec.foreign_vlen) for v in value]
            columns[spec.field.name] = _to_field(value, spec.field, count)
        return columns


def _to_field(value: Any, fld: Field, count: int) -> Any:
    if fld.kind == "bytes":
        return [
            v if isinstance(v, bytes) else (v.encode() if isinstance(v, str) else bytes(v))
            for v in value
        ]
    if fld.kind == "ragged":
        return [np.ascontiguousarray(v, dtype=fld.dtype).reshape(-1) for v in value]
    array = np.ascontiguousarray(value, dtype=fld.dtype)
    return array.reshape(count, *fld.shape)


def _get(file: Any, name: str) -> Any:
    if not name:
        return None
    try:
        return file.get(name)
    except (KeyError, OSError, ValueError, RuntimeError):
        return None


def _member_names(dataset: Any) -> tuple[str, ...]:
    try:
        return tuple(dataset.dtype.names or ())
    except (TypeError, ValueError):
        return ()


def _field_names(path: str, dataset: Any, split: bool) -> list[str]:
    members = _member_names(dataset) if split else ()
    return [f"{path}/{m}" for m in members] if members else [path]


def _selectable(source: str, entry: _Entry) -> _Entry:
    if entry.skip is not None:
        raise SchemaError(f"{source}: dataset {entry.name!r} cannot be a field: it {entry.skip}")
    return entry


def _member_entry(
    name: str, dataset: str, member: str | None, dtype: np.dtype, rows: tuple[int, ...]
) -> _Entry:
    """A field for values of ``dtype`` in a dataset with per-sample shape ``rows``."""
    import h5py

    vlen = h5py.check_vlen_dtype(dtype)
    if vlen is not None:
        if rows:
            return _Entry(
                name,
                dataset,
                unsupported=f"holds variable-length values in a {len(rows) + 1}-D dataset; "
                "only 1-D datasets of variable-length values can be fields",
            )
        if vlen in (bytes, str):
            return _Entry(
                name,
                dataset,
                spec=_Spec(Field(name, np.dtype(np.uint8), (), "bytes"), dataset, member),
            )
        base = np.dtype(vlen)
        if base.hasobject or base.fields is not None or base.subdtype is not None:
            return _Entry(name, dataset, unsupported=f"has a nested variable-length type {dtype}")
        return _Entry(
            name,
            dataset,
            spec=_Spec(
                Field(name, native_dtype(base), (), "ragged"),
                dataset,
                member,
                None if base.isnative else base,
            ),
        )
    if h5py.check_ref_dtype(dtype) is not None:
        return _Entry(
            name,
            dataset,
            unsupported=f"holds object references (dtype {dtype}), which mean nothing "
            "outside the file",
        )
    if dtype.hasobject:
        return _Entry(name, dataset, unsupported=f"holds Python objects (dtype {dtype})")
    shape = rows
    base = dtype
    if dtype.subdtype is not None:
        base, inner = dtype.subdtype
        shape = rows + tuple(inner)
    try:
        fld = Field(name, native_dtype(base), shape, "array")
    except SchemaError as exc:
        return _Entry(name, dataset, unsupported=str(exc))
    return _Entry(name, dataset, spec=_Spec(fld, dataset, member))


def _discover(file: Any) -> tuple[list[tuple[str, Any]], list[Skipped]]:
    """Every dataset reachable from the root, each once, with the path it is named by.

    Hard links are walked first, so a dataset is named by its own path; soft and
    external links then add what they alone reach. A link to data already found
    is listed as skipped rather than converted twice; a dangling link likewise.
    """
    import h5py

    found: list[tuple[str, Any]] = []
    skipped: list[Skipped] = []
    seen: dict[tuple[Any, int], str] = {}
    links: list[tuple[str, Any, str, Any]] = []

    def identity(obj: Any) -> tuple[Any, int]:
        return (obj.id.fileno, int(h5py.h5o.get_info(obj.id).addr))

    def add(path: str, obj: Any, how: str | None) -> None:
        key = identity(obj)
        if key in seen:
            if how is not None and isinstance(obj, h5py.Dataset):
                skipped.append(Skipped(path, f"is a {how}; the same data as {seen[key]!r}"))
            return
        seen[key] = path
        if isinstance(obj, h5py.Group):
            walk(obj, f"{path}/")
        elif isinstance(obj, h5py.Dataset):
            found.append((path, obj))

    def walk(group: Any, prefix: str) -> None:
        for name in group:
            path = f"{prefix}{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                links.append((path, group, name, link))
                continue
            try:
                obj = group[name]
            except (KeyError, OSError, ValueError, RuntimeError) as exc:
                skipped.append(Skipped(path, f"cannot be opened ({exc})"))
                continue
            add(path, obj, None)

    walk(file, "")
    while links:
        path, group, name, link = links.pop(0)
        if isinstance(link, h5py.SoftLink):
            how = f"soft link to {link.path}"
        else:
            how = f"external link to {link.path} in {link.filename}"
        try:
            obj = group[name]
        except (KeyError, OSError, ValueError, RuntimeError):
            skipped.append(Skipped(path, f"is a dangling {how}"))
            continue
        add(path, obj, how)
    return found, skipped


# ---------------------------------------------------------------- other formats
class ReaderSource(Source):
    """Any dataset :class:`~shardio.reader.DatasetReader` reads: Zarr, LMDB, raw, sharded."""

    def __init__(
        self,
        path: str,
        *,
        fields: Sequence[str] | None = None,
        format: str | None = None,
        split_compound: bool = False,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.split_compound = split_compound
        self._reader = DatasetReader(path, fields=fields, format=format, **(options or {}))
        self.num_samples = len(self._reader)
        self._specs: list[tuple[Field, str, str | None]] = []  # (field, source field, member)
        notes = []
        for fld in self._reader.schema:
            if fld.kind == "array" and fld.dtype.fields is not None and split_compound:
                assert fld.dtype.names is not None
                for member in fld.dtype.names:
                    sub = fld.dtype.fields[member][0]
                    base, inner = sub.subdtype if sub.subdtype is not None else (sub, ())
                    out = Field(f"{fld.name}/{member}", native_dtype(base), fld.shape + inner)
                    self._specs.append((out, fld.name, member))
            else:
                out = Field(fld.name, native_dtype(fld.dtype), fld.shape, fld.kind)
                self._specs.append((out, fld.name, None))
            if not fld.dtype.isnative:
                notes.append(
                    f"{fld.name!r} is stored as {fld.dtype} in the source; "
                    "it is written in native byte order"
                )
        self.schema = Schema(tuple(f for f, _, _ in self._specs))
        self.notes = tuple(notes)

    def read(self, start: int, stop: int) -> Columns:
        return self.read_rows(np.arange(start, stop, dtype=np.int64))

    def read_rows(self, indices: np.ndarray) -> Columns:
        raw = self._reader.read_many(np.asarray(indices, dtype=np.int64))
        count = len(indices)
        columns: Columns = {}
        for fld, name, member in self._specs:
            value = raw[name] if member is None else raw[name][member]
            if fld.kind == "bytes":
                columns[fld.name] = value
            else:
                columns[fld.name] = _to_field(value, fld, count)
        return columns

    def close(self) -> None:
        self._reader.close()


# ------------------------------------------------------------------------ open
def open_source(
    path: str | os.PathLike[str],
    *,
    fields: Sequence[str] | str | None = None,
    format: str | None = None,
    split_compound: bool = False,
    skip_unsupported: bool = False,
    options: dict[str, Any] | None = None,
) -> Source:
    """The :class:`Source` that reads ``path`` (format detected unless given).

    ``options`` go to the backend's reader (``decode=`` for a foreign LMDB,
    ``storage_options=`` for a remote URL, ...).
    """
    location = os.fspath(path)
    if isinstance(fields, str):
        fields = [fields]
    if fields is not None:
        fields = list(fields)
        if not fields:
            raise InvalidOptionError("fields should name at least one field, but got fields=[]")
    fmt = format if format is not None else detect_format(location)
    if fmt != "shardio":
        get_backend(fmt)
    if fmt == "hdf5" and set(options or {}) <= {"storage_options"}:
        return HDF5Source(
            location,
            fields=fields,
            split_compound=split_compound,
            skip_unsupported=skip_unsupported,
            storage_options=(options or {}).get("storage_options"),
        )
    try:
        return ReaderSource(
            location,
            fields=fields,
            format=None if fmt == "shardio" else fmt,
            split_compound=split_compound,
            options=options,
        )
    except ShardioError:
        raise
    except OSError as exc:
        raise ShardCorruptError(f"cannot read {location}: {exc}") from exc
