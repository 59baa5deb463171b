"""Resident memory over time: a sampler thread in every process of a benchmark
(`shardio.memory.RssSampler`, the one sampler shardio has, with numpy arrays).

RSS is read from ``/proc/<pid>/status`` (``VmRSS`` with its parts ``RssAnon``,
``RssFile`` and ``RssShmem``), so file-backed pages mapped in by ``mmap`` (LMDB, raw
shards) are counted and told apart from heap growth. Where ``/proc`` is missing,
psutil gives the total only. Samples carry ``time.monotonic()``, which on Linux is
one clock for every process, so the samples of DataLoader workers line up with the
main process's.

Workers report through files: `WorkerRssInit` is a picklable
``worker_init_fn`` that starts a sampler writing each sample straight to a file in
a directory the main process reads afterwards (`collect_samples`). Every
sample is one ``os.write`` on an ``O_APPEND`` descriptor, so nothing is lost when a
worker exits through ``os._exit`` without running finalizers.
"""

from __future__ import annotations

import multiprocessing.util
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardio.memory.rss import read_rss
from shardio.memory.sampler import RSS_ROW
from shardio.memory.sampler import RssSampler as MemoryRssSampler

__all__ = [
    "RSS_DTYPE",
    "RssSampler",
    "RssSeries",
    "WorkerRssInit",
    "collect_samples",
    "read_rss",
]

#: One sample: seconds (``time.monotonic``) and bytes of RSS and its parts (-1 where the
#: OS does not say).
RSS_DTYPE = np.dtype([("t", "<f8"), ("rss", "<i8"), ("anon", "<i8"), ("file", "<i8")])
assert RSS_DTYPE.itemsize == RSS_ROW.size  # the rows a sampler writes to its file


@dataclass
class RssSeries:
    """The samples of one process, with the summary the report shows."""

    label: str
    samples: np.ndarray  # RSS_DTYPE
    pids: list[int] = field(default_factory=list)

    @property
    def baseline(self) -> int:
        """RSS of the first sample: after imports and open, before reading."""
        return int(self.samples["rss"][0]) if len(self.samples) else 0

    @property
    def peak(self) -> int:
        return int(self.samples["rss"].max()) if len(self.samples) else 0

    @property
    def peak_file(self) -> int:
        return int(self.samples["file"].max()) if len(self.samples) else 0

    @property
    def peak_anon(self) -> int:
        return int(self.samples["anon"].max()) if len(self.samples) else 0

    @property
    def growth(self) -> int:
        """Peak RSS over the baseline."""
        return self.peak - self.baseline

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "pids": self.pids,
            "samples": len(self.samples),
            "baseline_bytes": self.baseline,
            "peak_bytes": self.peak,
            "peak_anon_bytes": self.peak_anon,
            "peak_file_bytes": self.peak_file,
            "growth_bytes": self.growth,
        }


class RssSampler(MemoryRssSampler):
    """`shardio.memory.RssSampler` with its samples as a numpy array (`RSS_DTYPE`).

    The first sample is taken synchronously by `start`, so even a process that
    dies at once has its baseline. With ``path``, every sample is also appended to
    that file (the way DataLoader workers report to the main process).
    """

    def stop(self) -> np.ndarray:  # type: ignore[override]
        """Stop the thread after one last sample; returns every sample taken."""
        super().stop()
        return self.samples

    @property
    def samples(self) -> np.ndarray:
        with self._lock:
            return np.array(self.rows, dtype=RSS_DTYPE)

    def series(self, label: str) -> RssSeries:
        return RssSeries(label, self.samples, [os.getpid()])


# One sampler per worker process; a module global so the thread lives as long as the
# worker, whatever becomes of the objects that started it.
_WORKER_SAMPLER: RssSampler | None = None


