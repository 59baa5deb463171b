"""``shardio inspect PATH``: fields, dtypes, shapes, counts, shards and sizes."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

from ..config import format_size
from ..errors import FieldsChosenWarning
from ..reader import DatasetReader
from ._select import add_selection_flags, selection


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("inspect", help="describe a dataset: fields, shards, sizes")
    parser.add_argument(
        "path", help="a dataset directory, HDF5 file, LMDB environment or Zarr group"
    )
    parser.add_argument("--format", help="backend, when the path does not tell")
    add_selection_flags(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def describe(reader: DatasetReader) -> dict[str, Any]:
    return {
        "path": reader.path,
        "format": reader.format,
        "sharded": reader.manifest is not None,
        "num_samples": len(reader),
        "fields": [
            {"name": f.name, "kind": f.kind, "dtype": str(f.dtype), "shape": list(f.shape)}
            for f in reader.schema
        ],
        "shards": [
            {
                "path": s.path,
                "num_samples": s.num_samples,
                "nbytes": s.nbytes,
                "checksum": s.checksum,
            }
            for s in reader.shard_infos
        ],
        "nbytes": sum(reader.shard_nbytes),
        "conversion": _conversion(reader),
    }


def _conversion(reader: DatasetReader) -> dict[str, Any] | None:
    """Where a converted dataset came from and what was left out (see shardio convert)."""
    if reader.manifest is None:
        return None
    conversion = reader.manifest.metadata.get("conversion")
    if not isinstance(conversion, dict):
        return None
    return {
        "source": conversion.get("source"),
        "split_compound": conversion.get("split_compound", False),
        "skipped": conversion.get("skipped", []),
        "notes": conversion.get("notes", []),
    }


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FieldsChosenWarning)
        with DatasetReader(args.path, format=args.format, **selection(args)) as reader:
            info = describe(reader)
    for warning in caught:  # which datasets were read and which left out: a line each
        print(f"shardio inspect: {warning.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(
        f"{info['path']}: {info['format']}, {info['num_samples']} samples, "
        f"{len(info['shards'])} shard(s), {format_size(info['nbytes'])}"
    )
    width = max(len(f["name"]) for f in info["fields"])
    for f in info["fields"]:
        shape = "variable" if f["kind"] != "array" else str(tuple(f["shape"]))
        print(f"  {f['name']:<{width}}  {f['kind']:<6}  {f['dtype']:<10}  {shape}")
    if info["sharded"]:
        for s in info["shards"]:
            print(f"  {s['path']}: {s['num_samples']} samples, {format_size(s['nbytes'])}")
    conversion = info["conversion"]
    if conversion:
        print(f"  converted from {conversion['source']}")
        for skipped in conversion["skipped"]:
            print(f"  skipped {skipped.get('name')!r}: {skipped.get('reason')}")
    return 0
