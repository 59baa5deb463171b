"""``verify()``: re-read a dataset, check it against its manifest and, optionally, its source.

For each shard, in this order: the files exist and have the manifest's byte size,
their content hash matches, the shard opens with the manifest's sample count and
fields, and every sample decodes (and, with ``against=``, equals the source's).

NOTE: a damaged shard is never opened in this process. Sizes are compared before
anything is mapped (reading a mapping past the end of a truncated file raises
SIGBUS and kills the process), and a shard whose checksum fails is decoded only in
a child process, so a backend that crashes on corrupt bytes (a segfault inside
LMDB, say) is reported as such instead of taking the interpreter down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardio.core.checksum import hash_files
from shardio.core.errors import DatasetNotFoundError, ShardioError, VerificationError
from shardio.core.schema import Field, Schema
from shardio.storage.adapters.base import Columns
from shardio.storage.adapters.registry import is_remote
from shardio.storage.cache.fetch import download_shard
from shardio.storage.cache.store import remove_tree
from shardio.storage.integrity import ShardCheck
from shardio.storage.layout import shard_files_as_written
from shardio.storage.manifest import Manifest, ShardInfo
from shardio.storage.reader import DatasetReader
from shardio.storage.remote import filesystem

from .progress import Progress, progress_mode
from .source import Source, open_source

__all__ = ["Problem", "VerifyReport", "verify"]

_BLOCK_BYTES = 16 * 1024 * 1024
_MAX_PROBLEMS_PER_SHARD = 10


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where (shard, global sample index) and what."""

    shard: str | None
    message: str
    sample: int | None = None

    def __str__(self) -> str:
        where = [
            w for w in (self.shard, None if self.sample is None else f"sample {self.sample}") if w
        ]
        return f"{': '.join(where)}: {self.message}" if where else self.message


@dataclass
class VerifyReport:
    """What `verify` checked and found."""

    path: str
    against: str | None = None
    num_shards: int = 0
    num_samples: int = 0
    bytes_checked: int = 0
    samples_read: int = 0
    samples_compared: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED with {len(self.problems)} problem(s)"
        compared = f", {self.samples_compared} compared with {self.against}" if self.against else ""
        return (
            f"verify {self.path}: {verdict}: {self.num_shards} shard(s), "
            f"{self.samples_read}/{self.num_samples} samples read{compared}, "
            f"{self.bytes_checked / 1e6:.1f} MB hashed in {self.seconds:.1f} s"
        )


