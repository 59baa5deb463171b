"""netCDF3 backend: classic (``CDF\\x01``) and 64-bit offset (``CDF\\x02``) files.

Read-only, through scipy's reader (`scipy.io.netcdf_file`) with ``mmap=True``: each
variable is a view of the mapped file, so opening copies nothing and a batch copies
only its rows. The variables that become fields follow the rule every array format
follows (`_array_choice`): those along the first dimension most variables share
(the record dimension, usually ``time``), or ``dim=``. A 2-D ``char`` variable (a
string per row) is a bytes field. Values are as stored (big-endian, packed);
``decode_cf=True`` unpacks them as xarray does (see `shardio.storage.cf`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.io import netcdf_file

from shardio.core.errors import (
    DatasetNotFoundError,
    FieldNotFoundError,
    FieldsChosenWarning,
    SchemaError,
    ShardCorruptError,
    UnknownFormatError,
    UnsupportedFeatureError,
)
from shardio.core.schema import Field, Schema
from shardio.core.warn import warn_user

from ...cf import CFFields
from ...minc import MincVariable
from .._array_choice import Choice, axis_reason, choose, chosen_line, left_out_line, together
from ..base import Columns, ShardReader
from ..source import Skipped

__all__ = ["SIGNATURES", "NetCDF3Reader"]

#: The first bytes of the two netCDF3 variants scipy reads.
SIGNATURES = (b"CDF\x01", b"CDF\x02")


@dataclass
class _Open:
    file: Any  # scipy.io.netcdf_file
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # views of the mapping


class NetCDF3Reader(ShardReader[_Open]):
    """Reads a netCDF3 classic or 64-bit offset file (``.nc``, as scipy and netCDF-C
    write them); ``dim=`` reads the variables along that dimension."""

    format = "netcdf3"
    maps_files = True
    options = frozenset({"dim", "decode_cf"})

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(path, **options)
        self._cf: CFFields | None = None

    def _open(self) -> _Open:
        _check_signature(self.path)
        try:
            file = netcdf_file(self.path, "r", mmap=True, maskandscale=False)
        except FileNotFoundError:
            raise DatasetNotFoundError(f"netCDF3 file {self.path} does not exist") from None
        except (OSError, TypeError, ValueError) as exc:
            raise ShardCorruptError(f"cannot read netCDF3 file {self.path}: {exc}") from exc
        handle = _Open(file)
        try:
            names = self._names(file)
            fields = []
            for name in names:
                variable = file.variables[name]
                data = variable.data
                handle.arrays[name] = data
                fields.append(_field(name, data))
            schema = Schema(tuple(fields))
            if self.backend_options.get("decode_cf", False):
                self._cf = CFFields(
                    schema,
                    lambda n: _attributes(file.variables[n]),
                    minc=lambda n: _minc_variable(file, n),
                    path=self.path,
                )
                schema = self._cf.schema
            self._schema = schema
            self._length = int(handle.arrays[names[0]].shape[0])
        except BaseException:
            self._close(handle)
            raise
        return handle

    def _names(self, file: Any) -> list[str]:
        """The variables read: those asked for, or those the shared rule picks."""
        variables = file.variables
        if self.requested_fields is not None:
            missing = [n for n in self.requested_fields if n not in variables]
            if missing:
                raise FieldNotFoundError(
                    f"{self.path}: no variable {missing[0]!r}; variables are {sorted(variables)}"
                )
            names = list(dict.fromkeys(self.requested_fields))
            lengths = {n: _rows(variables[n].data) for n in names}
            if len(set(lengths.values())) > 1 or None in lengths.values():
                listing = ", ".join(f"{n!r}: {length}" for n, length in lengths.items())
                raise SchemaError(
                    f"{self.path}: the variables asked for disagree on their first axis "
                    f"({listing}); pick variables along one dimension with fields= (--fields)"
                )
            return names
        candidates, skipped = [], []
        for name in sorted(variables):
            variable = variables[name]
            reason = _unreadable(variable)
            if reason is not None:
                skipped.append(Skipped(name, reason))
            else:
                rows = _rows(variable.data)
                assert rows is not None
                candidates.append(Choice(name, name, rows, variable.dimensions[0]))
        if not candidates:
            listing = "; ".join(str(s) for s in skipped) or "it holds no variables"
            raise SchemaError(
                f"{self.path} holds no variable with a first axis to read samples from ({listing})"
            )
        picked, others = choose(self.path, candidates, self.backend_options.get("dim"), "netcdf3")
        left = [Skipped(c.name, axis_reason(c, picked[0], "netcdf3")) for c in others] + skipped
        if left:
            example = together(others) or [s.name for s in left]
            for line in (
                chosen_line(self.path, picked, "netcdf3"),
                left_out_line(self.path, left, example),
            ):
                warn_user(line, FieldsChosenWarning)
        return [c.name for c in picked]

    def _close(self, handle: _Open) -> None:
        handle.arrays.clear()
        with warnings.catch_warnings():
            # scipy warns when views it handed out are alive; read_many copies rows,
            # so only a caller's own view of a variable can be, and the map stays
            # valid for it until it goes (the file descriptor is closed either way).
            warnings.simplefilter("ignore", RuntimeWarning)
            handle.file.close()

    def read_many(self, indices: np.ndarray) -> Columns:
        arrays = self.handle.arrays
        columns: Columns = {}
        for fld in self.schema:
            rows = np.take(arrays[fld.name], indices, axis=0)  # a copy, never a view
            if not rows.dtype.isnative:
                rows = rows.astype(rows.dtype.newbyteorder("="))  # big-endian as stored
            self.bytes_read += rows.nbytes
            if fld.kind == "bytes":
                columns[fld.name] = [row.tobytes().rstrip(b"\0") for row in rows]
            else:
                columns[fld.name] = rows
        return self._cf(columns) if self._cf else columns


def _check_signature(path: str) -> None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"netCDF3 file {path} does not exist") from None
    except OSError as exc:
        raise ShardCorruptError(f"cannot read netCDF3 file {path}: {exc}") from exc
    if head in SIGNATURES:
        return
    if head == b"CDF\x05":
        raise UnsupportedFeatureError(
            f"{path} is a netCDF 64-bit data (CDF-5) file, which scipy cannot read; "
            "convert it with `nccopy -k nc4 in.nc out.nc` and read out.nc"
        )
    from ..registry import signature_format  # the registry names this module

    found = signature_format(path)
    if found is not None and found != "netcdf3":
        raise UnknownFormatError(
            f"{path} is a {found} file, not netCDF3: read it with format={found!r} "
            f"(--format {found}), or leave format= out to detect it"
        )
    raise ShardCorruptError(
        f"{path} is not a netCDF3 file: it starts with {head!r}, expected {SIGNATURES[0]!r} "
        f"or {SIGNATURES[1]!r}"
    )


def _rows(data: np.ndarray) -> int | None:
    return int(data.shape[0]) if data.ndim else None


def _unreadable(variable: Any) -> str | None:
    """Why a variable cannot be a field, or None."""
    data = variable.data
    if data.ndim == 0:
        return "is a scalar, with no first axis to read samples along"
    if data.dtype.kind == "S" and data.ndim == 1:
        return "is one string (a netCDF char variable without a row axis)"
    if data.dtype.kind == "S" and data.ndim > 2:
        return "holds strings in more than one dimension"
    return None


def _field(name: str, data: np.ndarray) -> Field:
    if data.dtype.kind == "S":  # (rows, string length) chars: one string per row
        return Field(name, np.dtype(np.uint8), (), "bytes")
    # Rows come back in native byte order (netCDF3 stores big-endian; torch has no such
    # types), so the schema says native too.
    return Field(name, data.dtype.newbyteorder("="), tuple(data.shape[1:]), "array")


def _attributes(variable: Any) -> dict[str, Any]:
    return {
        key: value.decode(errors="replace") if isinstance(value, bytes) else value
        for key, value in variable._attributes.items()
    }


def _minc_variable(file: Any, name: str) -> MincVariable | None:
    variable = file.variables.get(name)
    if variable is None:
        return None
    return MincVariable(
        _attributes(variable), tuple(variable.dimensions), lambda: np.array(variable.data)
    )
