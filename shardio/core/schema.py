"""Dataset schemas: named fields with a numpy dtype and a fixed or variable shape.

A schema is stored with the data (in a manifest, an LMDB key, HDF5 attributes or a
raw shard's metadata), so a reader needs nothing else to decode samples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import FieldNotFoundError, SchemaError

__all__ = [
    "Field",
    "FieldKind",
    "Schema",
    "Sample",
    "dtype_to_json",
    "dtype_from_json",
    "fit_dtype",
]

FieldKind = Literal["array", "ragged", "bytes"]
Sample = dict[str, Any]
_MAX_SAMPLE_NBYTES = 2**40  # no real sample is a TiB; a larger shape is a corrupt schema
"""One sample: field name -> ``np.ndarray`` (array and ragged fields) or ``bytes``."""


def dtype_to_json(dtype: np.dtype) -> Any:
    """A JSON-able description of ``dtype`` that keeps byte order, layout and structure."""
    if dtype.hasobject:
        raise SchemaError(f"dtype {dtype} holds Python objects and cannot be stored")
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return {"base": dtype_to_json(base), "shape": list(shape)}
    if dtype.fields is None:
        return dtype.str
    assert dtype.names is not None
    described: dict[str, Any] = {
        "names": list(dtype.names),
        "formats": [dtype_to_json(dtype.fields[n][0]) for n in dtype.names],
        "offsets": [int(dtype.fields[n][1]) for n in dtype.names],
        "itemsize": dtype.itemsize,
    }
    fields: dict[str, tuple[Any, ...]] = dict(dtype.fields)
    titles = [fields[n][2] if len(fields[n]) > 2 else None for n in dtype.names]
    if any(t is not None for t in titles):
        described["titles"] = titles
    return described


def dtype_from_json(value: Any) -> np.dtype:
    """Inverse of `dtype_to_json`."""
    if isinstance(value, str):
        return np.dtype(value)
    if "base" in value:
        return np.dtype((dtype_from_json(value["base"]), tuple(value["shape"])))
    described = {
        "names": value["names"],
        "formats": [dtype_from_json(f) for f in value["formats"]],
        "offsets": value["offsets"],
        "itemsize": value["itemsize"],
    }
    if "titles" in value:
        described["titles"] = value["titles"]
    return np.dtype(described)  # type: ignore[call-overload]


def fit_dtype(array: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """``array`` as ``dtype`` when its values fit, else `SchemaError` (``where``: what).

    Safe casts pass; within a kind (a later `int64` value for an `int8` field) every
    integer must lie in the field's range and a finite float must stay finite (floats
    round to the field's precision, as storing a float32 always does). No value is
    wrapped, clipped or turned into `inf`.
    """
    if array.dtype == dtype:
        return array
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise SchemaError(f"{where} expects dtype {dtype}, but got {array.dtype}")
    if np.can_cast(array.dtype, dtype, casting="safe") or array.size == 0:
        return array.astype(dtype)
    if dtype.kind in "iu" and array.dtype.kind in "biu":
        info = np.iinfo(dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise SchemaError(
                f"{where} is {dtype}, which holds {info.min}..{info.max}, but got {bad} "
                f"(as {array.dtype}); it would be stored as another number. Declare the "
                "field wider (schema=) or write the first sample with the wider dtype"
            )
        return array.astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(dtype)
    if dtype.kind in "fc":
        with np.errstate(invalid="ignore"):
            overflow = np.isfinite(array) & ~np.isfinite(converted)
        if overflow.any():
            bad = array.reshape(-1)[int(np.argmax(overflow.reshape(-1)))]
            raise SchemaError(
                f"{where} is {dtype}, but got {bad!r} (as {array.dtype}), which it stores "
                "as inf. Declare the field wider (schema=) or write the first sample "
                "with the wider dtype"
            )
    return converted


@dataclass(frozen=True)
class Field:
    """A named field of every sample.

    ``kind="array"``: an ndarray of ``dtype`` and fixed ``shape`` (``()`` for a scalar).
    ``kind="ragged"``: a 1-D ndarray of ``dtype`` whose length varies per sample.
    ``kind="bytes"``: a ``bytes`` value of varying length (an encoded JPEG, say).
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...] = ()
    kind: FieldKind = "array"

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SchemaError(f"field name should be a non-empty string, but got {self.name!r}")
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.kind not in ("array", "ragged", "bytes"):
            raise SchemaError(
                f"field {self.name!r}: kind should be 'array', 'ragged' or 'bytes', "
                f"but got kind={self.kind!r}"
            )
        if any(size < 0 for size in self.shape) or (
            math.prod(self.shape) * self.dtype.itemsize > _MAX_SAMPLE_NBYTES
        ):
            raise SchemaError(
                f"field {self.name!r}: shape {self.shape} of {self.dtype} is not a sample's "
                f"shape (negative, or over {_MAX_SAMPLE_NBYTES} bytes)"
            )
        if self.kind == "bytes":
            object.__setattr__(self, "dtype", np.dtype(np.uint8))  # bytes are uint8 on disk
        if self.kind != "array" and self.shape:
            raise SchemaError(f"field {self.name!r}: a {self.kind} field has no fixed shape")
        if self.dtype.hasobject:
            raise SchemaError(f"field {self.name!r}: dtype {self.dtype} holds Python objects")

    @property
    def variable(self) -> bool:
        """True for ragged and bytes fields, whose size differs per sample."""
        return self.kind != "array"

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one sample of a fixed-size field (0 for variable fields)."""
        if self.variable:
            return 0
        return self.dtype.itemsize * math.prod(self.shape)  # math.prod: on the read path

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": dtype_to_json(self.dtype),
            "shape": list(self.shape),
            "kind": self.kind,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Field:
        try:
            return cls(
                name=data["name"],
                dtype=dtype_from_json(data["dtype"]),
                shape=tuple(data.get("shape", ())),
                kind=data.get("kind", "array"),
            )
        except SchemaError:
            raise
        except Exception as exc:  # np.dtype() parses text and raises many kinds
            raise SchemaError(f"malformed field description {data!r:.200}: {exc}") from exc

    def validate(self, value: Any, where: str = "sample") -> np.ndarray | bytes:
        """Return ``value`` coerced to this field, or raise `SchemaError`."""
        if self.kind == "bytes":
            if isinstance(value, (bytes, bytearray, memoryview)):
                return bytes(value)
            if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
                return value.tobytes()
            raise SchemaError(
                f"{where}: field {self.name!r} expects bytes, but got {type(value).__name__}"
            )
        array = fit_dtype(np.asarray(value), self.dtype, f"{where}: field {self.name!r}")
        if self.kind == "ragged":
            if array.ndim != 1:
                raise SchemaError(
                    f"{where}: ragged field {self.name!r} expects a 1-D array, "
                    f"but got shape {array.shape}"
                )
        elif array.shape != self.shape:
            raise SchemaError(
                f"{where}: field {self.name!r} expects shape {self.shape}, "
                f"but got shape {array.shape}"
            )
        return array


@dataclass(frozen=True)
class Schema:
    """The ordered fields of a dataset."""

    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        names = [f.name for f in self.fields]
        if not names:
            raise SchemaError("a schema needs at least one field")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SchemaError(f"field names must be unique, but {duplicates} appear twice")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def __getitem__(self, name: str) -> Field:
        for field in self.fields:
            if field.name == name:
                return field
        raise FieldNotFoundError(f"no field {name!r}; the dataset has fields {list(self.names)}")

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Any:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    @property
    def fixed_sample_nbytes(self) -> int:
        """Bytes of one sample's fixed-size fields."""
        return sum(f.sample_nbytes for f in self.fields)

    @property
    def has_variable(self) -> bool:
        return any(f.variable for f in self.fields)

    def select(self, names: Iterable[str] | None, where: str = "dataset") -> Schema:
        """The sub-schema of ``names`` (in that order); every name must exist."""
        if names is None:
            return self
        if isinstance(names, str):
            names = [names]
        names = list(names)
        missing = [n for n in names if n not in self.names]
        if missing:
            raise FieldNotFoundError(
                f"{where}: no field {missing[0]!r}; available fields are {list(self.names)}"
            )
        return Schema(tuple(self[n] for n in names))

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.fields]

    @classmethod
    def from_json(cls, data: Any) -> Schema:
        if not isinstance(data, list):
            raise SchemaError(f"a schema should be a list of fields, but got {type(data).__name__}")
        return cls(tuple(Field.from_json(item) for item in data))

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def loads(cls, text: str | bytes) -> Schema:
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise SchemaError(f"schema is not valid JSON: {exc}") from exc

    @classmethod
    def infer(cls, sample: Mapping[str, Any]) -> Schema:
        """Infer a schema from one sample: bytes -> bytes field, arrays -> array fields."""
        if not isinstance(sample, Mapping) or not sample:
            raise SchemaError(
                f"a sample should be a non-empty dict of field -> value, but got {sample!r:.80}"
            )
        fields = []
        for name, value in sample.items():
            if isinstance(value, (bytes, bytearray, memoryview)):
                fields.append(Field(str(name), np.dtype(np.uint8), (), "bytes"))
            else:
                array = np.asarray(value)
                if array.dtype.hasobject:
                    raise SchemaError(
                        f"field {name!r}: cannot store a {type(value).__name__} "
                        "(expected a numpy array, a number or bytes)"
                    )
                if array.dtype.kind == "U":
                    raise SchemaError(
                        f"field {name!r}: store text as bytes (str.encode()), not {array.dtype}"
                    )
                fields.append(Field(str(name), array.dtype, array.shape, "array"))
        return cls(tuple(fields))

    @classmethod
    def infer_batch(cls, batch: Mapping[str, Any]) -> Schema:
        """Infer a schema from columns with a leading sample axis.

        A list column of 1-D arrays whose lengths differ becomes a ragged field; a
        list of bytes a bytes field.
        """
        if not isinstance(batch, Mapping) or not batch:
            raise SchemaError(
                f"a batch should be a non-empty dict of field -> column, got {batch!r:.80}"
            )
        fields = []
        for name, column in batch.items():
            if isinstance(column, np.ndarray):
                if column.ndim == 0:
                    raise SchemaError(f"field {name!r}: a batch column needs a leading axis")
                fields.append(Field(str(name), column.dtype, column.shape[1:]))
                continue
            values = list(column)
            if not values:
                raise SchemaError(f"field {name!r}: cannot infer a schema from an empty column")
            arrays = [
                np.asarray(v) for v in values if not isinstance(v, (bytes, bytearray, memoryview))
            ]
            shapes = {a.shape for a in arrays}
            if len(arrays) == len(values) and len(shapes) > 1 and all(a.ndim == 1 for a in arrays):
                fields.append(Field(str(name), np.result_type(*arrays), (), "ragged"))
            else:
                fields.append(cls.infer({name: values[0]}).fields[0])
        return cls(tuple(fields))
