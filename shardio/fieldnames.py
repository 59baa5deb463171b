"""One rule for the names of fields written by shardio, valid in every backend.

Zarr and HDF5 store a field as a node of a hierarchy (`/` separates groups), Zarr
reads `\\` as `/`, a variable field `v` is stored as `v.data` and `v.offsets`, and a
raw shard keeps names in JSON. A name breaking any of these would be written where no
reader looks (and read back as zeros), so every writer checks the names of its schema
here, once, before any shard is started.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import SchemaError

__all__ = ["FIELD_NAME_RULE", "check_field_names"]

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
