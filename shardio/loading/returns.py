"""`returns=`: the structure a sample and a batch take, picked from the fields by name.

A hand-written Dataset usually returns a tuple (`return image, label`), and the
training loop unpacks it (`for images, labels in loader`). `returns=("image", "label")`
gives a `ShardedDataset` the same shape: a field name picks that field, a tuple or list
of names gives a tuple, a dict of key -> name gives a dict with those keys, nested as
deep as needed. The same structure holds one sample (`ds[i]`) and one collated batch
(tensors stacked on a first axis), as `default_collate` would build from the tuples.

Without `returns=`, a batch is a `FieldBatch`: a dict of field -> tensor that refuses
to be unpacked (`images, labels = batch` would give the key strings) with an error
naming `returns=`.
"""

from __future__ import annotations

import dis
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from shardio.core.errors import FieldNotFoundError, InvalidOptionError

__all__ = ["FieldBatch", "Returns", "ReturnsSpec"]

ReturnsSpec = Any
"""A field name, a tuple or list of specs, or a dict of key -> spec."""

_UNPACK = frozenset(dis.opmap[name] for name in ("UNPACK_SEQUENCE", "UNPACK_EX"))


class Returns:
    """A checked `returns=` spec; calling it on a mapping of field -> value picks the
    structure. Picklable (it holds names only), so spawned workers get it."""

    __slots__ = ("spec",)

    def __init__(self, spec: ReturnsSpec, fields: tuple[str, ...]) -> None:
        _check(spec, fields, "returns")
        self.spec = spec

    def __call__(self, values: Mapping[str, Any]) -> Any:
        return _pick(self.spec, values)

    def __getstate__(self) -> ReturnsSpec:
        return self.spec

    def __setstate__(self, spec: ReturnsSpec) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        return f"Returns({self.spec!r})"


def _check(spec: ReturnsSpec, fields: tuple[str, ...], where: str) -> None:
    if isinstance(spec, str):
        if spec not in fields:
            raise FieldNotFoundError(
                f"{where} names field {spec!r}, which the dataset does not have; "
                f"its fields are {list(fields)}"
            )
    elif isinstance(spec, (tuple, list)):
        if not spec:
            raise InvalidOptionError(f"{where} is an empty {type(spec).__name__}: name a field")
        for i, item in enumerate(spec):
            _check(item, fields, f"{where}[{i}]")
    elif isinstance(spec, Mapping):
        if not spec:
            raise InvalidOptionError(f"{where} is an empty dict: map keys to field names")
        for key, item in spec.items():
            _check(item, fields, f"{where}[{key!r}]")
    else:
        raise InvalidOptionError(
            f"{where} should be a field name, a tuple of field names or a dict of "
            f"key -> field name, but got {where}={spec!r}"
        )


def _pick(spec: ReturnsSpec, values: Mapping[str, Any]) -> Any:
    if isinstance(spec, str):
        return values[spec]
    if isinstance(spec, (tuple, list)):
        return tuple(_pick(item, values) for item in spec)
    return {key: _pick(item, values) for key, item in spec.items()}


class FieldBatch(dict[str, Any]):
    """A collated batch: field -> tensor (a list for variable fields).

    A plain dict in every way but one: unpacking it (`images, labels = batch`, or
    `for images, labels in loader`) raises an error naming `returns=`, instead of
    handing the loop the key strings."""

    __slots__ = ()

    def __iter__(self) -> Iterator[str]:
        # NOTE: `for k in batch`, `list(batch)` and `dict(batch)` iterate as a dict does;
        # only the caller's UNPACK_SEQUENCE / UNPACK_EX instruction (tuple unpacking)
        # is refused. CPython only; elsewhere unpacking gives the keys, as a dict does.
        frame = sys._getframe(1)
        code = frame.f_code.co_code
        if 0 <= frame.f_lasti < len(code) and code[frame.f_lasti] in _UNPACK:
            names = tuple(self.keys())
            raise InvalidOptionError(
                f"this batch is a dict of field -> tensor with fields {list(names)}; "
                "unpacking it would give the key strings. Pass "
                f"returns={names!r} to ShardedDataset to get tuples, or read "
                f"batch[{names[0]!r}]"
                if names
                else "this batch is an empty dict: unpacking it gives nothing"
            )
        return super().__iter__()

    def __reduce__(self) -> Any:
        return FieldBatch, (dict(self),)
