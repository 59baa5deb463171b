"""One rule for the names of fields written by shardio, valid in every backend.

Zarr and HDF5 store a field as a node of a hierarchy (`/` separates groups), Zarr
reads `\\` as `/`, a variable field `v` is stored as `v.data` and `v.offsets`, and a
raw shard keeps names in JSON. A name breaking any of these would be written where no
reader looks (and read back as zeros), so every writer checks the names of its schema
here, once, before any shard is started.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import SchemaError
from .schema import Schema

__all__ = ["FIELD_NAME_RULE", "check_field_dtypes", "check_field_names"]

FIELD_NAME_RULE = (
    "a field name is a non-empty string of `/`-separated parts; no part is empty, `.`, "
    "`..`, `zarr.json` or starts with `.z` or `__`; no NUL or `\\`; no name is a group of "
    "another (`a` with `a/b`) or another's stored `NAME.data`/`NAME.offsets`"
)

_RESERVED_PARTS = frozenset({".", "..", "zarr.json"})
_VARIABLE_SUFFIXES = (".data", ".offsets")


def _bad_part(name: str) -> str | None:
    """Why ``name`` alone breaks the rule, or None."""
    if not isinstance(name, str) or not name:
        return "it is not a non-empty string"
    for char, what in (("\x00", "NUL"), ("\\", "`\\`")):
        if char in name:
            return f"it contains {what}"
    for part in name.split("/"):
        if not part:
            return "it has an empty part (a leading, trailing or doubled `/`)"
        if part in _RESERVED_PARTS or part.startswith((".z", "__")):
            return f"it has the reserved part {part!r}"
    return None


def check_field_names(names: Iterable[str], where: str = "schema") -> None:
    """Raise `SchemaError` stating the rule if any of ``names`` breaks it."""
    names = list(names)
    for name in names:
        reason = _bad_part(name)
        if reason is not None:
            raise SchemaError(
                f"{where}: field name {name!r} cannot be stored: {reason}; {FIELD_NAME_RULE}"
            )
    given = set(names)
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            group = "/".join(parts[:depth])
            if group in given:
                raise SchemaError(
                    f"{where}: field names {group!r} and {name!r} collide ({group!r} would "
                    f"be a group holding {name!r}); {FIELD_NAME_RULE}"
                )
        for suffix in _VARIABLE_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in given:
                raise SchemaError(
                    f"{where}: field names {name[: -len(suffix)]!r} and {name!r} collide "
                    f"(a variable field {name[: -len(suffix)]!r} is stored as {name!r}); "
                    f"{FIELD_NAME_RULE}"
                )


_NOT_STORED = {
    "U": "bytes (`text.encode()`) or a fixed-size `S` dtype",
}


def _refused(dtype: np.dtype) -> str | None:
    """What to store instead of ``dtype`` where not every backend stores it alike."""
    if dtype.subdtype is not None:
        return _refused(dtype.subdtype[0])
    if dtype.fields is not None:
        return next((r for n in dtype.fields if (r := _refused(dtype.fields[n][0]))), None)
    if dtype.kind in _NOT_STORED:
        return _NOT_STORED[dtype.kind]
    if dtype.kind in "fc" and dtype.itemsize > (8 if dtype.kind == "f" else 16):
        return "float64 (or complex128)"  # longdouble: Zarr and torch have none
    return None


def check_field_dtypes(schema: Schema, where: str = "schema") -> None:
    """Refuse dtypes that not every backend (and torch's collate) stores alike: one
    rule and one message for all of them."""
    for fld in schema:
        instead = _refused(fld.dtype)
        if instead is not None:
            raise SchemaError(
                f"{where}: field {fld.name!r} has dtype {fld.dtype}, which not every "
                f"backend stores; store it as {instead}"
            )
