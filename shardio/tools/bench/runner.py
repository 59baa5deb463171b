"""Benchmark configurations and the loop that measures them.

A configuration is one loader (shardio, or the raw library loop with ``compare_raw``)
read through a torch ``DataLoader`` with a number of workers, a batch size, an order
and optionally a memory budget, for some epochs. Every configuration reads the same
indices (one permutation per epoch from ``seed``), with the default collate a user
gets, while a sampler thread records RSS in the main process and in every worker.
"""

from __future__ import annotations

import gc
import itertools
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from shardio.core.config import format_size, parse_size, positive_int, size_label
from shardio.core.errors import InvalidOptionError, UnsupportedFeatureError

from .cache import CacheState, cache_state, dataset_files, drop_cache
from .ceiling import Ceiling, measure_ceiling
from .raw import raw_reader
from .rss import RssSampler, RssSeries, WorkerRssInit, _jsonable, collect_samples, collect_stats

if TYPE_CHECKING:  # the sampling package imports torch: loaded when a run starts
    from shardio.loading.sampling.orders import EpochPlan
    from shardio.loading.sampling.readahead import Hint

__all__ = [
    "BenchConfig",
    "BenchReport",
    "EpochResult",
    "RunResult",
    "machine_info",
    "open_dataset",
    "run_bench",
]

Order = Literal["random", "sequential", "shard-window"]
_ORDERS = ("random", "sequential", "shard-window")
CacheMode = Literal["warm", "cold", "asis"]


