"""Which datasets of an HDF5 file become fields, and how each is read.

One discovery serves the reader (``ShardedDataset("x.h5")``) and conversion
(``shardio convert x.h5``), so both see the same fields. It walks the file once
(hard links first, then soft and external links; each object once), classifies
every dataset (fields it becomes, or why it is skipped or unsupported), loads
hdf5plugin's filters when a dataset needs one, and, when no ``fields`` are given,
keeps the largest set of datasets that share a first axis.

Layouts other tools write get a default of their own:

- AnnData (``.h5ad``): ``X`` (dense, or CSR sparse read as dense rows) with ``obs``,
  ``obsm`` and ``layers``: one sample per cell.
- netCDF4 / xarray: datasets are grouped by their first dimension (their dimension
  scale), not by length; ``dim=`` picks the dimension.
- PyTables tables and pandas HDFStore ``table`` format: a table's columns become
  fields (``table/index``, ``table/values_block_0``, ...); PyTables' index groups
  (``_i_*``) are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from shardio.core.errors import (
    FieldNotFoundError,
    InvalidOptionError,
    ManifestError,
    SchemaError,
    UnsupportedFeatureError,
)
from shardio.core.schema import Field, Schema

from .._array_choice import (
    axis_reason,
    choose,
    chosen_line,
    fields_hint,
    is_anndata,
    is_anndata_obs,
    left_out_line,
    together,
)
from .._sparse import SparseRows
from ..source import Skipped
from ._filters import filter_advice, missing_filters

__all__ = [
    "COUNT_ATTR",
    "SCHEMA_ATTR",
    "Discovery",
    "FieldSpec",
    "SparseRows",
    "discover",
    "open_spec",
    "own_layout",
]

#: File attributes of a shard shardio wrote: its schema (JSON) and its sample count.
SCHEMA_ATTR = "shardio_schema"
COUNT_ATTR = "shardio_count"

_SPARSE_ENCODINGS = ("csr_matrix", "csc_matrix")


@dataclass(frozen=True)
class FieldSpec:
    """How one field is read: the object at ``dataset`` (a path in the file), a
    compound ``member`` of it, or a CSR ``sparse`` group read as dense rows.

    ``field.dtype`` is the stored type (byte order as in the file); ``foreign_vlen``
    is the stored element type of a variable-length array field when not native.
    """

    field: Field
    dataset: str
    member: str | None = None
    foreign_vlen: np.dtype | None = None
    sparse: bool = False


@dataclass(frozen=True)
class Discovery:
    """The fields found in a file, how to read them, and what was left out."""

    specs: tuple[FieldSpec, ...]
    num_samples: int
    skipped: tuple[Skipped, ...]
    #: One line naming what was chosen and one naming what was left out, when
    #: datasets were left out of a file read without ``fields``; else None.
    chosen: str | None = None
    left_out: str | None = None
    layout: str = "hdf5"

    @property
    def schema(self) -> Schema:
        return Schema(tuple(s.field for s in self.specs))


@dataclass(eq=False)  # entries compare by identity: the same dataset may appear twice
class _Entry:
    """One candidate field: readable (spec), skipped, or unsupported."""

    name: str
    dataset: str
    spec: FieldSpec | None = None
    skip: str | None = None
    unsupported: str | None = None
    rows: int = 0
    axis: str = ""  # what the first axis is: "dim NAME", "obs", or "" for its length


def open_spec(file: h5py.File, spec: FieldSpec) -> Any:
    """The object a field reads rows from: an ``h5py.Dataset`` or `SparseRows`."""
    obj = file[spec.dataset]
    return SparseRows(obj) if spec.sparse else obj


def own_layout(
    file: h5py.File,
    path: str,
    fields: Sequence[str] | None = None,
    group: str | None = None,
    dim: str | None = None,
) -> Discovery | None:
    """The fields of a shard shardio wrote, from the schema it carries; None for a
    file shardio did not write (then `discover` finds its fields)."""
    raw = file.attrs.get(SCHEMA_ATTR)
    if raw is None:
        return None
    chosen = [name for name, value in (("group", group), ("dim", dim)) if value]
    if chosen:
        raise InvalidOptionError(
            f"{path} is a shardio shard: {chosen[0]}= (--{chosen[0]}) selects datasets of "
            "a file shardio did not write; use fields= (--fields)"
        )
    try:
        full = Schema.loads(raw)
    except SchemaError as exc:
        raise ManifestError(f"{path}: bad {SCHEMA_ATTR} attribute: {exc}") from exc
    schema = full.select(fields, where=path)
    length = int(file.attrs.get(COUNT_ATTR, -1))
    if length < 0 and len(schema):
        first = file.get(schema.names[0])
        length = first.shape[0] if isinstance(first, h5py.Dataset) else 0
    specs = tuple(
        FieldSpec(
            f,
            f.name,
            foreign_vlen=f.dtype if f.kind == "ragged" and not f.dtype.isnative else None,
        )
        for f in schema
    )
    return Discovery(specs, length, (), layout="shardio")


# ---------------------------------------------------------------- discovery
def discover(
    file: h5py.File,
    path: str,
    *,
    fields: Sequence[str] | None = None,
    group: str | None = None,
    dim: str | None = None,
    split_compound: bool = False,
    skip_unsupported: bool = True,
) -> Discovery:
    """The fields of ``file`` (or of ``group`` in it, field names relative to it).

    Without ``fields``: every dataset reachable, less those skipped (scalars, index
    groups, links to data found already) and unsupported (types numpy cannot hold,
    missing filters: refused unless ``skip_unsupported``), keeping the largest set
    that share a first axis (ties: the longer axis). ``dim`` picks a netCDF dimension.
    """
    root, prefix = _root(file, path, group)
    layout = _layout(file, group)
    if fields is not None:
        requested = [_requested(file, root, prefix, path, name, split_compound) for name in fields]
        specs = _unique_specs(e.spec for es in requested for e in es)
        lengths = {s.field.name: _rows(file, s) for s in specs}
        if len(set(lengths.values())) > 1:
            listing = ", ".join(f"{n!r}: {length}" for n, length in lengths.items())
            raise SchemaError(
                f"{path}: the fields asked for disagree on their first axis ({listing}); "
                "pick datasets of one length with fields= (--fields)"
            )
        return Discovery(specs, next(iter(lengths.values())), (), layout=layout)
    found, skipped = _walk(root, prefix)
    entries: list[_Entry] = []
    for name, obj in found:
        # AnnData before 0.7 stored obs and obsm as compound datasets: a field per column.
        split = split_compound or (layout == "anndata" and is_anndata_obs(name))
        for entry in _classify(name, obj, split, layout):
            if not entry.rows and isinstance(obj, h5py.Dataset) and obj.shape:
                entry.rows, entry.axis = int(obj.shape[0]), _first_axis(obj, layout)
            entries.append(_renamed(entry, prefix))
    bad = [e for e in entries if e.unsupported is not None]
    readable = [e for e in entries if e.spec is not None]
    chosen, others = choose(path, readable, dim, layout) if readable else ([], [])
    # Conversion refuses what the reader would have read but cannot: an unsupported
    # dataset along the chosen axis. One the reader leaves out anyway is only listed.
    blocking = [e for e in bad if not chosen or _along(e, chosen[0], dim, layout)]
    if blocking and not skip_unsupported:
        reasons: dict[str, list[str]] = {}
        for entry in blocking:
            reasons.setdefault(str(entry.unsupported), []).append(repr(entry.name))
        problems = "; ".join(
            f"{names[0]} {reason}" if len(names) == 1 else f"{', '.join(names)}: {reason}"
            for reason, names in reasons.items()
        )
        advice = _advice(blocking)
        example = [e.name for e in chosen] or [e.name for e in entries]
        hint = (
            "pass skip_unsupported=True (--skip-unsupported) to leave them out, or "
            f"choose datasets with {fields_hint(example)}"
        )
        raise UnsupportedFeatureError(f"cannot read {path}: {problems}; {advice}{hint}")
    skipped.extend(Skipped(e.name, str(e.unsupported)) for e in bad)
    skipped.extend(Skipped(e.name, e.skip) for e in entries if e.skip is not None)
    if not readable:
        listing = "; ".join(str(s) for s in skipped) or "it holds no datasets"
        listing += f"; {_advice(bad).removesuffix('; ')}" if _advice(bad) else ""
        raise SchemaError(
            f"{path} holds no dataset with a first axis to read samples from ({listing})"
        )
    specs = _unique_specs(e.spec for e in chosen)
    left = [Skipped(e.name, axis_reason(e, chosen[0], layout)) for e in others] + skipped
    summary = left_out = None
    if left:
        summary = chosen_line(path, chosen, layout)
        left_out = left_out_line(path, left, together(others) or [s.name for s in left])
    return Discovery(specs, chosen[0].rows, tuple(left), summary, left_out, layout)


def _along(entry: _Entry, chosen: _Entry, dim: str | None, layout: str) -> bool:
    """Whether ``entry`` lies along the axis ``chosen`` was read along."""
    if dim is not None:
        return entry.axis == dim
    if layout == "anndata":
        return is_anndata_obs(entry.name) and entry.rows == chosen.rows
    return (entry.axis, entry.rows) == (chosen.axis, chosen.rows)


def _root(file: h5py.File, path: str, group: str | None) -> tuple[h5py.Group, str]:
    if group is None or group.strip("/") == "":
        return file, ""
    name = group.strip("/")
    obj = _get(file, name)
    if obj is None:
        groups = [g for g, o in file.items() if isinstance(o, h5py.Group)]
        raise FieldNotFoundError(
            f"{path}: no group {group!r} (group=, --group); groups at the top are {groups}"
        )
    if not isinstance(obj, h5py.Group):
        raise SchemaError(f"{path}: {group!r} is a dataset, not a group (group=, --group)")
    return obj, f"{name}/"


def _layout(file: h5py.File, group: str | None) -> str:
    """``anndata`` (read per cell), ``netcdf4`` or ``hdf5``. PyTables and pandas tables
    need no layout of their own: their ``TABLE`` datasets and ``_i_*`` groups tell."""
    if is_anndata(_attr(file, "encoding-type"), file.keys()):
        return "anndata" if group is None else "anndata-group"
    if "_NCProperties" in file.attrs:
        return "netcdf4"
    return "hdf5"


def _attr(obj: Any, name: str) -> str | None:
    try:
        value = obj.attrs.get(name)
    except (OSError, TypeError, ValueError, RuntimeError):
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def _get(file: h5py.Group, name: str) -> Any:
    if not name:
        return None
    try:
        return file.get(name)
    except (KeyError, OSError, ValueError, RuntimeError):
        return None


def _walk(root: h5py.Group, prefix: str) -> tuple[list[tuple[str, Any]], list[Skipped]]:
    """Every dataset (and sparse matrix group) reachable from ``root``, each once.

    Hard links are walked first, so an object is named by its own path; soft and
    external links then add what they alone reach. A link to data already found is
    listed as skipped rather than read twice; a dangling link likewise.
    """
    found: list[tuple[str, Any]] = []
    skipped: list[Skipped] = []
    seen: dict[tuple[Any, int], str] = {}
    links: list[tuple[str, h5py.Group, str, Any]] = []

    def add(path: str, obj: Any, how: str | None) -> None:
        key = (obj.id.fileno, int(h5py.h5o.get_info(obj.id).addr))
        if key in seen:
            if how is not None and isinstance(obj, h5py.Dataset):
                skipped.append(Skipped(path, f"is a {how}; the same data as {seen[key]!r}"))
            return
        seen[key] = path
        if isinstance(obj, h5py.Group):
            if path.rsplit("/", 1)[-1].startswith("_i_"):
                skipped.append(Skipped(path, "is a PyTables index, not data"))
            elif _attr(obj, "encoding-type") in _SPARSE_ENCODINGS or _attr(obj, "h5sparse_format"):
                found.append((path, obj))
            else:
                walk(obj, f"{path}/")
        elif isinstance(obj, h5py.Dataset):
            found.append((path, obj))

    def walk(group: h5py.Group, start: str) -> None:
        for name in group:
            path = f"{start}{name}"
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

    walk(root, "")
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
    return [(f"{prefix}{n}", o) for n, o in found], skipped


def _describe_type(dataset: h5py.Dataset) -> str:
    try:
        tid = dataset.id.get_type()
        kind = type(tid).__name__.removeprefix("Type").removesuffix("ID")
        return f"HDF5 {kind} type of {tid.get_size()} bytes"
    except Exception:  # the description is best effort; the dataset is refused anyway
        return "an HDF5 type"


def _classify(name: str, obj: Any, split: bool, layout: str) -> list[_Entry]:
    """The fields ``obj`` (at path ``name``) becomes, or why it is skipped or unsupported."""
    if isinstance(obj, h5py.Group):
        return [_sparse_entry(name, obj)]
    if _attr(obj, "CLASS") == "DIMENSION_SCALE" and (
        (_attr(obj, "NAME") or "").startswith(
            "This is a netCDF dimension but not a netCDF variable"
        )
    ):
        return [_Entry(name, name, skip="is a netCDF dimension without values")]
    if obj.shape is None:
        return [_Entry(name, name, skip="has an empty dataspace, so no values")]
    if len(obj.shape) == 0:
        return [_Entry(name, name, skip="is a scalar, with no first axis to read samples along")]
    try:
        dtype = obj.dtype
    except (TypeError, ValueError) as exc:
        return [
            _Entry(
                name, name, unsupported=f"has {_describe_type(obj)} that numpy cannot hold ({exc})"
            )
        ]
    missing = missing_filters(obj)
    if missing:
        return [
            _Entry(
                name,
                name,
                unsupported=f"is compressed with HDF5 filter {', '.join(missing)}, "
                "which is not available",
            )
        ]
    rows = tuple(obj.shape[1:])
    axis = _first_axis(obj, layout)
    if dtype.fields is not None and (split or _attr(obj, "CLASS") == "TABLE"):
        assert dtype.names is not None
        entries = [
            _member_entry(f"{name}/{m}", name, m, dtype.fields[m][0], rows) for m in dtype.names
        ]
    elif dtype.fields is not None and dtype.hasobject:
        entries = [
            _Entry(
                name,
                name,
                unsupported="is a compound with variable-length or reference members: "
                f"split_compound=True (--split-compound) makes each a field (dtype {dtype})",
            )
        ]
    else:
        entries = [_member_entry(name, name, None, dtype, rows)]
    for entry in entries:
        entry.rows, entry.axis = int(obj.shape[0]), axis
    return entries


def _sparse_entry(name: str, group: h5py.Group) -> _Entry:
    encoding = _attr(group, "encoding-type") or _attr(group, "h5sparse_format") or ""
    if not encoding.startswith("csr") or not {"data", "indices", "indptr"} <= set(group):
        return _Entry(
            name,
            name,
            skip=f"is a {encoding} sparse matrix, stored by column: its rows cannot be read "
            "one at a time (store it as CSR)",
        )
    try:
        rows = SparseRows(group)
    except (KeyError, OSError, TypeError, ValueError) as exc:
        return _Entry(name, name, skip=f"is a sparse matrix that cannot be read ({exc})")
    fld = Field(name, rows.dtype, rows.shape[1:], "array")
    return _Entry(name, name, spec=FieldSpec(fld, name, sparse=True), rows=rows.shape[0])


def _first_axis(dataset: h5py.Dataset, layout: str) -> str:
    """The name of a dataset's first dimension where the file names it (netCDF)."""
    if layout not in ("netcdf4", "hdf5"):
        return ""
    try:
        if _attr(dataset, "CLASS") == "DIMENSION_SCALE":
            return dataset.name.rsplit("/", 1)[-1]
        if "DIMENSION_LIST" not in dataset.attrs or not len(dataset.dims[0]):
            return ""
        return str(dataset.dims[0][0].name.rsplit("/", 1)[-1])
    except (KeyError, OSError, TypeError, ValueError, RuntimeError, IndexError):
        return ""


