"""The ``shardio demo`` job: synthetic shards -> DataLoader + Prefetcher -> quantized training.

`run_demo` writes the majority-token task (`.data`) into shards with
``ShardWriter`` (or takes a user's token dataset), reads it back through
``ShardedDataset``, ``ShardSampler``, a ``DataLoader`` with workers and the
``Prefetcher``, and trains the reference transformer with 8-bit saved activations,
printing loss, throughput, time waiting for data and RSS at least every ``log_seconds``,
and draws one picture of the run at the end (`.plot`). It sets torch's intra-op
threads deliberately (`.threads`) and restores them when it returns.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from shardio import ShardedDataset, format_size
from shardio.core.errors import InvalidOptionError, OutputWriteError
from shardio.loading.prefetch import resolve_device
from shardio.memory import read_rss

from .data import LABEL, TOKENS, MajorityTask, TokenSpec, inspect_token_dataset, write_token_dataset
from .model import ModelConfig, ReferenceTransformer
from .plot import PlotRun, draw_demo
from .saved import saved_activation_bytes
from .threads import ThreadChoice, choose_threads
from .train import Batch, LogRecord, evaluate, heldout_batches, make_feed, train

__all__ = ["DemoConfig", "DemoRun", "DemoSummary", "run_demo"]

Printer = Callable[[str], None]
_SYNTHETIC_NAME = "majority.shardio"


@dataclass(frozen=True)
class DemoConfig:
    """Options of ``shardio demo``; the defaults finish in a few minutes on 2 CPU cores."""

    data: str | None = None  # a user's token dataset; None: the synthetic task
    workdir: str | None = None  # where the synthetic shards are kept; None: a temporary dir
    keep: bool = False  # keep the temporary dir of the synthetic shards (no workdir given)
    device: str | None = None  # None: "cuda" when available, else "cpu"
    steps: int = 300
    batch_size: int = 32
    workers: int = 2
    seed: int = 0
    exact: bool = False  # train without quantization
    compare: bool = False  # train quantized and exact, report both
    log_every: int = 25
    log_seconds: float = 10.0  # a progress line at least this often, whatever log_every
    threads: int | None = None  # torch intra-op threads; None: see threads.choose_threads
    plot: str | None = None  # draw the picture into this image file
    lr: float = 3e-3
    num_samples: int = 8192  # synthetic training samples
    heldout: int = 1024  # held-out samples (at most a fifth of a user's dataset)
    shards: int = 4
    format: str = "mmap"
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    task: MajorityTask = field(default_factory=MajorityTask)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "num_samples", "heldout", "shards"):
            if getattr(self, name) < 1:
                raise InvalidOptionError(
                    f"{name} should be >= 1, but got {name}={getattr(self, name)}"
                )
        for name in ("workers", "seed"):
            if getattr(self, name) < 0:
                raise InvalidOptionError(
                    f"{name} should be >= 0, but got {name}={getattr(self, name)}"
                )
        if self.log_seconds < 0:
            raise InvalidOptionError(
                f"log_seconds should be >= 0, but got log_seconds={self.log_seconds}"
            )
        if self.exact and self.compare:
            raise InvalidOptionError("exact and compare exclude each other: compare runs both")


@dataclass(frozen=True)
class DemoRun:
    """One training run: quantized or exact."""

    quantize: bool
    train_loss: float
    heldout_loss: float
    heldout_accuracy: float
    samples_per_s: float
    wait_fraction: float
    seconds: float
    losses: tuple[float, ...] = ()  # per step
    records: tuple[LogRecord, ...] = ()  # per progress line


@dataclass(frozen=True)
class DemoSummary:
    """Everything the demo measured."""

    path: str
    spec: TokenSpec
    device: str
    saved_bytes_quantized: int
    saved_bytes_exact: int
    runs: tuple[DemoRun, ...]
    chance_loss: float
    seconds: float
    threads: int = 1
    kept: bool = True  # the dataset is still there after the demo (a user's, or kept)


def _rss(peak: bool = False) -> str:
    """This process's RSS now (or its peak so far), for the log."""
    info = read_rss()
    if info is None:
        return "n/a"
    return format_size(info.peak if peak else info.rss)