def _budget(value: int | str | None) -> int | str | None:
    """A ``max_rss`` entry checked: None, bytes > 0, or a job budget kept as written."""
    if value is None:
        return None
    if isinstance(value, str) and (
        value.strip().lower() == "auto" or value.strip().lower().startswith("total:")
    ):
        if value.strip().lower().startswith("total:"):
            parse_size(value.split(":", 1)[1], "max_rss")  # the size is checked now
        return value.strip()
    budget = parse_size(value, "max_rss")
    if budget <= 0:
        raise InvalidOptionError(
            "max_rss should be > 0 bytes, 'auto' or 'total:SIZE' (or none for no budget), "
            f"but got max_rss={value!r}"
        )
    return budget


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. Every combination of ``workers`` and ``max_rss`` is one run."""

    workers: tuple[int, ...] = (0,)
    batch_size: int = 256
    epochs: int = 3
    order: Order = "random"
    #: Budgets to compare: bytes per process (``"512MB"``), a job budget (``"auto"``,
    #: ``"total:8GB"``, split between the main process and the workers), or None.
    max_rss: tuple[int | str | None, ...] = (None,)
    cache: CacheMode = "warm"
    compare_raw: bool = False
    samples: int | None = None  # per epoch; None reads the whole dataset
    interval: float = 0.02  # seconds between RSS samples
    seed: int = 0
    ceiling: bool = True
    ceiling_bytes: int = 1024**3  # most bytes read to measure the disk ceiling
    #: Bytes live at once in the shard-window order; None: half the smallest budget, or 1 GB.
    window: int | str | None = None
    #: The dataset's format, when its path does not tell (as ``ShardedDataset(format=)``).
    format: str | None = None
    #: Each ``max_rss`` as the user wrote it (``512MB``), for names and the report.
    max_rss_labels: tuple[str | None, ...] = field(default=(), init=False, compare=False)

    def __post_init__(self) -> None:
        workers = tuple(int(w) for w in self.workers)
        object.__setattr__(self, "workers", workers)
        if not workers:
            raise InvalidOptionError("workers should list at least one worker count, e.g. 0,2")
        bad = [w for w in workers if w < 0]
        if bad:
            raise InvalidOptionError(f"workers should be >= 0, but got workers={bad[0]}")
        for name in ("batch_size", "epochs"):
            positive_int(getattr(self, name), name)
        if self.order not in _ORDERS:
            raise InvalidOptionError(
                f"order should be one of {_ORDERS}, but got order={self.order!r}"
            )
        if self.cache not in ("warm", "cold", "asis"):
            raise InvalidOptionError(
                f"cache should be 'warm', 'cold' or 'asis', but got cache={self.cache!r}"
            )
        if self.samples is not None and self.samples < 1:
            raise InvalidOptionError(f"samples should be >= 1, but got samples={self.samples}")
        if self.interval <= 0:
            raise InvalidOptionError(f"interval should be > 0 seconds, but got {self.interval}")
        budgets = tuple(_budget(b) for b in self.max_rss)
        labels = tuple(  # as written: a size label, or the job budget's spec
            None if given is None else parsed if isinstance(parsed, str) else size_label(given)
            for given, parsed in zip(self.max_rss, budgets, strict=True)
        )
        object.__setattr__(self, "max_rss", budgets or (None,))
        object.__setattr__(self, "max_rss_labels", labels or (None,))
        if self.window is None:
            limits = [b for b in budgets if isinstance(b, int)]
            window = min(limits) // 2 if limits else 10**9
        else:
            window = parse_size(self.window, "window")
        if window <= 0:
            raise InvalidOptionError(f"window should be > 0 bytes, but got window={self.window!r}")
        object.__setattr__(self, "window", window)

    def to_json(self) -> dict[str, Any]:
        return {
            "workers": list(self.workers),
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "order": self.order,
            "window": self.window if self.order == "shard-window" else None,
            "max_rss": list(self.max_rss),
            "cache": self.cache,
            "compare_raw": self.compare_raw,
            "samples": self.samples,
            "interval": self.interval,
            "seed": self.seed,
        }


@dataclass
class EpochResult:
    seconds: float
    samples: int
    nbytes: int
    cache: CacheState

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "samples": self.samples,
            "bytes": self.nbytes,
            "samples_per_s": self.samples / self.seconds if self.seconds else None,
            "cache": self.cache.to_json(),
        }


@dataclass
class RunResult:
    """One configuration's measurements."""

    loader: str  # "shardio" or "raw"
    workers: int
    batch_size: int
    order: str
    max_rss: int | str | None
    epochs: list[EpochResult]
    main: RssSeries
    worker_rss: dict[int, RssSeries]
    memory_stats: Any = None  # main process's ds.memory_stats(), where shardio has it
    worker_memory_stats: dict[int, Any] = field(default_factory=dict)
    raw_ratio: float | None = None  # samples/s over the raw loop's with as many workers
    fraction_of_ceiling: float | None = None
    max_rss_label: str | None = None  # the budget as the user wrote it

    @property
    def name(self) -> str:
        return _run_name(self.loader, self.workers, self.max_rss, self.max_rss_label)

    @property
    def reading_memory_stats(self) -> dict[str, Any]:
        """``memory_stats()`` of each process that read: the main process without
        workers, else each worker (the main process's dataset copy reads nothing)."""
        if self.workers == 0:
            return {} if self.memory_stats is None else {"main": self.memory_stats}
        return {f"w{k}": v for k, v in sorted(self.worker_memory_stats.items()) if v}

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.epochs)

    @property
    def samples(self) -> int:
        return sum(e.samples for e in self.epochs)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.epochs)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.nbytes / self.seconds if self.seconds else 0.0

    @property
    def cold(self) -> bool:
        return all(e.cache.label in ("cold", "dropped") for e in self.epochs)

    @property
    def cache_label(self) -> str:
        labels = sorted({e.cache.label for e in self.epochs})
        return labels[0] if len(labels) == 1 else "mixed"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "loader": self.loader,
            "workers": self.workers,
            "batch_size": self.batch_size,
            "order": self.order,
            "max_rss": self.max_rss,
            "seconds": self.seconds,
            "samples": self.samples,
            "bytes": self.nbytes,
            "samples_per_s": self.samples_per_s,
            "bytes_per_s": self.bytes_per_s,
            "cache": self.cache_label,
            "raw_ratio": self.raw_ratio,
            "fraction_of_ceiling": self.fraction_of_ceiling,
            "epochs": [e.to_json() for e in self.epochs],
            "rss": {
                "main": self.main.summary(),
                "workers": {str(k): v.summary() for k, v in self.worker_rss.items()},
            },
            "memory_stats": self.memory_stats,
            "worker_memory_stats": {str(k): v for k, v in self.worker_memory_stats.items()},
        }


