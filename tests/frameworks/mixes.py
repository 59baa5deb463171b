"""The mixture the --mix framework runs read; the tests compare with its order."""

from __future__ import annotations

from pathlib import Path

from shardio import Mix, ShardedDataset


def mixture(data: str | Path) -> Mix:
    """Datasets ``data/a`` and ``data/b``, weights 0.6 and 0.4, seed 3."""
    sources = {name: ShardedDataset(Path(data, name)) for name in ("a", "b")}
    return Mix(sources, weights={"a": 0.6, "b": 0.4}, seed=3)
