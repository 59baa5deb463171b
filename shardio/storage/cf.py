"""CF decoding (`decode_cf=True`): packed values unpacked as xarray unpacks them.

Files written by netCDF tools store values packed: `scale_factor` and `add_offset`
turn stored integers into physical values, `_FillValue` and `missing_value` mark
missing ones, and a time variable counts `units` ("hours since 2000-01-01") from an
epoch. shardio reads values as stored by default; with `decode_cf=True` each field
that carries these attributes is decoded per batch, following xarray's rules
(`xarray.coding.variables`): missing values become NaN (NaT for times), packed
values a float type chosen as xarray chooses it, times `datetime64[ns]` (standard,
gregorian and proleptic_gregorian calendars; others stay as stored).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardio.core.schema import Field, Schema

from .minc import MincDecoder, MincVariable, minc_decoders

__all__ = ["CFDecoder", "CFFields", "cf_decoder"]

_TIME_UNITS = {
    "days": "D",
    "day": "D",
    "d": "D",
    "hours": "h",
    "hour": "h",
    "h": "h",
    "minutes": "m",
    "minute": "m",
    "min": "m",
    "seconds": "s",
    "second": "s",
    "s": "s",
    "milliseconds": "ms",
    "microseconds": "us",
    "nanoseconds": "ns",
}
_STANDARD_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")
_SINCE = re.compile(r"^\s*(\w+)\s+since\s+(.+?)\s*$")
#: A CF reference date as netCDF tools write it: "1996-1-1", "1900-01-01 00:00:0.0".
_DATE = re.compile(
    r"^(-?\d{1,4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2}):(\d{1,2})(?::(\d{1,2})(\.\d*)?)?)?$"
)


@dataclass(frozen=True)
class CFDecoder:
    """Decodes one field's stored rows; `field` is the decoded field."""

    field: Field
    fills: tuple[Any, ...] = ()
    scale: Any = None
    offset: Any = None
    epoch: np.datetime64 | None = None
    step: np.timedelta64 | None = None

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.epoch is not None:
            return self._times(raw)
        data = np.array(raw, dtype=self.field.dtype, copy=True)
        if self.fills:
            missing = np.zeros(raw.shape, dtype=bool)
            for fill in self.fills:
                missing |= raw == fill
            data[missing] = np.nan
        if self.scale is not None:
            data *= self.scale
        if self.offset is not None:
            data += self.offset
        return data

    def _times(self, raw: np.ndarray) -> np.ndarray:
        assert self.epoch is not None and self.step is not None
        missing = np.zeros(raw.shape, dtype=bool)
        for fill in self.fills:
            missing |= raw == fill
        values = raw.astype(np.float64)
        if self.scale is not None:
            values = values * self.scale
        if self.offset is not None:
            values = values + self.offset
        missing |= ~np.isfinite(values)
        step_ns = self.step / np.timedelta64(1, "ns")
        nanoseconds = np.where(missing, 0, np.round(values * step_ns)).astype(np.int64)
        out = self.epoch.astype("datetime64[ns]") + nanoseconds.astype("timedelta64[ns]")
        out[missing] = np.datetime64("NaT")
        return out