@dataclass
class BenchReport:
    path: str
    format: str
    num_samples: int
    nbytes: int
    shards: int
    config: BenchConfig
    machine: dict[str, Any]
    runs: list[RunResult]
    ceiling: Ceiling | None
    start: float  # time.monotonic() when the first run began; plots count from here
    command: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "shardio_bench": 1,
            "command": self.command,
            "dataset": {
                "path": self.path,
                "format": self.format,
                "num_samples": self.num_samples,
                "bytes": self.nbytes,
                "shards": self.shards,
            },
            "config": self.config.to_json(),
            "machine": self.machine,
            "ceiling": None if self.ceiling is None else self.ceiling.to_json(),
            "runs": [r.to_json() for r in self.runs],
        }


# ------------------------------------------------------------------ datasets
def open_dataset(path: str, max_rss: int | str | None = None, format: str | None = None) -> Any:
    """``ShardedDataset(path, format=format)``, with ``max_rss=`` when a budget is asked for."""
    from shardio import ShardedDataset

    if max_rss is None:
        return ShardedDataset(path, format=format)
    return ShardedDataset(path, max_rss=max_rss, format=format)


def _torch_data() -> Any:
    import torch.utils.data

    return torch.utils.data


class _EpochSampler:
    """Yields the precomputed order of the current epoch (set with `set_epoch`),
    hinting shard-window blocks to the page cache when given ``readahead``, as
    `ShardSampler` does."""

    def __init__(
        self,
        plans: Sequence[EpochPlan],
        readahead: Hint | None = None,
        lookahead: int = 1,
        total: int = 0,
    ) -> None:
        self.plans = plans
        self.readahead = readahead
        self.lookahead = lookahead
        self.total = total
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        from shardio.loading.sampling.readahead import BlockReadahead, order_chunks

        plan = self.plans[self.epoch]
        blocks = None
        if self.readahead is not None and plan.block_starts is not None:
            blocks = BlockReadahead(
                plan.indices, plan.block_starts, self.total, self.readahead, self.lookahead
            )
        return itertools.chain.from_iterable(order_chunks(plan.indices, blocks))

    def __len__(self) -> int:
        return len(self.plans[self.epoch].indices)


class _RawDataset:
    """A map-style dataset whose ``__getitem__`` is the raw library loop's one read."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> Any:
        return self.raw.read(index)

    def close(self) -> None:
        self.raw.close()


class _WorkerMemoryStats:
    """Runs ``memory_stats()`` of the dataset copy inside a DataLoader worker."""

    def __call__(self) -> Any:
        info = _torch_data().get_worker_info()
        if info is None or not hasattr(info.dataset, "memory_stats"):
            return None
        return _jsonable(info.dataset.memory_stats())


def _epoch_samples(num_samples: int, config: BenchConfig) -> int:
    return num_samples if config.samples is None else min(config.samples, num_samples)


def epoch_orders(num_samples: int, config: BenchConfig) -> list[np.ndarray]:
    """The indices each epoch reads in the random or sequential order."""
    rng = np.random.default_rng(config.seed)
    count = _epoch_samples(num_samples, config)
    orders = []
    for _ in range(config.epochs):
        if config.order == "random":
            orders.append(rng.permutation(num_samples)[:count].astype(np.int64))
        else:
            orders.append(np.arange(count, dtype=np.int64))
    return orders


def epoch_plans(probe: Any, config: BenchConfig) -> list[EpochPlan]:
    """What each epoch reads, identical for every configuration of a run; shard-window
    epochs are ShardSampler's (same seed and window), with their blocks."""
    from shardio.loading.sampling.layout import ShardLayout
    from shardio.loading.sampling.orders import EpochPlan, epoch_plan

    if config.order != "shard-window":
        return [EpochPlan(order) for order in epoch_orders(len(probe), config)]
    layout = ShardLayout(tuple(probe.shard_lengths), tuple(probe.shard_nbytes))
    count = _epoch_samples(len(probe), config)
    assert isinstance(config.window, int)
    plans = []
    for epoch in range(config.epochs):
        plan = epoch_plan("shard-window", layout, config.window, config.seed, epoch)
        plans.append(EpochPlan(plan.indices[:count].astype(np.int64), plan.block_starts))
    return plans