class WorkerRssInit:
    """A ``worker_init_fn`` that samples the worker's RSS into ``directory``.

    Each worker process writes ``<label>-w<worker id>-<pid>.rss``; a worker restarted
    for a new epoch (``persistent_workers=False``) writes a new file under the same
    worker id. ``then`` is an optional user ``worker_init_fn`` called afterwards.
    ``stats`` is an optional callable run periodically in the worker whose JSON-able
    result is written next to the samples (``memory_stats`` of the worker's dataset).
    """

    def __init__(
        self,
        directory: str,
        label: str,
        interval: float = 0.02,
        then: Callable[[int], None] | None = None,
        stats: Callable[[], Any] | None = None,
        stats_every: float = 0.5,
    ) -> None:
        self.directory = directory
        self.label = label
        self.interval = interval
        self.then = then
        self.stats = stats
        self.stats_every = stats_every

    def __call__(self, worker_id: int) -> None:
        global _WORKER_SAMPLER
        stem = os.path.join(self.directory, f"{self.label}-w{worker_id}-{os.getpid()}")
        hook = None
        if self.stats is not None:
            hook = _StatsWriter(self.stats, stem + ".stats.json", self.stats_every)
            # NOTE: the last figures, written as the worker exits: a worker that lives
            # less than stats_every would otherwise leave only its first, empty ones.
            # DataLoader workers exit through multiprocessing, which runs these
            # finalizers (atexit handlers do not run there).
            multiprocessing.util.Finalize(None, hook.write, exitpriority=10)
        _WORKER_SAMPLER = RssSampler(self.interval, stem + ".rss", on_sample=hook).start()
        if self.then is not None:
            self.then(worker_id)


class _StatsWriter:
    """Writes ``stats()`` as JSON at most every ``every`` seconds (atomically)."""

    def __init__(self, stats: Callable[[], Any], path: str, every: float) -> None:
        self.stats = stats
        self.path = path
        self.every = every
        self._last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        self.write()

    def write(self) -> None:
        import json

        text = json.dumps(_jsonable(self.stats()))
        # NOTE: the sampler thread and the exit finalizer may both write at once: each
        # writes a temporary file of its own, so a shorter text never lands on the tail
        # of a longer one; the last rename wins, whole.
        temporary = f"{self.path}.tmp-{threading.get_ident()}"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, self.path)


def _jsonable(value: Any) -> Any:
    """Dataclasses, mappings and numpy scalars as plain JSON values."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def collect_samples(directory: str, label: str) -> dict[int, RssSeries]:
    """Worker id -> samples of every worker process of ``label`` found in ``directory``."""
    prefix = f"{label}-w"
    found: dict[int, list[tuple[int, np.ndarray]]] = {}
    for name in sorted(os.listdir(directory)):
        if not (name.startswith(prefix) and name.endswith(".rss")):
            continue
        worker, _, pid = name[len(prefix) : -len(".rss")].partition("-")
        if not (worker.isdigit() and pid.isdigit()):
            continue
        data = np.fromfile(os.path.join(directory, name), dtype=RSS_DTYPE)
        found.setdefault(int(worker), []).append((int(pid), data))
    result: dict[int, RssSeries] = {}
    for worker_id, parts in sorted(found.items()):
        parts.sort(key=lambda part: float(part[1]["t"][0]) if len(part[1]) else 0.0)
        samples = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, RSS_DTYPE)
        result[worker_id] = RssSeries(f"{label}/worker{worker_id}", samples, [p[0] for p in parts])
    return result


def collect_stats(directory: str, label: str) -> dict[int, Any]:
    """Worker id -> the last ``stats`` written by each worker of ``label`` (see WorkerRssInit)."""
    import json

    prefix = f"{label}-w"
    result: dict[int, Any] = {}
    for name in sorted(os.listdir(directory)):
        if name.startswith(prefix) and name.endswith(".stats.json"):
            worker = name[len(prefix) :].partition("-")[0]
            if worker.isdigit():
                with open(os.path.join(directory, name), encoding="utf-8") as handle:
                    result[int(worker)] = json.load(handle)
    return result