class CFFields:
    """The decoders of a schema's fields (those whose attributes ask for decoding):
    `schema` is the decoded schema, and calling it decodes a batch's columns."""

    __slots__ = ("decoders", "schema")

    def __init__(
        self,
        schema: Schema,
        attributes: Callable[[str], Mapping[str, Any]],
        minc: Callable[[str], MincVariable | None] | None = None,
        path: str = "",
    ) -> None:
        """`minc` looks a variable up by name, for MINC files (`shardio.storage.minc`)."""
        self.decoders: dict[str, CFDecoder | MincDecoder] = {
            f.name: decoder
            for f in schema
            if (decoder := cf_decoder(f, attributes(f.name))) is not None
        }
        if minc is not None:
            self.decoders.update(minc_decoders(path, schema, minc))
        self.schema = Schema(
            tuple(self.decoders[f.name].field if f.name in self.decoders else f for f in schema)
        )

    def __bool__(self) -> bool:
        return bool(self.decoders)

    def __call__(self, columns: dict[str, Any]) -> dict[str, Any]:
        raw = dict(columns)  # MINC scaling reads its image-min/max rows as stored
        for name, decoder in self.decoders.items():
            if name in columns:
                if isinstance(decoder, MincDecoder):
                    columns[name] = decoder(columns[name], raw)
                else:
                    columns[name] = decoder(columns[name])
        return columns

    def raw_out(self, out: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """The arrays of `out` the raw rows may be read into: those of fields no decoder
        changes (a decoded field is read apart and copied in by `into`)."""
        return {name: array for name, array in out.items() if name not in self.decoders}

    def into(self, columns: dict[str, Any], out: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Decode `columns`, then copy each decoded field into its array in `out` (the
        raw rows were read apart: their dtype is not the decoded one)."""
        self(columns)
        for name in self.decoders:
            target = out.get(name)
            if target is not None and name in columns:
                target[...] = columns[name]
                columns[name] = target
        return columns


def cf_decoder(field: Field, attrs: Mapping[str, Any]) -> CFDecoder | None:
    """The decoder of a field with these attributes, or None where nothing decodes."""
    if field.kind != "array" or field.dtype.kind not in "iuf":
        return None
    fills = tuple(
        value
        for key in ("_FillValue", "missing_value")
        if (value := _scalar(attrs.get(key))) is not None
        and not (isinstance(value, float) and np.isnan(value))
    )
    scale = _scalar(attrs.get("scale_factor"))
    offset = _scalar(attrs.get("add_offset"))
    time = _time(attrs)
    if time is not None:
        epoch, step = time
        decoded = Field(field.name, np.dtype("datetime64[ns]"), field.shape, "array")
        return CFDecoder(decoded, fills, scale, offset, epoch, step)
    if not fills and scale is None and offset is None:
        return None
    if scale is not None or offset is not None:
        dtype = np.dtype(_packed_float(field.dtype, attrs))
    elif field.dtype.kind == "f":
        dtype = field.dtype.newbyteorder("=")
    else:
        dtype = np.dtype(np.float32 if field.dtype.itemsize <= 2 else np.float64)
    decoded = Field(field.name, dtype, field.shape, "array")
    return CFDecoder(decoded, fills, scale, offset)


def _scalar(value: Any) -> Any:
    if value is None:
        return None
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iuf":
        return None
    return array.reshape(()).item() if array.dtype.kind != "f" else array.reshape(())[()]


def _packed_float(dtype: np.dtype, attrs: Mapping[str, Any]) -> type[np.floating[Any]]:
    """xarray's `_choose_float_dtype` for packed data."""
    scale = _scalar(attrs.get("scale_factor"))
    offset = _scalar(attrs.get("add_offset"))
    scale_type = np.dtype(type(scale)) if scale is not None else None
    offset_type = np.dtype(type(offset)) if offset is not None else None
    if (
        scale_type is not None
        and offset_type == scale_type
        and scale_type in (np.float32, np.float64)
    ):
        if dtype.itemsize == 4 and dtype.kind in "iu":
            return np.float64
        return scale_type.type
    if offset is not None:
        return np.float64
    assert scale_type is not None
    return scale_type.type


def _epoch(reference: str) -> np.datetime64 | None:
    """The reference date of a CF time unit (unpadded fields allowed, as udunits reads)."""
    match = _DATE.match(reference)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction = match.groups()
    text = f"{int(year):04d}-{int(month):02d}-{int(day):02d}T{int(hour or 0):02d}:"
    text += f"{int(minute or 0):02d}:{int(second or 0):02d}"
    digits = (fraction or ".").lstrip(".")[:9]
    try:
        return np.datetime64(text, "ns") + np.timedelta64(int(digits.ljust(9, "0")), "ns")
    except ValueError:
        return None


def _time(attrs: Mapping[str, Any]) -> tuple[np.datetime64, np.timedelta64] | None:
    units = attrs.get("units")
    if isinstance(units, bytes):
        units = units.decode(errors="replace")
    if not isinstance(units, str):
        return None
    calendar = attrs.get("calendar", "standard")
    if isinstance(calendar, bytes):
        calendar = calendar.decode(errors="replace")
    if str(calendar).lower() not in _STANDARD_CALENDARS:
        return None
    match = _SINCE.match(units)
    if match is None or match.group(1).lower() not in _TIME_UNITS:
        return None
    reference = match.group(2).strip().removesuffix("UTC").removesuffix("Z").strip()
    reference = re.sub(r"[+-]00:?00$", "", reference).strip()
    epoch = _epoch(reference)
    if epoch is None:
        return None
    step: np.timedelta64 = np.timedelta64(1, _TIME_UNITS[match.group(1).lower()])  # type: ignore[call-overload]
    return epoch, step
