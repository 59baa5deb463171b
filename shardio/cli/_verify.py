"""``shardio verify PATH [--against SRC]``: check a dataset's shards (and every sample)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


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
    parser.add_argument("--quiet", "-q", action="store_true", help="print only problems")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..convert import verify

    report = verify(
        args.path,
        against=args.against,
        source_format=args.source_format,
        progress=not args.quiet,
        raise_errors=False,
    )
    for problem in report.problems:
        print(f"shardio verify: {problem}", file=sys.stderr)
    if not args.quiet or not report.ok:
        print(report.summary(), file=sys.stderr if not report.ok else sys.stdout)
    return 0 if report.ok else 1
