"""``shardio convert SRC DST --format ...``: convert a dataset into sharded shards."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import Output, add_output_options
from ._select import add_selection_flags

#: The library's parameter names, as this command's flags (for messages).
FLAGS = {
    "format": "--format",
    "shard_size": "--shard-size",
    "workers": "--workers",
    "fields": "--fields",
    "compressor": "--compressor",
    "split_compound": "--split-compound",
    "skip_unsupported": "--skip-unsupported",
    "resume": "--resume",
    "staging": "--staging",
    "overwrite": "--overwrite",
    "scheduler": "--scheduler",
    "source_format": "--source-format",
    "group": "--group",
    "dim": "--dim",
    "decode_cf": "--decode-cf",
    "dst": "DST",
    "src": "SRC",
}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert HDF5 (or any readable dataset) into LMDB, Zarr, raw or HDF5 shards",
        description="Convert SRC (an HDF5 file, or any dataset shardio reads) into DST, a new "
        "sharded dataset directory with per-shard checksums. Each shard is written under a "
        "temporary name and renamed when complete; the manifest is written last.",
    )
    parser.add_argument("src", help="source: HDF5 file, Zarr group, LMDB, shardio dataset")
    parser.add_argument(
        "dst",
        help="output dataset directory, or a URL (s3://bucket/x.shardio): each shard is "
        "uploaded as soon as it is written (and removed locally), the manifest last",
    )
    parser.add_argument(
        "--staging",
        metavar="DIR",
        help="with a URL as DST: the local directory shards are written in before their "
        "upload; it holds only the shards in progress (default: one under the temporary "
        "directory named after the URL)",
    )
    parser.add_argument(
        "--format",
        required=True,
        help="output format: lmdb, zarr, hdf5 or mmap (shardio's raw layout; alias raw)",
    )
    parser.add_argument(
        "--shard-size",
        default="256MB",
        help="bytes of samples per shard (default 256MB; below 1MB draws a warning)",
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
        "--compressor",
        help="zarr: zstd (the default), blosc, gzip or none; hdf5: gzip, lzf (default none); "
        "NAME:LEVEL sets a level",
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
    add_output_options(parser, verbose_help="also list each shard written")
    parser.set_defaults(run=run, flags=FLAGS)


def _fields(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def describe(result: Any) -> dict[str, Any]:
    """The conversion's result as JSON: what was written, from what, and what was left out."""
    manifest = result.manifest
    return {
        "source": result.source,
        "path": result.path,
        "format": manifest.format,
        "num_samples": manifest.num_samples,
        "num_shards": len(manifest.shards),
        "nbytes": manifest.nbytes,
        "shards_written": result.shards_written,
        "shards_reused": result.shards_reused,
        "seconds": round(result.seconds, 3),
        "fields": [f.name for f in manifest.schema],
        "skipped": [{"name": s.name, "reason": s.reason} for s in result.skipped],
        "notes": list(result.notes),
    }


def run(args: argparse.Namespace) -> int:
    from shardio.convert import convert
    from shardio.core.config import format_size

    output = Output(args)
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
        staging=args.staging,
        overwrite=args.overwrite,
        scheduler=args.scheduler,
        source_format=args.source_format,
        source_options={
            k: getattr(args, k) for k in ("group", "dim", "decode_cf") if getattr(args, k)
        }
        or None,
        progress=output.progress,
    )
    output.line(result.summary())
    for shard in result.manifest.shards:
        output.detail(f"  {shard.path}: {shard.num_samples} samples, {format_size(shard.nbytes)}")
    output.json(describe(result))
    return 0
