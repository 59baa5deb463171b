"""MINC scaling (`decode_cf=True`): an `image` mapped to real values as nibabel maps it.

MINC1 (netCDF3) and MINC2 (HDF5) store an integer `image` with `image-min` and
`image-max` beside it: per volume (scalars) or per slice (along the image's first one
or two dimensions). A stored value `v` in the valid range `[dmin, dmax]` (the image's
`valid_range`, else its type's range) is `imin + (v - dmin) * (imax - imin) / (dmax -
dmin)`, as `nibabel.minc1.Minc1File._normalize` computes it, in float64. Per-slice
`image-min`/`image-max` share the image's first dimension, so they are fields read in
the same batch; the decoder takes each row's values from there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardio.core.errors import SchemaError
from shardio.core.schema import Field, Schema

__all__ = ["MincDecoder", "MincVariable", "hdf5_minc", "minc_decoders"]


@dataclass(frozen=True)
class MincVariable:
    """What the decoder needs of a variable: its attributes, dimension names and a way
    to load its (small) values."""

    attrs: Mapping[str, Any]
    dims: tuple[str, ...]
    load: Callable[[], np.ndarray]


@dataclass(frozen=True)
class MincDecoder:
    """Scales one MINC image field; `field` is the decoded (float64) field."""

    field: Field
    view: np.dtype  # the stored type as MINC means it (MINC1 `signtype`)
    low: float  # valid range
    high: float
    minimum: str | float  # a field name (per slice) or a constant
    maximum: str | float
    scale_dims: int  # leading image dimensions image-min/max run along

    def __call__(self, raw: np.ndarray, columns: Mapping[str, Any]) -> np.ndarray:
        data = np.asarray(raw)
        if data.dtype != self.view:
            data = data.astype(data.dtype.newbyteorder("="), copy=False).view(self.view)
        out = np.clip(data, self.low, self.high).astype(np.float64)
        lo, hi = self._bound(self.minimum, columns, out), self._bound(self.maximum, columns, out)
        slope = (hi - lo) / (self.high - self.low)
        out *= slope
        out += lo - self.low * slope
        return out

    def _bound(self, bound: str | float, columns: Mapping[str, Any], out: np.ndarray) -> Any:
        if not isinstance(bound, str):
            return bound
        values = np.asarray(columns[bound], dtype=np.float64)
        return values.reshape(values.shape + (1,) * (out.ndim - values.ndim))


def minc_decoders(
    path: str, schema: Schema, variable: Callable[[str], MincVariable | None]
) -> dict[str, MincDecoder]:
    """Decoders of the MINC images among `schema`'s fields (a field named ``image`` or
    ``.../image`` with ``image-min`` and ``image-max`` beside it)."""
    found = {}
    for fld in schema:
        if fld.name.rsplit("/", 1)[-1] != "image" or fld.kind != "array":
            continue
        image = variable(fld.name)
        bounds = [variable(fld.name + suffix) for suffix in ("-min", "-max")]
        if image is None or bounds[0] is None or bounds[1] is None:
            continue
        decoder = _decoder(path, schema, fld, image, bounds[0], bounds[1])
        if decoder is not None:
            found[fld.name] = decoder
    return found


def _decoder(
    path: str,
    schema: Schema,
    fld: Field,
    image: MincVariable,
    low: MincVariable,
    high: MincVariable,
) -> MincDecoder | None:
    if fld.dtype.kind not in "iu":
        return None  # floating-point images are stored as real values
    view = fld.dtype.newbyteorder("=")
    sign = _text(image.attrs.get("signtype"))
    if sign == "unsigned" and view.kind == "i":
        view = np.dtype(f"u{view.itemsize}")
    elif sign == "signed__" and view.kind == "u":
        view = np.dtype(f"i{view.itemsize}")
    info = np.iinfo(view)
    valid = _valid_range(image.attrs)
    dmin, dmax = valid if valid is not None else (float(info.min), float(info.max))
    if low.dims != high.dims or low.dims != image.dims[: len(low.dims)] or len(low.dims) > 2:
        raise SchemaError(
            f"{path}: MINC image {fld.name!r} has image-min/image-max along {low.dims} and "
            f"{high.dims}, not along its leading dimensions {image.dims}; read it as stored "
            "(leave decode_cf= out)"
        )
    bounds: list[str | float] = []
    for bound in (low, high):
        name = fld.name + ("-min" if bound is low else "-max")
        if not bound.dims:
            bounds.append(float(np.asarray(bound.load(), dtype=np.float64).reshape(())))
        elif name in schema.names:
            bounds.append(name)
        else:
            raise SchemaError(
                f"{path}: with decode_cf=, MINC image {fld.name!r} is scaled by its "
                f"per-slice {name!r}, which is not read: add it to fields= (--fields)"
            )
    decoded = Field(fld.name, np.dtype(np.float64), fld.shape, "array")
    return MincDecoder(decoded, view, dmin, dmax, bounds[0], bounds[1], len(low.dims))


def _valid_range(attrs: Mapping[str, Any]) -> tuple[float, float] | None:
    value = attrs.get("valid_range")
    if value is None and "valid_min" in attrs and "valid_max" in attrs:
        value = [attrs["valid_min"], attrs["valid_max"]]
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64).ravel()
    return (float(array[0]), float(array[1])) if array.size == 2 else None


def _text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode(errors="replace")
    return str(value) if value is not None else ""


def hdf5_minc(file: Any, datasets: Mapping[str, Any]) -> Callable[[str], MincVariable | None]:
    """The MINC2 lookup of an open h5py file whose fields read `datasets`: a field, or
    the ``-min``/``-max`` dataset beside one (found by its HDF5 path)."""

    def variable(name: str) -> MincVariable | None:
        dataset = datasets.get(name)
        if dataset is None:
            base, _, suffix = name.rpartition("-")
            image = datasets.get(base)
            if suffix not in ("min", "max") or image is None or not hasattr(image, "name"):
                return None
            dataset = file.get(f"{image.name}-{suffix}")
        if dataset is None or not hasattr(dataset, "shape") or not hasattr(dataset, "attrs"):
            return None
        attrs = dict(dataset.attrs)
        order = _text(attrs.get("dimorder"))
        dims = tuple(order.split(","))[: len(dataset.shape)] if order else ()
        return MincVariable(attrs, dims, lambda: np.asarray(dataset[()]))

    return variable
