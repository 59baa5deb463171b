"""Execute shard tasks: in this process, in local worker processes, or on a Dask cluster.

Every way runs the same function, `write_shard`, on the same tasks, and each
shard's bytes depend only on its task, so the output (and every checksum in the
manifest) is identical whichever way it ran.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from shardio.core.errors import (
    BackendNotInstalledError,
    InvalidOptionError,
    ShardCorruptError,
    ShardioError,
)
from shardio.storage.adapters.registry import get_backend, writer_class
from shardio.storage.layout import partial_name, remove_path, shard_name
from shardio.storage.manifest import ShardInfo
from shardio.storage.writefailure import disk_error
from shardio.storage.writefailure import write_failure as _write_failure
from shardio.storage.writer import finish_shard

from .plan import ShardTask, columns_nbytes
from .record import ProgressRecord
from .source import Source

__all__ = [
    "ShardJob",
    "SupersededError",
    "write_shard",
    "run_serial",
    "run_processes",
    "run_dask",
    "disk_error",
]

OnDone = Callable[[ShardTask, ShardInfo], None]
OnBlock = Callable[[int, int], None]

#: How long to try reaching a Dask scheduler given by address.
CONNECT_TIMEOUT = "20s"


@dataclass(frozen=True)
class ShardJob:
    """What every shard task of one conversion shares; small and picklable."""

    source: Source
    output: str  # absolute path of the dataset directory
    format: str
    options: dict[str, Any] = field(default_factory=dict)
    block_rows: int = 1024
    #: Identifies this run of the conversion; see `write_shard`.
    run_id: str = ""


def write_shard(job: ShardJob, task: ShardTask, on_block: OnBlock | None = None) -> ShardInfo:
    """Write shard ``task.number`` under a temporary name of this run, then rename it.

    On any failure the partial shard is removed and the error raised; a full disk
    becomes `OutputWriteError` naming the shard.

    NOTE: a task of an abandoned run can outlive its coordinator (a Dask worker
    finishes a task whose conversion already failed and was resumed). Partial names
    carry the run's id, and the rename only happens while the progress record still
    names this run, so such a task never touches the resumed run's shards.
    """
    name = shard_name(task.number, get_backend(job.format).shard_suffix)
    partial_entry = f"{partial_name(name)}-{job.run_id}" if job.run_id else partial_name(name)
    partial = os.path.join(job.output, partial_entry)
    _check_current(job, name)
    remove_path(partial)
    source, schema = job.source, job.source.schema
    writer = None
    try:
        writer = writer_class(job.format, job.output)(partial, schema, **job.options)
        for start in range(task.start, task.stop, job.block_rows):
            stop = min(task.stop, start + job.block_rows)
            columns = _read(source, start, stop)
            writer.append(columns, stop - start)
            if on_block is not None:
                on_block(stop - start, int(columns_nbytes(columns, schema, stop - start).sum()))
        writer.close()
        count = writer.count
        writer = None
        _check_current(job, name)
        return finish_shard(job.output, name, count, partial=partial_entry)
    except BaseException as exc:
        libraries = writer_class(job.format).libraries
        failure = _write_failure(exc, job.output, name, libraries)  # before cleanup frees space
        if writer is not None:
            writer.abort()
        with contextlib.suppress(OSError):
            remove_path(partial)
        if failure is not None:
            raise failure from exc
        raise
    finally:
        source.close()


class SupersededError(ShardioError, RuntimeError):
    """A shard task whose conversion run was abandoned and has been resumed since."""


def _check_current(job: ShardJob, name: str) -> None:
    if job.run_id and ProgressRecord(job.output).run_id() != job.run_id:
        raise SupersededError(
            f"shard {name} of {job.output} was not written: the conversion run that asked "
            "for it has ended"
        )


def _read(source: Source, start: int, stop: int) -> Any:
    """Rows of the source; a damaged source names itself and the rows."""
    try:
        return source.read_range(start, stop)
    except ShardioError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ShardCorruptError(
            f"reading samples {start} to {stop - 1} of {source.path} failed: {exc}"
        ) from exc


# ---------------------------------------------------------------------- serial
def run_serial(
    job: ShardJob, tasks: Sequence[ShardTask], on_done: OnDone, on_block: OnBlock
) -> None:
    """Write the shards one after the other in this process."""
    for task in tasks:
        on_done(task, write_shard(job, task, on_block))


# ------------------------------------------------------------ local processes
def _init_worker(parent: int) -> None:
    """Worker start: die with the coordinator, so a killed run leaves no writer behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # best effort: the resumed run cleans up anyway
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)  # the coordinator died before prctl took effect