@contextmanager
def _dataset_path(config: DemoConfig, out: Printer) -> Iterator[tuple[str, bool]]:
    """(the dataset to train on, whether it stays after the demo): the user's, or the
    synthetic task written into shards in ``workdir``, a kept temporary directory
    (``keep``), or a temporary directory removed at the end."""
    if config.data is not None:
        yield config.data, True
    elif config.workdir is not None:
        try:
            os.makedirs(config.workdir, exist_ok=True)
        except OSError as exc:
            raise OutputWriteError(f"cannot create --workdir {config.workdir}: {exc}") from None
        path = os.path.join(config.workdir, _SYNTHETIC_NAME)
        yield _write_synthetic(config, path, f"at {path}", out), True
    elif config.keep:
        path = os.path.join(tempfile.mkdtemp(prefix="shardio-demo-"), _SYNTHETIC_NAME)
        yield _write_synthetic(config, path, f"at {path}", out), True
    else:
        with tempfile.TemporaryDirectory(prefix="shardio-demo-") as tmp:
            where = "into a temporary directory (removed at the end: --keep keeps it)"
            yield _write_synthetic(config, os.path.join(tmp, _SYNTHETIC_NAME), where, out), False


def _write_synthetic(config: DemoConfig, path: str, where: str, out: Printer) -> str:
    start = time.perf_counter()
    data = config.task.generate(config.num_samples + config.heldout, config.seed)
    manifest = write_token_dataset(
        path, data, format=config.format, num_shards=config.shards, overwrite=True
    )
    nbytes = sum(s.nbytes for s in manifest.shards)
    out(
        f"wrote {len(data)} samples of the majority-token task (vocab {config.task.vocab_size}, "
        f"length {config.task.seq_len}) in {time.perf_counter() - start:.1f} s: "
        f"{len(manifest.shards)} {manifest.format} shards ({format_size(nbytes)}) {where}"
    )
    return path


def _measure_saved(cfg: ModelConfig, batch: Batch) -> tuple[int, int]:
    """Bytes saved for backward by one forward pass on ``batch``: (8-bit, exact)."""
    model = ReferenceTransformer(cfg, quantize=True).to(batch[TOKENS].device)
    tokens, labels = batch[TOKENS], batch[LABEL]

    def forward() -> torch.Tensor:
        return F.cross_entropy(model(tokens), labels)

    quantized = saved_activation_bytes(forward)
    model.quantize = False
    return quantized, saved_activation_bytes(forward)


def _saved_text(quantized: int, exact: int) -> str:
    ratio = quantized / exact if exact else float("nan")
    return f"{format_size(quantized)} 8-bit vs {format_size(exact)} exact ({ratio:.2f}x)"


def _log_line(record: LogRecord) -> str:
    width = len(str(record.steps))
    return (
        f"step {record.step:>{width}}/{record.steps}  loss {record.loss:.4f}  "
        f"{record.samples_per_s:7.0f} samples/s  waiting for data {record.wait_fraction:6.1%}  "
        f"rss {_rss():>9}"
    )


def _train_once(
    config: DemoConfig,
    dataset: ShardedDataset,
    cfg: ModelConfig,
    quantize: bool,
    device: torch.device,
    heldout: Sequence[Batch],
    out: Printer,
) -> DemoRun:
    """Train a freshly initialised model (same seed every run) and evaluate it."""
    torch.manual_seed(config.seed)
    model = ReferenceTransformer(cfg, quantize=quantize).to(device)
    feed = make_feed(
        dataset,
        num_train=len(dataset) - _heldout_count(config, len(dataset)),
        batch_size=config.batch_size,
        workers=config.workers,
        seed=config.seed,
        device=device,
    )
    out(f"training {'with 8-bit' if quantize else 'with exact'} saved activations")
    records: list[LogRecord] = []

    def on_log(record: LogRecord) -> None:
        records.append(record)
        out(_log_line(record))

    try:
        result = train(
            model,
            feed,
            steps=config.steps,
            lr=config.lr,
            log_every=config.log_every,
            log_seconds=config.log_seconds,
            on_log=on_log,
            waited=lambda: feed.wait_seconds,
        )
    finally:
        feed.close()
    loss, accuracy = evaluate(model, heldout)
    return DemoRun(
        quantize,
        result.final_loss,
        loss,
        accuracy,
        result.samples_per_s,
        result.wait_fraction,
        result.seconds,
        tuple(result.losses),
        tuple(records),
    )


