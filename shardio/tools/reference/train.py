"""Train and evaluate a sequence classifier on batches of ``{"tokens", "label"}``.

`make_feed` builds the shardio input pipeline (``ShardedDataset`` ->
``ShardSampler`` -> ``DataLoader`` with workers -> ``Prefetcher``); `train` runs
AdamW over any iterable of batches and reports loss, throughput and the time spent
waiting for data; `evaluate` gives the loss and accuracy on held-out batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from shardio import Prefetcher, ShardedDataset, ShardSampler
from shardio.core.errors import InvalidOptionError

from .data import LABEL, TOKENS, train_layout

__all__ = [
    "Batch",
    "Feed",
    "LogRecord",
    "TrainResult",
    "collate_tokens",
    "evaluate",
    "heldout_batches",
    "loss_of",
    "make_feed",
    "train",
]

Batch = Mapping[str, Tensor]


def collate_tokens(samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Tensor]:
    """Stack samples into ``{"tokens": int64 (B, N), "label": int64 (B,)}``."""
    return _token_batch(np.stack([s[TOKENS] for s in samples]), [s[LABEL] for s in samples])


def _token_batch(tokens: Any, labels: Any) -> dict[str, Tensor]:
    """A batch of ``tokens`` (B, N) and ``labels`` (B,) as int64 tensors."""
    return {
        TOKENS: torch.from_numpy(np.asarray(tokens, dtype=np.int64)),
        LABEL: torch.from_numpy(np.asarray(labels, dtype=np.int64)),
    }


def loss_of(model: nn.Module, batch: Batch) -> Tensor:
    """Mean cross-entropy of ``model`` on ``batch``."""
    logits = model(batch[TOKENS].long())
    return F.cross_entropy(logits, batch[LABEL].long())


class Feed:
    """Endless batches from a `Prefetcher`, one sampler epoch per pass.

    ``wait_seconds`` adds up the Prefetcher's ``stats.wait_seconds`` over every pass:
    the time the training loop spent waiting for data.
    """

    def __init__(self, prefetcher: Prefetcher, sampler: ShardSampler | None = None) -> None:
        self.prefetcher = prefetcher
        self.sampler = sampler
        self.epoch = 0
        self._finished_wait = 0.0

    @property
    def wait_seconds(self) -> float:
        return self._finished_wait + self.prefetcher.stats.wait_seconds

    def __iter__(self) -> Iterator[Batch]:
        while True:
            if self.sampler is not None:
                self.sampler.set_epoch(self.epoch)
            empty = True
            for batch in self.prefetcher:
                empty = False
                yield batch
            self._finished_wait += self.prefetcher.stats.wait_seconds
            self.epoch += 1
            if empty:
                raise InvalidOptionError("the training data yields no batch: is it empty?")

    def close(self) -> None:
        self.prefetcher.close()


def make_feed(
    dataset: ShardedDataset,
    *,
    num_train: int,
    batch_size: int,
    workers: int,
    seed: int,
    device: str | torch.device,
) -> Feed:
    """Shuffled training batches of the first ``num_train`` samples of ``dataset``, read by
    a DataLoader with ``workers`` processes and prefetched onto ``device``."""
    lengths, nbytes = train_layout(dataset.shard_lengths, dataset.shard_nbytes, num_train)
    sampler = ShardSampler(shard_lengths=lengths, shard_nbytes=nbytes, seed=seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_tokens,
        drop_last=num_train >= batch_size,
    )
    return Feed(Prefetcher(loader, device=device), sampler)


def heldout_batches(
    dataset: ShardedDataset, start: int, batch_size: int, device: str | torch.device
) -> list[dict[str, Tensor]]:
    """Samples ``start..len(dataset)`` as batches on ``device``, read in order."""
    batches = []
    for first in range(start, len(dataset), batch_size):
        indices = np.arange(first, min(first + batch_size, len(dataset)))
        columns = dataset.read_batch(indices)
        batch = _token_batch(columns[TOKENS], columns[LABEL])
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


@dataclass(frozen=True)
class LogRecord:
    """Progress since the previous record."""

    step: int
    steps: int
    loss: float  # mean training loss over the interval
    samples_per_s: float
    wait_fraction: float  # of the interval's wall time, spent waiting for a batch


@dataclass
class TrainResult:
    """What a training run did: per-step losses and overall throughput."""

    losses: list[float] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        """Mean training loss of the last 10% of steps (at least one)."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return float(np.mean(tail)) if tail else math.nan

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def wait_fraction(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


def _schedule(steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to 10% of the peak learning rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class _Window:
    """Counters between two log records."""

    def __init__(self, now: float, waited: float) -> None:
        self.start, self.waited = now, waited
        self.losses, self.steps, self.samples = 0.0, 0, 0

    def add(self, loss: float, samples: int) -> None:
        self.losses += loss
        self.steps += 1
        self.samples += samples

    def record(self, step: int, steps: int, now: float, waited: float) -> LogRecord:
        seconds = max(now - self.start, 1e-9)
        return LogRecord(
            step=step,
            steps=steps,
            loss=self.losses / max(1, self.steps),
            samples_per_s=self.samples / seconds,
            wait_fraction=min(1.0, (waited - self.waited) / seconds),
        )


def train(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    steps: int,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    log_every: int = 0,
    log_seconds: float = 0.0,
    on_log: Callable[[LogRecord], None] | None = None,
    waited: Callable[[], float] | None = None,
) -> TrainResult:
    """Train ``model`` for ``steps`` steps of AdamW (warmup, cosine decay) on ``batches``.

    ``waited()`` returns the seconds the loop has waited for data so far (e.g.
    `Feed.wait_seconds`); by default the time blocked in ``next(batches)``.
    Every ``log_every`` steps, or sooner once ``log_seconds`` have passed since the last
    record (so a slow machine still shows progress), and at the last step ``on_log``
    receives a `LogRecord`.
    """
    if steps < 1:
        raise InvalidOptionError(f"steps should be >= 1, but got steps={steps}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(steps, steps // 10 + 1))
    result = TrainResult()
    blocked = [0.0]
    clock = waited if waited is not None else (lambda: blocked[0])
    model.train()
    iterator = iter(batches)
    begin = time.perf_counter()
    window = _Window(begin, clock())
    try:
        for step in range(1, steps + 1):
            before = time.perf_counter()
            batch = next(iterator, None)
            blocked[0] += time.perf_counter() - before
            if batch is None:
                raise InvalidOptionError(
                    f"the batches ran out after {step - 1} steps, but got steps={steps}"
                )
            loss = _step(model, optimizer, batch)
            scheduler.step()
            result.losses.append(loss)
            result.samples += len(batch[LABEL])
            window.add(loss, len(batch[LABEL]))
            now = time.perf_counter()
            due = step == steps or (log_every and step % log_every == 0)
            if on_log is not None and (due or 0 < log_seconds <= now - window.start):
                on_log(window.record(step, steps, now, clock()))
                window = _Window(now, clock())
    finally:
        _close(iterator)
    result.seconds = time.perf_counter() - begin
    result.wait_seconds = clock()
    return result


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> float:
    """One optimisation step (gradients clipped to norm 1); returns the batch's loss."""
    loss = loss_of(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def _close(iterator: Iterator[Any]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch]) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``batches`` (in eval mode)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        for batch in batches:
            logits = model(batch[TOKENS].long())
            labels = batch[LABEL].long()
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == labels).sum())
            count += len(labels)
    finally:
        model.train(was_training)
    if count == 0:
        raise InvalidOptionError("evaluate() got no samples")
    return total_loss / count, correct / count
