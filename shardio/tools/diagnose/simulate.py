"""Trace a dataset on disk through a DataLoader with a simulated training step: what
``shardio diagnose`` runs, one setting or a sweep of them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from shardio.core.errors import InvalidOptionError
from shardio.loading.dataset import ShardedDataset

from .analysis import TraceSummary
from .tracer import Trace, trace

__all__ = ["LoaderSettings", "SWEEPABLE", "run_settings", "sweep"]

SWEEPABLE = {"workers": "workers", "batch-size": "batch_size", "prefetch-factor": "prefetch_factor"}
"""What ``--sweep`` can vary: the flag's name -> the `LoaderSettings` field."""


@dataclass(frozen=True)
class LoaderSettings:
    """One DataLoader configuration and the step it feeds."""

    workers: int = 2
    batch_size: int = 256
    prefetch_factor: int | None = None  # DataLoader's default (2) when there are workers
    step_seconds: float = 0.01
    batches: int = 50
    order: str = "random"
    seed: int = 0


def run_settings(dataset: ShardedDataset, settings: LoaderSettings) -> Trace:
    """Read ``settings.batches`` batches, sleeping one step after each, under a trace.

    The step is a sleep: like a GPU step it leaves the CPU to the loader.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    sampler = (
        RandomSampler(dataset, generator=generator)
        if settings.order == "random"
        else SequentialSampler(dataset)
    )
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=settings.workers,
        prefetch_factor=settings.prefetch_factor if settings.workers else None,
    )
    with trace(loader) as traced:
        for done, _batch in enumerate(traced, 1):
            time.sleep(settings.step_seconds)
            if done == settings.batches:
                break
    return traced


def sweep(
    dataset: ShardedDataset, base: LoaderSettings, setting: str, values: Sequence[int]
) -> list[TraceSummary]:
    """One traced run per value of ``setting`` (a key of `SWEEPABLE`)."""
    field = SWEEPABLE.get(setting)
    if field is None:
        raise InvalidOptionError(
            f"--sweep should vary one of {', '.join(SWEEPABLE)}, but got --sweep {setting}=..."
        )
    if field == "prefetch_factor" and base.workers == 0:
        raise InvalidOptionError("--sweep prefetch-factor=... needs --workers 1 or more")
    summaries = []
    for value in values:
        change: dict[str, Any] = {field: value}
        summaries.append(run_settings(dataset, replace(base, **change)).summary())
    return summaries
