"""``shardio convert SRC DST --format ...``: convert a dataset into sharded shards."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._select import add_selection_flags


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert HDF5 (or any readable dataset) into LMDB, Zarr, raw or HDF5 shards",
        description="Convert SRC (an HDF5 file, or any dataset shardio reads) into DST, a new "
        "sharded dataset directory with per-shard checksums. Each shard is written under a "
        "temporary name and renamed when complete; the manifest is written last.",
    )
    parser.add_argument("src", help="source: HDF5 file, Zarr group, LMDB, shardio dataset")
    parser.add_argument("dst", help="output dataset directory")
    parser.add_argument(
        "--format", required=True, help="output format: lmdb, zarr, hdf5 or raw (alias mmap)"
    )
    parser.add_argument(
        "--shard-size", default="256MB", help="bytes of samples per shard (default 256MB)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="local processes writing shards (default 1)"
    )
    parser.add_argument(
        "--fields",
        action="append",
        help="datasets to convert, comma separated (default: all sharing the first axis)",
    )
    add_selection_flags(parser, fields=False)
    parser.add_argument(
        "--compressor", help="zarr: zstd, blosc, gzip; hdf5: gzip, lzf; NAME:LEVEL sets a level"
    )
    parser.add_argument(
        "--split-compound",
        action="store_true",
        help="store each member of a compound dataset as a field of its own",
    )
    parser.add_argument(
        "--skip-unsupported",
        action="store_true",
        help="leave out (and list) datasets that cannot be converted instead of failing",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue an interrupted conversion into DST"
    )
    mode.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    parser.add_argument(
        "--scheduler", help="run on a Dask cluster at this address (tcp://HOST:PORT)"
    )
    parser.add_argument("--source-format", help="format of SRC, when its path does not tell")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    parser.set_defaults(run=run)


def _fields(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def run(args: argparse.Namespace) -> int:
    from ..convert import convert

    result = convert(
        args.src,
        args.dst,
        format=args.format,
        shard_size=args.shard_size,
        workers=args.workers,
        fields=_fields(args.fields),
        compressor=args.compressor,
        split_compound=args.split_compound,
        skip_unsupported=args.skip_unsupported,
        resume=args.resume,
        overwrite=args.overwrite,
        scheduler=args.scheduler,
        source_format=args.source_format,
        source_options={k: getattr(args, k) for k in ("group", "dim") if getattr(args, k)} or None,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(result.summary(), file=sys.stderr)
    return 0
