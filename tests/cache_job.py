"""A job reading a whole remote dataset through a shard cache (tests/storage/test_cache_procs.py).

    python tests/cache_job.py URL ENDPOINT CACHE_DIR CACHE_LIMIT

Prints one JSON line: the sum of field ``x`` over every sample and the cache stats.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from shardio.storage.reader import DatasetReader


def main() -> None:
    url, endpoint, cache_dir, limit = sys.argv[1:5]
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    with DatasetReader(
        url, storage_options=options, cache_dir=cache_dir, cache_limit=limit
    ) as reader:
        total = 0.0
        for start in range(0, len(reader), 64):
            rows = np.arange(start, min(start + 64, len(reader)))
            total += float(reader.read_many(rows)["x"].astype(np.float64).sum())
        print(json.dumps({"sum": total, "cache": reader.memory_stats()["cache"]}), flush=True)


if __name__ == "__main__":
    main()