def _heldout_count(config: DemoConfig, num_samples: int) -> int:
    """Samples kept out of training at the end of the dataset."""
    if config.data is None:
        return config.heldout
    return max(1, min(config.heldout, num_samples // 5))


def _summary_lines(summary: DemoSummary, floor: float | None) -> list[str]:
    lines = []
    for run in summary.runs:
        kind = "8-bit" if run.quantize else "exact"
        lines.append(
            f"{kind:>5}: final training loss {run.train_loss:.4f}, held-out loss "
            f"{run.heldout_loss:.4f}, held-out accuracy {run.heldout_accuracy:.1%}, "
            f"{run.samples_per_s:.0f} samples/s, waiting for data {run.wait_fraction:.1%}, "
            f"{run.seconds:.1f} s"
        )
    bound = f"; best possible held-out loss {floor:.4f}" if floor is not None else ""
    lines.append(
        f"chance loss ln({summary.spec.num_classes}) = {summary.chance_loss:.4f}{bound}; "
        f"peak rss {_rss(peak=True)}; {summary.threads} torch thread(s); "
        f"total {summary.seconds:.1f} s"
    )
    if len(summary.runs) == 2:
        a, b = (r.heldout_loss for r in summary.runs)
        lines.append(f"held-out loss 8-bit / exact = {a / b:.4f}")
    return lines


def _heldout_floor(task: MajorityTask, heldout: Sequence[Batch]) -> float:
    tokens = torch.cat([b[TOKENS] for b in heldout]).cpu().numpy()
    labels = torch.cat([b[LABEL] for b in heldout]).cpu().numpy()
    return task.best_loss(tokens, labels)


def run_demo(config: DemoConfig, out: Printer = print) -> DemoSummary:
    """Run the demo end to end, printing progress through ``out``; returns the figures."""
    start = time.perf_counter()
    # None: CUDA when present. CUDA asked for on a machine without it is an error here.
    device = resolve_device(config.device, fallback_to_cpu=False)
    choice = choose_threads(config.threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    try:
        with _dataset_path(config, out) as (path, kept):
            spec = inspect_token_dataset(path)
            with ShardedDataset(path) as dataset:
                summary = _run_on(config, dataset, spec, device, choice, kept, start, out)
    finally:
        torch.set_num_threads(previous)
    if kept and config.data is None:
        out(f"the dataset stays at {path}: shardio inspect {path}")
    return summary


def _run_on(
    config: DemoConfig,
    dataset: ShardedDataset,
    spec: TokenSpec,
    device: torch.device,
    threads: ThreadChoice,
    kept: bool,
    start: float,
    out: Printer,
) -> DemoSummary:
    cfg = ModelConfig(
        vocab_size=spec.vocab_size,
        num_classes=spec.num_classes,
        max_len=spec.seq_len,
        d_model=config.d_model,
        n_heads=config.n_heads,
        n_layers=config.n_layers,
        seed=config.seed,
    )
    first_heldout = len(dataset) - _heldout_count(config, len(dataset))
    heldout = heldout_batches(dataset, first_heldout, config.batch_size, device)
    quantized, exact = _measure_saved(cfg, heldout[0])
    saved = _saved_text(quantized, exact)
    out(f"torch intra-op threads: {threads.threads} ({threads.reason})")
    name = dataset.path if kept else "(temporary)"
    out(
        f"dataset {name}: {len(dataset)} samples ({first_heldout} train, "
        f"{len(dataset) - first_heldout} held out) in {len(dataset.shard_lengths)} shard(s), "
        f"read by ShardSampler + DataLoader({config.workers} workers) + Prefetcher({device})"
    )
    out(
        f"model: d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"sequence length {cfg.max_len}, {cfg.num_classes} classes; saved activations "
        f"for backward per step (batch of {len(heldout[0][LABEL])}): {saved}"
    )
    modes = (True, False) if config.compare else ((False,) if config.exact else (True,))
    runs = tuple(_train_once(config, dataset, cfg, q, device, heldout, out) for q in modes)
    summary = DemoSummary(
        dataset.path,
        spec,
        str(device),
        quantized,
        exact,
        runs,
        math.log(spec.num_classes),
        time.perf_counter() - start,
        threads.threads,
        kept,
    )
    floor = None if config.data is not None else _heldout_floor(config.task, heldout)
    for line in _summary_lines(summary, floor):
        out(line)
    if config.plot is not None:
        out(_draw(config.plot, config, summary, floor))
    return summary


def _draw(path: str, config: DemoConfig, summary: DemoSummary, floor: float | None) -> str:
    runs = [PlotRun(r.quantize, r.losses, r.records) for r in summary.runs]
    title = (
        f"shardio demo: {summary.spec.num_classes}-class task, batch {config.batch_size}, "
        f"{config.workers} DataLoader workers, {summary.device}, "
        f"{summary.threads} torch thread(s)"
    )
    return draw_demo(runs, path, title=title, chance=summary.chance_loss, floor=floor)
