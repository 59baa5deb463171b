"""``convert()``: any readable source into a sharded dataset directory.

The guarantees, in the order the code keeps them:

* the output directory is created, or refused when it exists unless ``overwrite``
  (replace) or ``resume`` (continue) is asked for; a lock on it keeps a second
  conversion out;
* each shard is written under a temporary name and renamed when complete, then
  recorded in the progress record (see `.record`);
* ``resume`` reuses the recorded shards whose size and checksum still match, and
  rewrites the rest: the plan is deterministic, so the result is the dataset an
  uninterrupted run writes, byte for byte;
* the manifest is written last, and the progress record removed after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardio.core.checksum import hash_files
from shardio.core.config import format_size, parse_size, positive_int
from shardio.core.errors import (
    InvalidOptionError,
    OutputExistsError,
    OutputWriteError,
    ShardioError,
    UnknownFormatError,
)
from shardio.core.fieldnames import check_field_dtypes, check_field_names
from shardio.core.warn import warn_user
from shardio.storage.adapters.registry import get_backend, is_remote, writer_class
from shardio.storage.layout import (
    MANIFEST_NAME,
    foreign_entries,
    remove_path,
    scan_shard,
    shard_name,
)
from shardio.storage.manifest import Manifest, ShardInfo
from shardio.storage.outputlock import lock_output

from . import run as runner
from .plan import Plan, ShardTask, estimate_sample_nbytes, make_plan
from .progress import Progress, progress_mode
from .record import PROGRESS_NAME, ProgressRecord
from .run import ShardJob, disk_error
from .source import Skipped, Source, open_source
from .upload import UPLOADER, ShardUploader, staging_dir

__all__ = ["convert", "ConvertResult", "writer_options_for"]

#: Shard sizes below this draw a warning: per-shard files and overhead dominate.
SMALL_SHARD_SIZE = 1000**2
#: Bytes of samples read and appended at a time inside one shard task.
BLOCK_BYTES = 16 * 1024 * 1024
_SETTING_NAMES = {
    "format": "output format",
    "shard_size": "shard size",
    "num_samples": "number of samples",
    "num_shards": "shard boundaries",
    "shard_bounds": "shard boundaries",
    "schema": "fields",
    "writer_options": "compressor or writer options",
    "source_signature": "source (its files changed since)",
}


@dataclass
class ConvertResult:
    """What a conversion did."""

    path: str
    manifest: Manifest
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()
    shards_written: int = 0
    shards_reused: int = 0
    samples_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    source: str = ""
    messages: list[str] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples

    def summary(self) -> str:
        """A few lines for a person: what was written, how fast, what was left out."""
        rate = self.bytes_written / self.seconds / 1e6 if self.seconds > 0 else 0.0
        lines = [
            f"converted {self.source} -> {self.path}: {self.manifest.format}, "
            f"{self.num_samples} samples in {len(self.manifest.shards)} shard(s), "
            f"{format_size(self.manifest.nbytes)} on disk, {self.seconds:.1f} s "
            f"({rate:.1f} MB/s of samples)"
        ]
        if self.shards_reused:
            lines.append(
                f"  resumed: {self.shards_reused} shard(s) verified and kept, "
                f"{self.shards_written} written"
            )
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.extend(f"  skipped {s}" for s in self.skipped)
        return "\n".join(lines)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    format: str,
    shard_size: int | str = "256MB",
    *,
    workers: int = 1,
    fields: Sequence[str] | str | None = None,
    compressor: str | None = None,
    split_compound: bool = False,
    skip_unsupported: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    client: Any = None,
    scheduler: str | None = None,
    progress: bool | str = False,
    source_format: str | None = None,
    source_options: dict[str, Any] | None = None,
    writer_options: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    staging: str | os.PathLike[str] | None = None,
) -> ConvertResult:
    """Convert ``src`` (an HDF5 file or any dataset shardio reads) into ``dst``, a new
    sharded dataset directory of ``format`` (``lmdb``, ``zarr``, ``hdf5``, or ``mmap``
    alias ``raw``) with shards of about ``shard_size`` bytes of samples.

    ``workers=N`` writes shards in N local processes; ``client=`` (a
    ``dask.distributed.Client``) or ``scheduler="tcp://host:port"`` on a Dask cluster
    whose workers see ``dst``. ``fields`` picks datasets; ``split_compound`` stores
    the members of compound (structured) datasets as fields of their own;
    ``skip_unsupported`` leaves out, and lists, datasets that cannot be converted.
    ``compressor`` (``zstd``, ``blosc``, ``gzip`` for Zarr; ``gzip``, ``lzf`` for
    HDF5; ``name:level`` sets a level; ``none`` for none). Zarr output is compressed
    with zstd unless ``compressor`` says otherwise, in chunks of about 256 KiB and at
    most a shard's rows. A ``shard_size`` below 1 MB draws a warning. ``progress``:
    ``True`` for a bar on a terminal and log lines otherwise.
    """
    started = time.perf_counter()
    src_path = os.fspath(src)
    dst_path = os.fspath(dst)
    if is_remote(dst_path):  # staged locally, each shard uploaded as it completes
        local = staging_dir(dst_path, staging)
        uploader = ShardUploader(local, dst_path, storage_options, overwrite, resume)
        token = UPLOADER.set(uploader)
        try:
            result = convert(
            src, local, format, shard_size, workers=workers, fields=fields,
            compressor=compressor, split_compound=split_compound,
            skip_unsupported=skip_unsupported, resume=resume, overwrite=overwrite,
            client=client, scheduler=scheduler, progress=progress,
            source_format=source_format, source_options=source_options,
            writer_options=writer_options,
            )  # fmt: skip
        finally:
            UPLOADER.reset(token)
        uploader.finish(result.manifest)
        return dataclasses.replace(result, path=dst_path)
    fmt = _output_format(format)
    size = parse_size(shard_size, "shard_size")
    if size <= 0:
        raise InvalidOptionError(
            f"shard_size should be > 0 bytes, but got shard_size={shard_size!r}"
        )
    _check_options(workers, resume, overwrite, client, scheduler)
    dst_path = os.path.abspath(dst_path)
    if not is_remote(src_path) and os.path.abspath(src_path) == dst_path:
        raise InvalidOptionError(f"dst should differ from src, but both are {dst_path}")
    options = writer_options_for(fmt, compressor, writer_options)
    mode = progress_mode(progress)
    try:
        source = open_source(
            src_path,
            fields=fields,
            format=source_format,
            split_compound=split_compound,
            skip_unsupported=skip_unsupported,
            options=source_options,
        )
    except UnknownFormatError as exc:
        # The output format was checked above: a format named here is the source's,
        # which convert() takes as source_format=.
        raise UnknownFormatError(re.sub(r"\bformat=", "source_format=", str(exc))) from None
    with source:
        check_field_names(source.schema.names, f"converting {src_path}")
        check_field_dtypes(source.schema, f"converting {src_path}")
        sample_nbytes = estimate_sample_nbytes(source)
        plan = make_plan(source.num_samples, sample_nbytes, size, fmt, align=source.chunk_rows)
        if size < SMALL_SHARD_SIZE:
            _warn_small_shards(shard_size, plan)
        if plan.tasks:
            longest = max(t.num_samples for t in plan.tasks)
            defaults = writer_class(fmt).conversion_options(longest)
            options = {**defaults, **options}
        settings = plan.settings(source.schema, options, source.signature())
        messages: list[str] = []
        lock, done = _prepare_output(dst_path, settings, plan, resume, overwrite, messages.append)
        try:
            return _convert(
                source, src_path, dst_path, plan, settings, options, done, started,
                workers=workers, client=client, scheduler=scheduler, mode=mode,
                messages=messages,
            )  # fmt: skip
        finally:
            os.close(lock)


def _convert(
    source: Source,
    src_path: str,
    dst_path: str,
    plan: Plan,
    settings: dict[str, Any],
    options: dict[str, Any],
    done: dict[int, ShardInfo],
    started: float,
    *,
    workers: int,
    client: Any,
    scheduler: str | None,
    mode: str,
    messages: list[str],
) -> ConvertResult:
    record = ProgressRecord(dst_path)
    run_id = uuid.uuid4().hex[:12]
    shards = dict(done)
    remaining = [t for t in plan.tasks if t.number not in done]
    try:
        if remaining:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(dst_path, MANIFEST_NAME))
        record.start(settings, done, run_id)
    except OSError as exc:
        raise _write_failure(exc, dst_path) from exc
    display = Progress(
        mode,
        f"shardio convert {os.path.basename(src_path.rstrip('/')) or src_path}",
        total_samples=plan.num_samples,
        total_bytes=plan.nbytes,
        total_shards=len(plan.tasks),
        done_samples=sum(s.num_samples for s in done.values()),
        done_bytes=int(sum(s.num_samples for s in done.values()) * plan.sample_nbytes),
        done_shards=len(done),
    )
    for text in messages:
        display.message(text)
    serial = client is None and scheduler is None and workers == 1
    written = {"samples": 0, "bytes": 0}

    uploader = UPLOADER.get()

    def on_done(task: ShardTask, info: ShardInfo) -> None:
        shards[task.number] = info
        record.add(task.number, info)
        if uploader is not None:  # converting to a URL: upload it now, free its space
            uploader.shard_done(info)
        written["samples"] += task.num_samples
        estimate = int(task.num_samples * plan.sample_nbytes)
        written["bytes"] += estimate
        if serial:
            display.shard_done()
        else:
            display.shard_done(task.num_samples, estimate)

    job = ShardJob(
        source, dst_path, plan.format, options, _block_rows(plan, source, options), run_id
    )
    try:
        if remaining:
            _run(job, remaining, workers, client, scheduler, on_done, display.advance)
        manifest = Manifest(
            plan.format,
            source.schema,
            tuple(shards[t.number] for t in plan.tasks),
            metadata={"conversion": _conversion_metadata(source, src_path, settings)},
        )
        manifest.save(dst_path)
        record.remove()
    except KeyboardInterrupt:
        display.message(
            f"interrupted: {len(shards)}/{len(plan.tasks)} shards complete in {dst_path}; "
            "rerun with resume=True (--resume) to continue"
        )
        raise
    except ShardioError:
        raise
    except OSError as exc:
        raise _write_failure(exc, dst_path) from exc
    finally:
        display.close()
    return ConvertResult(
        path=dst_path,
        manifest=manifest,
        skipped=source.skipped,
        notes=source.notes,
        shards_written=len(remaining),
        shards_reused=len(done),
        samples_written=written["samples"],
        bytes_written=written["bytes"],
        seconds=time.perf_counter() - started,
        source=src_path,
        messages=messages,
    )


def _run(
    job: ShardJob,
    tasks: list[ShardTask],
    workers: int,
    client: Any,
    scheduler: str | None,
    on_done: Callable[[ShardTask, ShardInfo], None],
    on_block: Callable[[int, int], None],
) -> None:
    if client is not None or scheduler is not None:
        dask, owned = runner.dask_client(client, scheduler)
        try:
            runner.run_dask(job, tasks, dask, on_done)
        finally:
            if owned:
                dask.close()
    elif workers > 1:
        job.source.close()  # workers open their own handles
        runner.run_processes(job, tasks, workers, on_done)
    else:
        runner.run_serial(job, tasks, on_done, on_block)


# ------------------------------------------------------------------- options
def _output_format(format: str) -> str:
    if not isinstance(format, str):
        raise InvalidOptionError(f"format should be a string, but got format={format!r}")
    return get_backend(format).name


def _warn_small_shards(shard_size: int | str, plan: Plan) -> None:
    rows = plan.num_samples / max(1, len(plan.tasks))
    warn_user(
        f"shard_size={shard_size!r} is below 1 MB: {len(plan.tasks)} shard(s) of about "
        f"{rows:,.0f} sample(s) each, where files and per-shard overhead cost more than "
        "the samples; 64MB to 1GB suits most datasets",
        UserWarning,
    )


def _check_options(
    workers: int, resume: bool, overwrite: bool, client: Any, scheduler: str | None
) -> None:
    positive_int(workers, "workers")
    if resume and overwrite:
        raise InvalidOptionError(
            "resume=True continues an interrupted conversion and overwrite=True starts again: "
            "pass one of them"
        )
    if client is not None and scheduler is not None:
        raise InvalidOptionError("pass client= or scheduler=, not both")
    if (client is not None or scheduler is not None) and workers != 1:
        raise InvalidOptionError(
            f"workers={workers} starts local processes, but a Dask cluster (client= or "
            "scheduler=) runs the conversion: size the cluster instead"
        )
    if scheduler is not None and (not isinstance(scheduler, str) or "://" not in scheduler):
        raise InvalidOptionError(
            f"scheduler should be an address such as 'tcp://host:8786', but got "
            f"scheduler={scheduler!r}"
        )


def writer_options_for(
    fmt: str, compressor: str | None, extra: dict[str, Any] | None
) -> dict[str, Any]:
    """The backend writer's keyword options for ``compressor`` plus ``extra``."""
    writer = writer_class(fmt)
    if compressor is None:
        compressor = writer.default_compressor
    name, level = _parse_compressor(compressor)
    options = {} if name is None else writer.compression_options(name, level)
    options.update(extra or {})
    unknown = sorted(set(options) - writer.options)
    if unknown:
        raise InvalidOptionError(
            f"option {unknown[0]}= is not supported when writing {fmt}; its options are: "
            f"{', '.join(sorted(writer.options)) or 'none'}"
        )
    return options