def batch_nbytes(batch: Any) -> int:
    """Bytes of the sample data in a collated batch (tensors, arrays, bytes)."""
    if hasattr(batch, "element_size") and hasattr(batch, "numel"):
        return int(batch.numel() * batch.element_size())
    if isinstance(batch, np.ndarray):
        return int(batch.nbytes)
    if isinstance(batch, (bytes, bytearray, memoryview)):
        return len(batch)
    if isinstance(batch, dict):
        return sum(batch_nbytes(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(batch_nbytes(v) for v in batch)
    return 0


def batch_len(batch: Any) -> int:
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    return len(batch)


# -------------------------------------------------------------------- runner
Progress = Callable[[str, int], Any]  # (description, total samples) -> a tqdm-like bar


def run_bench(
    path: str | os.PathLike[str],
    config: BenchConfig,
    progress: Progress | None = None,
    command: str | None = None,
) -> BenchReport:
    """Measure every configuration of ``config`` on the dataset at ``path``."""
    path = os.fspath(path)
    probe = open_dataset(path, format=config.format)
    files = dataset_files(probe)
    probe.close()  # opening shards to list their files opened handles: LMDB allows one each
    if config.compare_raw:
        raw_reader(probe)  # refuses a backend or dataset the raw loop cannot read, early
    if config.cache == "cold" and not hasattr(os, "posix_fadvise"):
        raise UnsupportedFeatureError("a cold cache needs os.posix_fadvise (Linux has it)")
    plans = epoch_plans(probe, config)
    report = BenchReport(
        path=path,
        format=probe.format,
        num_samples=len(probe),
        nbytes=int(sum(probe.shard_nbytes)),
        shards=len(probe.shard_lengths),
        config=config,
        machine=machine_info(),
        runs=[],
        ceiling=None,
        start=time.monotonic(),
        command=command,
    )
    if config.cache == "warm":
        _warm(files)
    with tempfile.TemporaryDirectory(prefix="shardio-bench-") as directory:
        for workers in config.workers:
            for budget, budget_label in zip(config.max_rss, config.max_rss_labels, strict=True):
                report.runs.append(
                    _run_one(
                        path,
                        "shardio",
                        workers,
                        budget,
                        budget_label,
                        config,
                        plans,
                        files,
                        directory,
                        progress,
                        probe,
                    )
                )
            if config.compare_raw:
                report.runs.append(
                    _run_one(
                        path,
                        "raw",
                        workers,
                        None,
                        None,
                        config,
                        plans,
                        files,
                        directory,
                        progress,
                        probe,
                    )
                )
    probe.close()
    if config.ceiling:
        report.ceiling = measure_ceiling(files, config.ceiling_bytes, disk=config.cache != "asis")
    _finish(report)
    return report


def _warm(files: Sequence[str]) -> None:
    """Read the files once so a warm run starts warm, when they fit in memory."""
    total = sum(os.path.getsize(f) for f in files)
    if total > 0.7 * _available_memory():
        return  # the cache cannot hold them: the report shows the measured residency
    buffer = bytearray(8 * 1024 * 1024)
    for name in files:
        with open(name, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def _available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _run_one(
    path: str,
    loader_kind: str,
    workers: int,
    budget: int | str | None,
    budget_label: str | None,
    config: BenchConfig,
    plans: list[EpochPlan],
    files: Sequence[str],
    directory: str,
    progress: Progress | None,
    probe: Any,
) -> RunResult:
    data = _torch_data()
    label = f"{loader_kind}-w{workers}-{budget or 0}"
    dataset: Any = open_dataset(path, budget, config.format) if loader_kind == "shardio" else None
    if dataset is None:
        dataset = _RawDataset(raw_reader(probe))
    from shardio.loading.sampling.readahead import lookahead_indices

    has_stats = hasattr(dataset, "memory_stats")
    readahead = getattr(dataset, "readahead", None)  # shardio only: raw loops get none
    sampler = _EpochSampler(
        plans,
        readahead,
        lookahead_indices(int(config.window or 0), int(sum(probe.shard_nbytes)), len(probe)),
        len(probe),
    )
    cold = config.cache == "cold"
    init = WorkerRssInit(
        directory, label, config.interval, stats=_WorkerMemoryStats() if has_stats else None
    )
    loader = data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=init if workers else None,
        # NOTE: a cold epoch needs fresh workers: a worker that keeps its mappings keeps
        # their pages in the page cache, where posix_fadvise cannot drop them.
        persistent_workers=workers > 0 and not cold,
    )
    total = sum(len(p.indices) for p in plans)
    name = _run_name(loader_kind, workers, budget, budget_label)
    bar = progress(name, total) if progress else None
    epochs: list[EpochResult] = []
    main = RssSampler(config.interval).start()
    try:
        for epoch in range(config.epochs):
            if cold:
                dataset.close()
                probe.close()
                state = drop_cache(files)
            else:
                state = cache_state(files)
            sampler.set_epoch(epoch)
            count = nbytes = 0
            start = time.perf_counter()
            for batch in loader:
                size = batch_len(batch)
                count += size
                nbytes += batch_nbytes(batch)
                if bar is not None:
                    bar.update(size)
            epochs.append(EpochResult(time.perf_counter() - start, count, nbytes, state))
    finally:
        samples = main.stop()
        if bar is not None:
            bar.close()
        stats = _jsonable(dataset.memory_stats()) if has_stats else None
        del loader  # shuts persistent workers down
        gc.collect()
        dataset.close()
    return RunResult(
        loader=loader_kind,
        workers=workers,
        batch_size=config.batch_size,
        order=config.order,
        max_rss=budget,
        epochs=epochs,
        main=RssSeries(f"{label}/main", samples, [os.getpid()]),
        worker_rss=collect_samples(directory, label),
        memory_stats=stats,
        worker_memory_stats=collect_stats(directory, label),
        max_rss_label=budget_label,
    )


def _run_name(loader: str, workers: int, budget: int | str | None, label: str | None = None) -> str:
    if not budget:
        return f"{loader} w{workers}"
    if isinstance(budget, str):
        return f"{loader} w{workers} max_rss={label or budget}"
    return f"{loader} w{workers} rss<={label or format_size(budget)}"


def _finish(report: BenchReport) -> None:
    raw = {r.workers: r for r in report.runs if r.loader == "raw"}
    for run in report.runs:
        base = raw.get(run.workers)
        if run.loader == "shardio" and base is not None and base.samples_per_s:
            run.raw_ratio = run.samples_per_s / base.samples_per_s
        if report.ceiling is not None:
            run.fraction_of_ceiling = report.ceiling.fraction(run.bytes_per_s, run.cold)


def machine_info() -> dict[str, Any]:
    """Cores, memory and versions: what a result needs to be read against."""
    import numpy

    from shardio import __version__

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _total_memory(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "shardio": __version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - the runner needs torch anyway
        pass
    return info


def _total_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return platform.processor() or None
