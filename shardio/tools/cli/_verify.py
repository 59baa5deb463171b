"""``shardio verify PATH [--against SRC]``: check a dataset's shards (and every sample)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import Output, add_output_options

#: The library's parameter names, as this command's flags (for messages).
FLAGS = {"against": "--against", "source_format": "--source-format", "format": "--source-format"}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="re-read a dataset: sizes, checksums, counts, and samples against a source",
        description="Re-read every shard of PATH and check its size, checksum and sample "
        "count against the manifest, and that every sample decodes; with --against, compare "
        "every sample with SRC. Exits 1 naming each shard and sample that fails.",
    )
    parser.add_argument("path", help="a shardio dataset directory")
    parser.add_argument("--against", metavar="SRC", help="source to compare every sample with")
    parser.add_argument("--source-format", help="format of SRC, when its path does not tell")
    add_output_options(parser, verbose_help="also list each shard checked")
    parser.set_defaults(run=run, flags=FLAGS)


def describe(report: Any) -> dict[str, Any]:
    """The verification's result as JSON."""
    return {
        "path": report.path,
        "against": report.against,
        "ok": report.ok,
        "num_shards": report.num_shards,
        "num_samples": report.num_samples,
        "samples_read": report.samples_read,
        "samples_compared": report.samples_compared,
        "bytes_checked": report.bytes_checked,
        "seconds": round(report.seconds, 3),
        "problems": [str(p) for p in report.problems],
    }


def run(args: argparse.Namespace) -> int:
    from shardio.convert import verify

    output = Output(args)
    report = verify(
        args.path,
        against=args.against,
        source_format=args.source_format,
        progress=output.progress,
        raise_errors=False,
    )
    for problem in report.problems:
        print(f"shardio verify: {problem}", file=sys.stderr)
    if output.verbose:
        _list_shards(args.path, output)
    if not report.ok:
        print(report.summary(), file=sys.stderr)
    else:
        output.line(report.summary())
    output.json(describe(report))
    return 0 if report.ok else 1


def _list_shards(path: str, output: Output) -> None:
    from shardio.core.config import format_size
    from shardio.storage.manifest import Manifest

    for shard in Manifest.load(path).shards:
        output.detail(
            f"  {shard.path}: {shard.num_samples} samples, {format_size(shard.nbytes)}, "
            f"{shard.checksum}"
        )