def _member_entry(
    name: str, dataset: str, member: str | None, dtype: np.dtype, rows: tuple[int, ...]
) -> _Entry:
    """A field for values of ``dtype`` in a dataset with per-sample shape ``rows``."""
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
                spec=FieldSpec(Field(name, np.dtype(np.uint8), (), "bytes"), dataset, member),
            )
        base = np.dtype(vlen)
        if base.hasobject or base.fields is not None or base.subdtype is not None:
            return _Entry(name, dataset, unsupported=f"has a nested variable-length type {dtype}")
        spec = FieldSpec(
            Field(name, base, (), "ragged"), dataset, member, None if base.isnative else base
        )
        return _Entry(name, dataset, spec=spec)
    if h5py.check_ref_dtype(dtype) is not None:
        return _Entry(
            name,
            dataset,
            unsupported=f"holds object references (dtype {dtype}), which mean nothing "
            "outside the file",
        )
    if dtype.hasobject:
        return _Entry(name, dataset, unsupported=f"holds Python objects (dtype {dtype})")
    shape, base = rows, dtype
    if dtype.subdtype is not None:
        base, inner = dtype.subdtype
        shape = rows + tuple(inner)
    try:
        fld = Field(name, base, shape, "array")
    except SchemaError as exc:
        return _Entry(name, dataset, unsupported=str(exc))
    return _Entry(name, dataset, spec=FieldSpec(fld, dataset, member))


