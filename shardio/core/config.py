"""Small, dependency-free option parsing shared by every layer."""

from __future__ import annotations

import math
import numbers
import re

from .errors import InvalidOptionError

__all__ = ["parse_size", "format_size", "positive_int", "size_label"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
#: How many bytes of values a stored byte may stand for (compression, fill values), at
#: most: a file or manifest claiming more samples than its size allows is refused before
#: anything is allocated for what it claims.
MAX_EXPANSION = 8192
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def positive_int(value: object, option: str) -> int:
    """``value`` as an ``int`` when it is an integer >= 1 (a bool is not); otherwise an
    `InvalidOptionError` that names ``option`` and the value given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidOptionError(f"{option} should be an integer >= 1, but got {option}={value!r}")
    return int(value)


def parse_size(value: int | float | str, option: str = "size") -> int:
    """Return a byte count from ``512MB``, ``1.5GiB``, ``4096`` or an int.

    Decimal units (KB, MB, GB) are powers of 1000 and binary units (KiB, MiB, GiB)
    powers of 1024, as in the SI/IEC convention.
    """
    if isinstance(value, bool):
        raise InvalidOptionError(f"{option} should be a size such as '512MB', but got {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidOptionError(
                f"{option} should be a finite size such as '512MB' or 4096, but got "
                f"{option}={value!r}"
            )
        if value < 0:
            raise InvalidOptionError(f"{option} should be >= 0 bytes, but got {option}={value!r}")
        return int(value)
    match = _SIZE_RE.match(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InvalidOptionError(
            f"{option} should be a size such as '512MB', '1.5GiB' or 4096, "
            f"but got {option}={value!r}"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(nbytes: float) -> str:
    """Human-readable binary size: ``format_size(3 * 2**20) == '3.0 MiB'``."""
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def size_label(value: int | float | str) -> str:
    """A size as the user wrote it: ``"512MB"`` stays ``512MB`` (not ``488.3 MiB``);
    a number of bytes is shown as `format_size` shows it."""
    if isinstance(value, str):
        return "".join(value.split())
    return format_size(value)