def verify(
    path: str | os.PathLike[str],
    against: str | os.PathLike[str] | None = None,
    *,
    source_format: str | None = None,
    source_options: dict[str, Any] | None = None,
    progress: bool | str = False,
    raise_errors: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> VerifyReport:
    """Check every shard of the dataset at ``path`` (sizes, checksums, counts, every
    sample decodes) and, with ``against``, that every sample equals the source's.

    Raises `VerificationError` naming the first problems, unless
    ``raise_errors=False``: then the report lists them all (``report.ok`` is False).
    """
    started = time.perf_counter()
    location = os.fspath(path)
    if is_remote(location):  # each shard downloaded, checked and removed in turn
        return _verify_remote(
            location, against, source_format, source_options, progress, raise_errors,
            storage_options,
        )  # fmt: skip
    if os.path.isfile(location):
        raise DatasetNotFoundError(
            f"{location} is a file, not a shardio dataset directory: verify checks a "
            "converted dataset against its manifest; `shardio inspect` shows whether a file "
            "reads, and `shardio verify DST --against SRC` compares a conversion with its source"
        )
    manifest = Manifest.load(location)
    report = VerifyReport(
        location,
        None if against is None else os.fspath(against),
        len(manifest.shards),
        manifest.num_samples,
    )
    try:
        manifest.check_directory(location)
    except ShardioError as exc:
        report.problems.append(Problem(None, str(exc)))
    _check_shards(location, manifest, report, against, source_format, source_options, progress)
    report.seconds = time.perf_counter() - started
    _raise_if(report, location, raise_errors)
    return report


def _raise_if(report: VerifyReport, where: str, raise_errors: bool) -> None:
    if report.problems and raise_errors:
        first = "; ".join(str(p) for p in report.problems[:3])
        more = f" (and {len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
        raise VerificationError(
            f"{where} failed verification with {len(report.problems)} problem(s): {first}{more}"
        )


def _check_shards(
    location: str,
    manifest: Manifest,
    report: VerifyReport,
    against: str | os.PathLike[str] | None,
    source_format: str | None,
    source_options: dict[str, Any] | None,
    progress: bool | str,
    fetch: Callable[[ShardInfo], Problem | None] | None = None,
) -> None:
    """Check each shard of ``manifest`` in ``location``, adding problems to ``report``.

    With ``fetch``, each shard is first copied into ``location`` by ``fetch`` (a
    problem when it cannot be) and removed once checked: one shard on disk at a time."""
    source = None
    if against is not None:
        source = _open_against(manifest, os.fspath(against), source_format, source_options, report)
    reader = DatasetReader(location, verify_sizes=False)
    display = Progress(
        progress_mode(progress),
        f"shardio verify {os.path.basename(report.path.rstrip('/'))}",
        total_samples=manifest.num_samples,
        total_bytes=manifest.nbytes,
        total_shards=len(manifest.shards),
    )
    try:
        start = 0
        for number, info in enumerate(manifest.shards):
            copied = None if fetch is None else fetch(info)
            if copied is not None:
                report.problems.append(copied)
            else:
                report.problems.extend(
                    _check_shard(location, reader, manifest, number, info, start, source, report)
                )
            if fetch is not None:  # this shard is done: free its disk space
                for shard in reader.open_readers:
                    shard.close()
                remove_tree(os.path.join(location, info.path))
            display.shard_done(info.num_samples, info.nbytes)
            start += info.num_samples
    finally:
        display.close()
        reader.close()
        if source is not None:
            source.close()


def _verify_remote(
    url: str,
    against: str | os.PathLike[str] | None,
    source_format: str | None,
    source_options: dict[str, Any] | None,
    progress: bool | str,
    raise_errors: bool,
    storage_options: dict[str, Any] | None,
) -> VerifyReport:
    """`verify` of a URL: each shard downloaded into a temporary directory, checked
    there and removed, so the local disk holds one shard at a time."""
    started = time.perf_counter()
    url = url.rstrip("/")
    manifest = Manifest.load_remote(url, storage_options)
    report = VerifyReport(
        url, None if against is None else os.fspath(against), len(manifest.shards),
        manifest.num_samples,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="shardio-verify-") as local:
        manifest.save(local)

        def fetch(info: ShardInfo) -> Problem | None:
            fs, path = filesystem(f"{url}/{info.path}", storage_options)
            unchecked = dataclasses.replace(info, checksum=None)  # checked as a local shard
            try:
                download_shard(
                    fs, path, f"{url}/{info.path}", unchecked, os.path.join(local, info.path),
                    frozenset(),
                )  # fmt: skip
            except ShardioError as exc:
                return Problem(info.path, str(exc))
            return None

        _check_shards(
            local, manifest, report, against, source_format, source_options, progress, fetch
        )
        report.problems = [
            dataclasses.replace(p, message=p.message.replace(local, url)) for p in report.problems
        ]
    report.seconds = time.perf_counter() - started
    _raise_if(report, url, raise_errors)
    return report


def _open_against(
    manifest: Manifest,
    against: str,
    source_format: str | None,
    source_options: dict[str, Any] | None,
    report: VerifyReport,
) -> _Comparison | None:
    conversion = manifest.metadata.get("conversion") or {}
    recorded = {"group": conversion["group"]} if conversion.get("group") else {}
    try:
        source = open_source(
            against,
            fields=list(manifest.schema.names),
            format=source_format,
            split_compound=bool(conversion.get("split_compound", False)),
            options={**recorded, **(source_options or {})} or None,
        )
    except ShardioError as exc:
        report.problems.append(Problem(None, f"cannot compare with {against}: {exc}"))
        return None
    comparison = _Comparison(source, manifest.schema, report)
    if source.num_samples != manifest.num_samples:
        report.problems.append(
            Problem(
                None,
                f"the source {against} has {source.num_samples} samples, "
                f"the dataset {manifest.num_samples}",
            )
        )
    return comparison


class _Comparison:
    """The source samples are compared with, and which of its fields can be."""

    def __init__(self, source: Source, schema: Schema, report: VerifyReport) -> None:
        self.source = source
        self.fields: list[str] = []
        for fld in schema:
            theirs = source.schema[fld.name]
            if (theirs.kind, theirs.shape) != (fld.kind, fld.shape) or not _same_type(
                theirs.dtype, fld.dtype
            ):
                report.problems.append(
                    Problem(
                        None,
                        f"field {fld.name!r} is {_describe(fld)} in the dataset but "
                        f"{_describe(theirs)} in the source",
                    )
                )
            else:
                self.fields.append(fld.name)

    @property
    def num_samples(self) -> int:
        return self.source.num_samples

    def close(self) -> None:
        self.source.close()


def _describe(fld: Field) -> str:
    if fld.kind != "array":
        return f"{fld.kind} {fld.dtype}"
    return f"{fld.dtype} of shape {fld.shape}"


def _same_type(a: np.dtype, b: np.dtype) -> bool:
    """Equal up to byte order."""
    return a == b or a.newbyteorder("=") == b.newbyteorder("=")


# --------------------------------------------------------------------- shards
def _check_shard(
    location: str,
    reader: DatasetReader,
    manifest: Manifest,
    number: int,
    info: ShardInfo,
    start: int,
    source: _Comparison | None,
    report: VerifyReport,
) -> list[Problem]:
    path = os.path.join(location, info.path)
    if not os.path.exists(path):
        return [Problem(info.path, "is missing")]
    listed = shard_files_as_written(path, info.nbytes, reader.transient_files)
    files, nbytes = listed.paths, listed.nbytes
    if nbytes != info.nbytes:
        state = "truncated" if nbytes < info.nbytes else "larger than written"
        return [
            Problem(
                info.path,
                f"is {state}: {nbytes} bytes on disk, the manifest says {info.nbytes}; "
                "it was not opened",
            )
        ]
    report.bytes_checked += nbytes
    if info.checksum is not None:
        actual = hash_files(files, path)
        if actual != info.checksum:
            places = ShardCheck(path, files, info.checksum, info.blocks).damaged_blocks()
            where = f"; damaged: {', '.join(places)}" if places else ""
            problem = Problem(
                info.path,
                f"is corrupt: its checksum is {actual}, the manifest says {info.checksum}" + where,
            )
            return [problem, *_probe(location, number, start, source)]
    return _read_shard(reader, manifest, number, start, source, report)


def _read_shard(
    reader: DatasetReader,
    manifest: Manifest,
    number: int,
    start: int,
    source: _Comparison | None,
    report: VerifyReport | None,
) -> list[Problem]:
    """Decode every sample of shard ``number`` (and compare it with the source)."""
    info = manifest.shards[number]
    try:
        shard = reader.shard(number)
    except Exception as exc:  # any backend error on a damaged shard is a finding
        return [Problem(info.path, f"cannot be opened: {exc}")]
    per_sample = manifest.nbytes / max(manifest.num_samples, 1)
    rows = max(1, int(_BLOCK_BYTES // max(per_sample, 1.0)))
    problems: list[Problem] = []
    for first in range(0, info.num_samples, rows):
        last = min(info.num_samples, first + rows)
        indices = np.arange(first, last, dtype=np.int64)
        try:
            got = shard.read_many(indices)
        except Exception:  # find the samples that fail, one by one
            problems.extend(_unreadable(shard, info, indices, start))
            if len(problems) >= _MAX_PROBLEMS_PER_SHARD:
                break
            continue
        if report is not None:
            report.samples_read += last - first
        if source is not None and start + first < source.num_samples:
            stop = min(last, source.num_samples - start)
            problems.extend(_compare(info, got, source, start + first, start + stop))
            if report is not None:
                report.samples_compared += stop - first
        if len(problems) >= _MAX_PROBLEMS_PER_SHARD:
            problems = problems[:_MAX_PROBLEMS_PER_SHARD]
            problems.append(Problem(info.path, "stopped after this many problems in one shard"))
            break
    return problems


def _unreadable(shard: Any, info: ShardInfo, indices: np.ndarray, start: int) -> list[Problem]:
    problems = []
    for index in indices.tolist():
        try:
            shard.read_many(np.array([index], dtype=np.int64))
        except Exception as exc:
            problems.append(Problem(info.path, f"cannot be read: {exc}", start + index))
            if len(problems) >= _MAX_PROBLEMS_PER_SHARD:
                break
    return problems


def _compare(
    info: ShardInfo, got: Columns, source: _Comparison, first: int, stop: int
) -> list[Problem]:
    """Problems for samples ``first``..``stop`` (global) that differ from the source."""
    try:
        want = source.source.read_range(first, stop)
    except Exception as exc:
        return [
            Problem(info.path, f"the source cannot be read at samples {first}-{stop - 1}: {exc}")
        ]
    count = stop - first
    problems = []
    for name in source.fields:
        rows = _differing_rows(got[name][:count], want[name], count)
        for row in rows[:_MAX_PROBLEMS_PER_SHARD].tolist():
            problems.append(
                Problem(info.path, f"field {name!r} differs from the source", first + row)
            )
    problems.sort(key=lambda p: p.sample or 0)
    return problems


def _differing_rows(got: Any, want: Any, count: int) -> np.ndarray:
    """Row positions where two columns differ (bit for bit, so NaNs compare equal)."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    if isinstance(got, np.ndarray) and isinstance(want, np.ndarray):
        return np.flatnonzero(_rows_differ(got, want, count))
    differ = [not _value_equal(a, b) for a, b in zip(got, want, strict=True)]
    return np.flatnonzero(np.array(differ, dtype=bool))


def _rows_differ(a: np.ndarray, b: np.ndarray, count: int) -> np.ndarray:
    if a.shape != b.shape:
        return np.ones(count, dtype=bool)
    if a.dtype.fields is not None and b.dtype.fields is not None:
        if a.dtype.names != b.dtype.names:
            return np.ones(count, dtype=bool)
        result = np.zeros(count, dtype=bool)
        for name in a.dtype.names or ():  # field by field: padding bytes do not count
            result |= _rows_differ(a[name], b[name], count)
        return result
    if a.dtype != b.dtype:
        if not _same_type(a.dtype, b.dtype):
            return np.ones(count, dtype=bool)
        b = b.astype(a.dtype)
    left = np.ascontiguousarray(a).view(np.uint8).reshape(count, -1)
    right = np.ascontiguousarray(b).view(np.uint8).reshape(count, -1)
    return np.asarray((left != right).any(axis=1))


def _value_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bytes) or isinstance(b, bytes):
        return bytes(a) == bytes(b)
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not _same_type(a.dtype, b.dtype):
        return False
    return a.size == 0 or not _rows_differ(a.reshape(1, -1), b.reshape(1, -1), 1)[0]


# --------------------------------------------------------------------- probe
def _probe(location: str, number: int, start: int, source: _Comparison | None) -> list[Problem]:
    """Decode (and compare) a shard whose checksum failed, in a child process.

    The child is a fresh interpreter (``python -m shardio.convert._probe``), not a
    multiprocessing spawn, which would import the caller's ``__main__`` again and fail
    in a script without an ``if __name__ == "__main__":`` guard."""
    info_path = Manifest.load(location).shards[number].path
    against = None
    if source is not None:
        against = (source.source.path, source.source.split_compound, source.source.group)
    request = {"location": location, "number": number, "start": start, "against": against}
    completed = subprocess.run(
        [sys.executable, "-m", "shardio.convert._probe", json.dumps(request)],
        stdout=subprocess.PIPE,
        env=_child_environment(),
        check=False,
    )
    result = _problems(completed.stdout) if completed.returncode == 0 else None
    if result is not None:
        return result
    code = completed.returncode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        cause = f"crashed the reader ({name})"
    else:
        cause = f"made the reader exit with status {code}"
    return [Problem(info_path, f"reading its samples {cause}; the shard is corrupt")]


def _child_environment() -> dict[str, str]:
    """This environment, with the directory this shardio is imported from first on
    PYTHONPATH (unless it is site-packages, which the child has anyway and which must
    not come before the standard library), so the child imports the same shardio."""
    import sysconfig

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    environment = dict(os.environ)
    site = {os.path.abspath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    if root not in site:
        paths = [root, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
        environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


def _problems(output: bytes) -> list[Problem] | None:
    """The problems a probe child wrote, or None if it wrote none that parse."""
    try:
        return [Problem(**item) for item in json.loads(output)]
    except (ValueError, TypeError):
        return None


def _probe_main(
    sender: Any,
    location: str,
    number: int,
    start: int,
    against: tuple[str, bool, str | None] | None,
) -> None:
    """In the child: the problems found decoding shard ``number``, sent to the parent."""
    problems: list[Problem]
    try:
        manifest = Manifest.load(location)
        reader = DatasetReader(location, verify_sizes=False)
        comparison = None
        if against is not None:
            report = VerifyReport(location)
            source = open_source(
                against[0],
                fields=list(manifest.schema.names),
                split_compound=against[1],
                options=None if against[2] is None else {"group": against[2]},
            )
            comparison = _Comparison(source, manifest.schema, report)
        problems = _read_shard(reader, manifest, number, start, comparison, None)
        if not problems:
            detail = "decodes and equals the source" if against else "decodes"
            problems = [
                Problem(
                    manifest.shards[number].path,
                    f"its bytes differ from what was written, yet every sample still {detail}: "
                    "the damage is in bytes no check here can attribute (a value that still "
                    "decodes, padding or metadata); treat the shard as corrupt",
                )
            ]
    except Exception as exc:
        problems = [Problem(None, f"checking shard {number} failed: {exc}")]
    sender.send(problems)
    sender.close()
