"""Execute shard tasks: in this process, in local worker processes, or on a Dask cluster.

Every way runs the same function, :func:`write_shard`, on the same tasks, and each
shard's bytes depend only on its task, so the output (and every checksum in the
manifest) is identical whichever way it ran.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ..adapters.registry import writer_class
from ..errors import (
    BackendNotInstalledError,
    InvalidOptionError,
    OutputWriteError,
    ShardCorruptError,
    ShardioError,
)
from ..manifest import ShardInfo
from ..writer import finish_shard, partial_name, remove_path, shard_name
from .plan import ShardTask, columns_nbytes
from .source import Source

__all__ = ["ShardJob", "write_shard", "run_serial", "run_processes", "run_dask", "disk_error"]

OnDone = Callable[[ShardTask, ShardInfo], None]
OnBlock = Callable[[int, int], None]

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_DISK_MESSAGES = (
    "No space left on device",
    "Disk quota exceeded",
    "File too large",
    "Read-only file system",
)


@dataclass(frozen=True)
class ShardJob:
    """What every shard task of one conversion shares; small and picklable."""

    source: Source
    output: str  # absolute path of the dataset directory
    format: str
    options: dict[str, Any] = field(default_factory=dict)
    block_rows: int = 1024


def disk_error(exc: BaseException) -> str | None:
    """The reason, when ``exc`` (or what caused it) is a full disk, quota or read-only fs."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_ERRNOS:
            return os.strerror(current.errno)
        text = str(current)
        for message in _DISK_MESSAGES:
            if message in text:
                return message
        current = current.__cause__ or current.__context__
    return None


def write_shard(job: ShardJob, task: ShardTask, on_block: OnBlock | None = None) -> ShardInfo:
    """Write shard ``task.number`` under its temporary name, then rename it.

    On any failure the partial shard is removed and the error raised; a full disk
    becomes :class:`~shardio.errors.OutputWriteError` naming the shard.
    """
    name = shard_name(task.number, job.format)
    partial = os.path.join(job.output, partial_name(name))
    remove_path(partial)  # left by a run that was killed
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
        return finish_shard(job.output, name, count)
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        with contextlib.suppress(OSError):
            remove_path(partial)
        if isinstance(exc, ShardioError) or not isinstance(exc, Exception):
            raise
        reason = disk_error(exc)
        if reason is not None:
            raise OutputWriteError(
                f"writing shard {name} into {job.output} failed: {reason}; free space (or "
                "choose another output) and rerun with resume=True (--resume)"
            ) from exc
        if isinstance(exc, OSError):
            raise OutputWriteError(f"writing shard {name} into {job.output} failed: {exc}") from exc
        raise
    finally:
        source.close()


def _read(source: Source, start: int, stop: int) -> Any:
    """Rows of the source; a damaged source names itself and the rows."""
    try:
        return source.read(start, stop)
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
    child would inherit HDF5 library state it must not share.
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
            f"pip install shardio[dask] ({exc})"
        ) from exc
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise InvalidOptionError(
                f"client should be a dask.distributed.Client, but got {type(client).__name__}"
            )
        return client, False
    assert scheduler is not None
    try:
        return distributed.Client(scheduler, timeout="20s", set_as_default=False), True
    except (OSError, TimeoutError, ValueError) as exc:
        raise InvalidOptionError(
            f"cannot reach the Dask scheduler at scheduler={scheduler!r}: {exc}"
        ) from None


def run_dask(job: ShardJob, tasks: Sequence[ShardTask], client: Any, on_done: OnDone) -> None:
    """Write the shards as tasks of a Dask cluster whose workers see ``job.output``."""
    import distributed

    token = uuid.uuid4().hex[:12]
    futures: dict[Any, ShardTask] = {}
    for task in tasks:
        future = client.submit(
            write_shard, job, task, key=f"shardio-convert-{token}-{task.number:06d}", pure=False
        )
        futures[future] = task
    pending = set(futures)
    failure: BaseException | None = None
    try:
        for future in distributed.as_completed(list(futures)):
            pending.discard(future)
            if future.status == "cancelled":
                continue
            if future.status == "error":
                if failure is None:
                    failure = future.exception()
                    client.cancel(list(pending))
                continue
            on_done(futures[future], future.result())
    except BaseException:
        client.cancel(list(pending))
        raise
    if failure is not None:
        raise failure
