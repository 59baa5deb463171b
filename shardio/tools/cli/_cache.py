"""``shardio cache DIR [--clear]``: list, size and clear a node's shard cache."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import Any

from ._common import Output, add_output_options

#: The library's parameter names, as this command's flags (for messages).
FLAGS = {"cache_dir": "DIR"}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="list, size and clear a shard cache directory (cache_dir=)",
        description="List the datasets cached in DIR (the cache_dir= that remote datasets "
        "were read with): their URL, shards, bytes and shards in use. With --clear, remove "
        "every shard no reader has open (shards in use stay).",
    )
    parser.add_argument("path", metavar="DIR", help="a shard cache directory")
    parser.add_argument("--clear", action="store_true", help="remove every cached shard not in use")
    add_output_options(parser, verbose_help="also list each cached shard")
    parser.set_defaults(run=run, flags=FLAGS)


def describe(directory: str) -> dict[str, Any]:
    """The cache's datasets and shards as JSON."""
    from shardio.storage.cache import CacheStore

    store = CacheStore.existing(directory)
    datasets: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"shards": 0, "nbytes": 0, "in_use": 0, "entries": []}
    )
    for entry in store.entries():
        found = datasets[entry.key]
        found["shards"] += 1
        found["nbytes"] += entry.nbytes
        found["in_use"] += int(entry.in_use)
        found["entries"].append(
            {"shard": entry.name, "nbytes": entry.nbytes, "in_use": entry.in_use}
        )
    return {
        "cache_dir": store.directory,
        "nbytes": store.used(),
        "datasets": [
            {"key": key, "source": store.source(key), **value}
            for key, value in sorted(datasets.items())
        ],
    }


def run(args: argparse.Namespace) -> int:
    from shardio.core.config import format_size
    from shardio.storage.cache import CacheStore

    output = Output(args)
    if args.clear:
        removed, kept = CacheStore.existing(args.path).clear()
        output.line(f"removed {removed} shard(s); {kept} in use kept")
    found = describe(args.path)
    for dataset in found["datasets"]:
        output.line(
            f"{dataset['source']}: {dataset['shards']} shard(s), "
            f"{format_size(dataset['nbytes'])}, {dataset['in_use']} in use"
        )
        for entry in dataset["entries"]:
            output.detail(
                f"  {entry['shard']}: {format_size(entry['nbytes'])}"
                + (" (in use)" if entry["in_use"] else "")
            )
    output.line(f"{found['cache_dir']}: {format_size(found['nbytes'])} in all")
    output.json(found)
    sys.stdout.flush()
    return 0