def _parse_compressor(compressor: str | None) -> tuple[str | None, int | None]:
    if compressor is None:
        return None, None
    if not isinstance(compressor, str):
        raise InvalidOptionError(
            f"compressor should be a name such as 'zstd' or 'zstd:5', but got "
            f"compressor={compressor!r}"
        )
    name, _, level = compressor.strip().lower().partition(":")
    if name in ("", "none"):
        return None, None
    if not level:
        return name, None
    try:
        return name, int(level)
    except ValueError:
        raise InvalidOptionError(
            f"compressor level should be an integer ('zstd:5'), but got compressor={compressor!r}"
        ) from None


def _block_rows(plan: Plan, source: Source, options: dict[str, Any]) -> int:
    """Rows read and appended at a time: about BLOCK_BYTES, in whole storage chunks."""
    per_row = max(plan.sample_nbytes, 1.0)
    rows = max(1, int(BLOCK_BYTES // per_row))
    aligns = [a for a in (source.chunk_rows, _output_chunk_rows(plan, source, options)) if a]
    if len(aligns) == 2 and math.lcm(*aligns) <= rows:
        aligns = [math.lcm(*aligns)]
    for align in reversed(aligns):  # the output's chunks first: rewriting one costs most
        if align <= rows:
            return rows - rows % align
        if align * per_row <= 4 * BLOCK_BYTES:
            return align
    return rows


def _output_chunk_rows(plan: Plan, source: Source, options: dict[str, Any]) -> int | None:
    """Rows per chunk of the largest fixed-size field in an output shard, if chunked."""
    largest = max((f.sample_nbytes for f in source.schema if not f.variable), default=0)
    return writer_class(plan.format).chunk_rows(options, largest) if largest else None


def _conversion_metadata(source: Source, src_path: str, settings: dict[str, Any]) -> dict[str, Any]:
    from shardio import __version__

    return {
        "source": src_path,
        "split_compound": source.split_compound,
        **({"group": source.group} if source.group else {}),
        "skipped": [s.to_json() for s in source.skipped],
        "notes": list(source.notes),
        "settings": settings,
        "shardio_version": __version__,
    }


# -------------------------------------------------------------------- output
def _lock(directory: str) -> int:
    """An open descriptor of ``directory`` holding an exclusive flock on it."""
    return lock_output(directory)


def _prepare_output(
    dst: str,
    settings: dict[str, Any],
    plan: Plan,
    resume: bool,
    overwrite: bool,
    say: Callable[[str], None],
) -> tuple[int, dict[int, ShardInfo]]:
    """Create or clean the output directory and lock it; returns the lock and, when
    resuming, the verified complete shards to keep."""
    if not os.path.lexists(dst):
        try:
            os.makedirs(dst)
        except OSError as exc:
            raise _write_failure(exc, dst) from exc
        return _lock(dst), {}
    if not os.path.isdir(dst):
        raise OutputExistsError(f"output {dst} exists and is not a directory; remove it first")
    if not (resume or overwrite):
        raise OutputExistsError(
            f"output {dst} already exists; pass overwrite=True (--overwrite) to replace it, "
            "or resume=True (--resume) to continue an interrupted conversion"
        )
    lock = _lock(dst)
    try:
        foreign = foreign_entries(dst)
        if foreign:
            action = "overwrite" if overwrite else "resume into"
            raise OutputExistsError(
                f"refusing to {action} {dst}: it holds {foreign[:3]}, which shardio did not write"
            )
        done = _resumable(dst, settings, plan, say) if resume else {}
        keep = {info.path for info in done.values()}
        keep.add(MANIFEST_NAME)  # removed only if shards are to be written
        keep.add(PROGRESS_NAME)
        try:
            for entry in os.listdir(dst):
                if entry not in keep:
                    remove_path(os.path.join(dst, entry))
            if overwrite:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(dst, MANIFEST_NAME))
        except OSError as exc:  # a read-only file system, a directory without write access
            raise _write_failure(exc, dst) from exc
    except BaseException:
        os.close(lock)
        raise
    return lock, done


def _resumable(
    dst: str, settings: dict[str, Any], plan: Plan, say: Callable[[str], None]
) -> dict[int, ShardInfo]:
    """The shards of an earlier run of the same conversion that verify, by number."""
    loaded = ProgressRecord(dst).load()
    if loaded is not None:
        recorded, shards = loaded
    elif os.path.exists(os.path.join(dst, MANIFEST_NAME)):
        try:
            manifest = Manifest.load(dst)
        except ShardioError as exc:
            say(f"the manifest of {dst} is unreadable ({exc}); converting every shard again")
            return {}
        recorded = manifest.metadata.get("conversion", {}).get("settings")
        if not isinstance(recorded, dict):
            raise OutputExistsError(
                f"cannot resume into {dst}: its dataset was not written by shardio convert; "
                "pass overwrite=True (--overwrite) to replace it"
            )
        shards = dict(enumerate(manifest.shards))
    else:
        return {}  # killed before the first shard: nothing to keep
    differ = sorted({_SETTING_NAMES.get(k, k) for k in settings if settings[k] != recorded.get(k)})
    if differ:
        raise OutputExistsError(
            f"cannot resume into {dst}: the interrupted conversion differs in "
            f"{', '.join(differ)}; rerun it with the same source and options, or pass "
            "overwrite=True (--overwrite) to start again"
        )
    verified = {}
    for number, info in sorted(shards.items()):
        problem = _check_shard(dst, number, info, plan)
        if problem is None:
            verified[number] = info
        else:
            say(f"shard {info.path} is written again: {problem}")
    return verified


def _check_shard(dst: str, number: int, info: ShardInfo, plan: Plan) -> str | None:
    """Why a recorded shard cannot be kept, or None when it verifies."""
    if number >= len(plan.tasks) or info.path != shard_name(
        number, get_backend(plan.format).shard_suffix
    ):
        return "it is not part of this conversion's plan"
    if info.num_samples != plan.tasks[number].num_samples:
        return f"it holds {info.num_samples} samples, the plan {plan.tasks[number].num_samples}"
    path = os.path.join(dst, info.path)
    if not os.path.exists(path):
        uploader = UPLOADER.get()
        if uploader is not None and uploader.on_server(info):
            return None  # uploaded before, and removed from staging
        return "it is missing"
    files = scan_shard(path)
    if files.nbytes != info.nbytes:
        return f"it has {files.nbytes} bytes, the record says {info.nbytes}"
    if info.checksum is not None and hash_files(files.paths, path) != info.checksum:
        return "its checksum differs from the record"
    return None


def _write_failure(exc: OSError, dst: str) -> ShardioError:
    reason = disk_error(exc) or str(exc)
    return OutputWriteError(
        f"writing into {dst} failed: {reason}; no manifest was written. Fix the cause and "
        "rerun with resume=True (--resume)"
    )
