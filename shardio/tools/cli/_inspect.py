"""``shardio inspect PATH``: fields, dtypes, shapes, counts, shards and sizes."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from typing import Any

from shardio.core.config import format_size
from shardio.storage.adapters.registry import is_remote
from shardio.storage.reader import DatasetReader

from ._common import Output, add_output_options
from ._select import add_selection_flags, selection

#: The library's parameter names, as this command's flags (for messages).
FLAGS = {
    "format": "--format",
    "fields": "--fields",
    "group": "--group",
    "dim": "--dim",
    "decode_cf": "--decode-cf",
}
#: Shards listed without -v; the rest are counted.
SHARDS_SHOWN = 8


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("inspect", help="describe a dataset: fields, shards, sizes")
    parser.add_argument(
        "path", help="a dataset directory, HDF5 file, LMDB environment or Zarr group"
    )
    parser.add_argument(
        "--format", help="lmdb, hdf5, zarr or mmap (alias raw), when the path does not tell"
    )
    add_selection_flags(parser)
    add_output_options(
        parser,
        verbose_help=f"list every shard with its checksum (default: the first {SHARDS_SHOWN})",
    )
    parser.set_defaults(run=run, flags=FLAGS)


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
    output = Output(args)
    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {}
        if is_remote(args.path):  # LMDB and mmap shards open through a cache; none is read
            extra["cache_dir"] = stack.enter_context(tempfile.TemporaryDirectory())
        reader = DatasetReader(args.path, format=args.format, **selection(args), **extra)
        with reader:
            info = describe(reader)
    output.line(
        f"{info['path']}: {info['format']}, {info['num_samples']} samples, "
        f"{len(info['shards'])} shard(s), {format_size(info['nbytes'])}"
    )
    width = max((len(f["name"]) for f in info["fields"]), default=0)
    for f in info["fields"]:
        shape = "variable" if f["kind"] != "array" else str(tuple(f["shape"]))
        output.line(f"  {f['name']:<{width}}  {f['kind']:<6}  {f['dtype']:<10}  {shape}")
    if info["sharded"]:
        shards = info["shards"] if output.verbose else info["shards"][:SHARDS_SHOWN]
        for s in shards:
            checksum = f", {s['checksum']}" if output.verbose else ""
            output.line(
                f"  {s['path']}: {s['num_samples']} samples, {format_size(s['nbytes'])}{checksum}"
            )
        hidden = len(info["shards"]) - len(shards)
        if hidden:
            output.line(f"  ... {hidden} more shard(s) (-v lists them all)")
    conversion = info["conversion"]
    if conversion:
        output.line(f"  converted from {conversion['source']}")
        for skipped in conversion["skipped"]:
            output.line(f"  skipped {skipped.get('name')!r}: {skipped.get('reason')}")
    output.json(info)
    return 0