def _advice(entries: Sequence[_Entry]) -> str:
    missing = [
        m.strip()
        for e in entries
        if e.unsupported and "HDF5 filter" in e.unsupported
        for m in e.unsupported.split("filter ", 1)[1].split(", which")[0].split(",")
    ]
    return f"{filter_advice(missing)}; " if missing else ""


def _requested(
    file: h5py.File, root: h5py.Group, prefix: str, path: str, name: str, split: bool
) -> list[_Entry]:
    """The entries of a dataset (or compound member) asked for by name."""
    wanted = name.strip("/")
    full = f"{prefix}{wanted}"
    obj = _get(file, full)
    entries: list[_Entry] | None = None
    if isinstance(obj, h5py.Dataset) or (
        isinstance(obj, h5py.Group) and _attr(obj, "encoding-type") in _SPARSE_ENCODINGS
    ):
        entries = _classify(full, obj, split, "hdf5")
    elif isinstance(obj, h5py.Group):
        raise SchemaError(
            f"{path}: {name!r} is a group, not a dataset (group=, --group selects a group)"
        )
    elif "/" in wanted:
        parent, member = full.rsplit("/", 1)
        dataset = _get(file, parent)
        if isinstance(dataset, h5py.Dataset) and member in _member_names(dataset):
            entries = [e for e in _classify(parent, dataset, True, "hdf5") if e.name == full]
    if entries is None:
        found, _ = _walk(root, prefix)
        available = [_relative(n, prefix) for p, d in found for n in _field_names(p, d, split)]
        raise FieldNotFoundError(
            f"{path}: no dataset {name!r}; datasets in the file are {available}"
        )
    out = []
    for entry in entries:
        if entry.skip is not None:
            raise SchemaError(f"{path}: dataset {entry.name!r} cannot be a field: it {entry.skip}")
        if entry.unsupported is not None:
            raise UnsupportedFeatureError(
                f"cannot read {path}: {entry.name!r} {entry.unsupported}; "
                f"{_advice([entry])}choose other datasets with fields= (--fields)"
            )
        out.append(_renamed(entry, prefix))
    return out