def run_processes(job: ShardJob, tasks: Sequence[ShardTask], workers: int, on_done: OnDone) -> None:
    """Write the shards in ``workers`` local processes (started with spawn).

    NOTE: spawn, not fork: the coordinator has had the source open, and a forked
    child would inherit HDF5 library state it must not share. As with any spawned
    worker, a script calling this needs the ``if __name__ == "__main__":`` guard.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(tasks))),
        mp_context=context,
        initializer=_init_worker,
        initargs=(os.getpid(),),
    ) as pool:
        futures = {pool.submit(write_shard, job, task): task for task in tasks}
        _drain(futures, on_done, cancel=lambda pending: [f.cancel() for f in pending])


def _drain(
    futures: dict[Any, ShardTask], on_done: OnDone, cancel: Callable[[list[Any]], Any]
) -> None:
    """Record shards as they finish; after the first failure cancel what has not
    started, still record what completes, then raise that failure."""
    pending = set(futures)
    failure: BaseException | None = None
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is not None:
                    if failure is None:
                        failure = exc
                        cancel(list(pending))
                    continue
                on_done(futures[future], future.result())
    except BaseException:
        cancel(list(pending))
        raise
    if failure is not None:
        raise failure


# ---------------------------------------------------------------------- Dask
def dask_client(client: Any, scheduler: str | None) -> tuple[Any, bool]:
    """(client, whether we own it): the given client, or one connected to ``scheduler``."""
    try:
        import distributed
    except ImportError as exc:
        raise BackendNotInstalledError(
            f"running a conversion on a Dask cluster needs dask.distributed: "
            f"pip install shardio-data[dask] ({exc})"
        ) from exc
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise InvalidOptionError(
                f"client should be a dask.distributed.Client, but got {type(client).__name__}"
            )
        return client, False
    assert scheduler is not None
    try:
        return distributed.Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False), True
    except (OSError, TimeoutError, ValueError) as exc:
        raise InvalidOptionError(
            f"cannot reach the Dask scheduler at scheduler={scheduler!r}: {exc}"
        ) from None


def run_dask(job: ShardJob, tasks: Sequence[ShardTask], client: Any, on_done: OnDone) -> None:
    """Write the shards as tasks of a Dask cluster whose workers see ``job.output``.

    At most two tasks per worker are in flight. After a failure nothing new is
    submitted and the tasks already running are waited for (and recorded when they
    succeed): Dask cannot stop a running task, and one left behind would still be
    writing when the conversion is resumed. Only an interrupt (Ctrl-C) leaves without
    waiting; the run id fence in `write_shard` keeps such tasks harmless.
    """
    import distributed

    token = uuid.uuid4().hex[:12]
    workers = len(client.scheduler_info().get("workers", {}))
    window = max(2, 2 * workers)
    queue = list(tasks)
    running: dict[Any, ShardTask] = {}
    finished = distributed.as_completed(loop=client.loop)

    def submit() -> None:
        task = queue.pop(0)
        key = f"shardio-convert-{token}-{task.number:06d}"
        future = client.submit(write_shard, job, task, key=key, pure=False)
        running[future] = task
        finished.add(future)

    for _ in range(min(window, len(queue))):
        submit()
    failure: BaseException | None = None
    try:
        for future in finished:
            task = running.pop(future)
            if future.status == "error":
                failure = failure or future.exception()
            elif future.status == "finished":
                on_done(task, future.result())
            if failure is None and queue:
                submit()
    except BaseException:
        client.cancel(list(running))
        raise
    if failure is not None:
        raise failure
