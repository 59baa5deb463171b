"""``--fields``, ``--group``, ``--dim`` and ``--decode-cf``: which datasets of a file to
read, and how."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_selection_flags", "selection", "split_fields"]


def add_selection_flags(parser: argparse.ArgumentParser, *, fields: bool = True) -> None:
    if fields:
        parser.add_argument(
            "--fields",
            action="append",
            help="datasets to read, comma separated (default: the largest set sharing a "
            "first axis)",
        )
    parser.add_argument(
        "--group", help="HDF5: read the datasets under this group (an .h5ad's obs, say)"
    )
    parser.add_argument(
        "--dim", help="HDF5/netCDF/Zarr: read the variables along this dimension (time, say)"
    )
    parser.add_argument(
        "--decode-cf",
        action="store_true",
        help="netCDF/Zarr/MINC: apply scale_factor, add_offset, _FillValue, time units and "
        "MINC scaling as xarray and nibabel do (default: values as stored)",
    )


def split_fields(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def selection(args: argparse.Namespace) -> dict[str, Any]:
    """Reader keywords for the flags given (``fields``, ``group``, ``dim``, ``decode_cf``)."""
    chosen: dict[str, Any] = {"fields": split_fields(getattr(args, "fields", None))}
    chosen.update(
        {k: getattr(args, k) for k in ("group", "dim", "decode_cf") if getattr(args, k, None)}
    )
    return chosen