def _relative(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def _renamed(entry: _Entry, prefix: str) -> _Entry:
    """``entry`` with its field named relative to the selected group."""
    entry.name = _relative(entry.name, prefix)
    if not prefix or entry.spec is None:
        return entry
    spec = entry.spec
    fld = Field(
        _relative(spec.field.name, prefix), spec.field.dtype, spec.field.shape, spec.field.kind
    )
    entry.spec = FieldSpec(fld, spec.dataset, spec.member, spec.foreign_vlen, spec.sparse)
    return entry


def _member_names(dataset: h5py.Dataset) -> tuple[str, ...]:
    try:
        return tuple(dataset.dtype.names or ())
    except (TypeError, ValueError):
        return ()


def _field_names(path: str, obj: Any, split: bool) -> list[str]:
    table = isinstance(obj, h5py.Dataset) and _attr(obj, "CLASS") == "TABLE"
    members = _member_names(obj) if isinstance(obj, h5py.Dataset) and (split or table) else ()
    return [f"{path}/{m}" for m in members] if members else [path]


def _unique_specs(specs: Iterable[FieldSpec | None]) -> tuple[FieldSpec, ...]:
    out: dict[str, FieldSpec] = {}
    for spec in specs:
        if spec is not None:
            out.setdefault(spec.field.name, spec)  # a field asked for twice is read once
    return tuple(out.values())


def _rows(file: h5py.File, spec: FieldSpec) -> int:
    return len(open_spec(file, spec))
