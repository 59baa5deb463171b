"""Interrupted conversions: Ctrl-C, kill -9 (for real), a full disk; resume; locking."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from h5files import write_plain

import shardio
from shardio.convert import run as run_module
from shardio.convert.record import PROGRESS_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORMATS = ["lmdb", "zarr", "hdf5", "raw"]

# Loaded at interpreter start (also in spawned workers) when its directory is on
# PYTHONPATH: slows every read of a conversion source, so a test can kill it midway.
SLOW_READS = """
import os, time
if os.environ.get("SHARDIO_TEST_SLOW_READ"):
    from shardio.storage.adapters.hdf5._source import HDF5Source
    from shardio.convert.source import ReaderSource

    def _slowed(read):
        def slow(self, start, stop):
            time.sleep(float(os.environ["SHARDIO_TEST_SLOW_READ"]))
            return read(self, start, stop)
        return slow

    for _cls in (HDF5Source, ReaderSource):
        _cls.read_range = _slowed(_cls.read_range)
"""


def checksums(path: Path | str) -> list[tuple[str, int, str]]:
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    return [(s["path"], s["num_samples"], s["checksum"]) for s in manifest["shards"]]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("source") / "src.h5"
    write_plain(str(path), n=400, row_bytes=256)  # 27 shards of 15 samples at 4KB
    return path


_REFERENCES: dict[tuple[str, str], list[Any]] = {}


def reference(source: Path, fmt: str, tmp_path: Path) -> list[Any]:
    """Checksums of an uninterrupted conversion of ``source`` (computed once per format)."""
    key = (str(source), fmt)
    if key not in _REFERENCES:
        out = tmp_path / f"reference-{fmt}"
        shardio.convert(source, out, format=fmt, shard_size="4KB")
        _REFERENCES[key] = checksums(out)
    return _REFERENCES[key]


def own_files(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# ------------------------------------------------------------- interruption
@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, source, monkeypatch, fmt) -> None:
    calls = {"n": 0}
    original = run_module.write_shard

    def interrupting(job, task, on_block=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(job, task, on_block)

    out = tmp_path / "out"
    monkeypatch.setattr(run_module, "write_shard", interrupting)
    with pytest.raises(KeyboardInterrupt):
        shardio.convert(source, out, format=fmt, shard_size="4KB")
    monkeypatch.undo()
    assert not (out / "manifest.json").exists()
    assert (out / PROGRESS_NAME).exists()
    with pytest.raises(shardio.OutputExistsError, match="resume"):
        shardio.convert(source, out, format=fmt, shard_size="4KB")
    result = shardio.convert(source, out, format=fmt, shard_size="4KB", resume=True)
    assert result.shards_reused == 3 and result.shards_written == 24
    assert checksums(out) == reference(source, fmt, tmp_path)
    assert PROGRESS_NAME not in own_files(out)
    assert shardio.verify(out, against=source).ok


def kill_midway(
    source: Path, out: Path, fmt: str, hooks: Path, workers: int = 1, after: int = 4
) -> list[psutil.Process]:
    """Run a conversion in a subprocess and SIGKILL it after ``after`` shards are recorded;
    returns the processes it had started."""
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SLOW_READS)
    script = (
        f"import shardio; shardio.convert({str(source)!r}, {str(out)!r}, format={fmt!r}, "
        f"shard_size='4KB', workers={workers})"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}",
        "SHARDIO_TEST_SLOW_READ": "0.04",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    record = out / PROGRESS_NAME
    deadline = time.monotonic() + 90
    children: list[psutil.Process] = []
    try:
        while True:
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "the conversion made no progress"
            if record.exists() and len(record.read_text().splitlines()) > after:
                break
            time.sleep(0.005)
        children = psutil.Process(process.pid).children(recursive=True)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return children


@pytest.mark.parametrize("fmt", ["lmdb", pytest.param("zarr", marks=pytest.mark.slow)])
def test_kill_9_then_resume(tmp_path, source, fmt) -> None:
    out = tmp_path / "out"
    kill_midway(source, out, fmt, tmp_path / "hooks")
    assert not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        shardio.DatasetReader(out)
    result = shardio.convert(source, out, format=fmt, shard_size="4KB", resume=True)
    assert result.shards_reused >= 4
    assert checksums(out) == reference(source, fmt, tmp_path)
    assert own_files(out) == sorted(["manifest.json", *(c[0] for c in checksums(out))])
    assert shardio.verify(out, against=source).ok


def test_kill_9_with_workers_takes_the_workers_down(tmp_path, source) -> None:
    out = tmp_path / "out"
    children = kill_midway(source, out, "raw", tmp_path / "hooks", workers=2)
    assert children, "the conversion should have started worker processes"
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"workers outlived their coordinator: {alive}"
    result = shardio.convert(source, out, format="raw", shard_size="4KB", resume=True)
    assert result.shards_reused >= 4
    assert checksums(out) == reference(source, "raw", tmp_path)


# ------------------------------------------------------------------ resume
def test_resume_rewrites_a_damaged_recorded_shard(tmp_path, source, monkeypatch) -> None:
    out = tmp_path / "out"
    original = run_module.write_shard
    calls = {"n": 0}

    def interrupting(job, task, on_block=None):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(job, task, on_block)

    monkeypatch.setattr(run_module, "write_shard", interrupting)
    with pytest.raises(KeyboardInterrupt):
        shardio.convert(source, out, format="raw", shard_size="4KB")
    monkeypatch.undo()
    data = out / "shard-00002.mmap" / "000.bin"
    raw = bytearray(data.read_bytes())
    raw[7] ^= 0xFF
    data.write_bytes(bytes(raw))
    shutil.rmtree(out / "shard-00004.mmap")
    (out / ".shard-00009.mmap.partial").mkdir()  # left by a killed writer
    result = shardio.convert(source, out, format="raw", shard_size="4KB", resume=True)
    assert result.shards_reused == 3
    text = "\n".join(result.messages)
    assert "shard-00002.mmap is written again: its checksum differs" in text
    assert "shard-00004.mmap is written again: it is missing" in text
    assert checksums(out) == reference(source, "raw", tmp_path)


def test_resume_refuses_other_options_or_a_changed_source(tmp_path, source, monkeypatch) -> None:
    source = Path(shutil.copy(source, tmp_path / "copy.h5"))
    out = tmp_path / "out"
    monkeypatch.setattr(run_module, "run_serial", _raise_after_start)
    with pytest.raises(KeyboardInterrupt):
        shardio.convert(source, out, format="lmdb", shard_size="4KB")
    monkeypatch.undo()
    with pytest.raises(shardio.OutputExistsError, match="differs in shard boundaries, shard size"):
        shardio.convert(source, out, format="lmdb", shard_size="8KB", resume=True)
    with pytest.raises(shardio.OutputExistsError, match="output format"):
        shardio.convert(source, out, format="zarr", shard_size="4KB", resume=True)
    with pytest.raises(shardio.OutputExistsError, match="fields"):
        shardio.convert(source, out, format="lmdb", shard_size="4KB", resume=True, fields="x")
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(shardio.OutputExistsError, match="source"):
        shardio.convert(source, out, format="lmdb", shard_size="4KB", resume=True)
    result = shardio.convert(source, out, format="lmdb", shard_size="4KB", overwrite=True)
    assert result.shards_written == 27


def _raise_after_start(*args: Any, **kwargs: Any) -> None:
    raise KeyboardInterrupt


def test_resume_of_a_complete_dataset_writes_nothing(tmp_path, source) -> None:
    out = tmp_path / "out"
    shardio.convert(source, out, format="zarr", shard_size="4KB")
    before = checksums(out)
    result = shardio.convert(source, out, format="zarr", shard_size="4KB", resume=True)
    assert result.shards_written == 0 and result.shards_reused == 27
    assert checksums(out) == before
    fresh = shardio.convert(source, tmp_path / "new", format="zarr", resume=True)
    assert fresh.shards_reused == 0  # resume into nothing starts afresh


def test_a_second_conversion_into_a_locked_output_is_refused(tmp_path, source) -> None:
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    descriptor = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(shardio.OutputExistsError, match="another conversion"):
            shardio.convert(source, out, format="raw", resume=True)
    finally:
        os.close(descriptor)
    assert shardio.convert(source, out, format="raw", resume=True).num_samples == 400


def test_a_task_of_an_abandoned_run_leaves_the_output_alone(tmp_path, source) -> None:
    """A Dask task can outlive its run; once the record names a newer run it does nothing."""
    from shardio.convert.plan import ShardTask
    from shardio.convert.source import open_source

    out = tmp_path / "out"
    shardio.convert(source, out, format="raw", shard_size="4KB")
    before = checksums(out)
    (out / PROGRESS_NAME).write_text(json.dumps({"shardio_progress": 1, "run": "newer"}) + "\n")
    stale = run_module.ShardJob(open_source(source), str(out), "mmap", run_id="older")
    with pytest.raises(run_module.SupersededError, match="has ended"):
        run_module.write_shard(stale, ShardTask(0, 0, 15))
    assert checksums(out) == before
    assert not [e for e in os.listdir(out) if "partial" in e]


# --------------------------------------------------------------- full disk
FULL_DISK_SCRIPT = """
import json, os, subprocess, sys
import shardio
src, root = sys.argv[1:3]
for fmt in sys.argv[3:]:
    out = os.path.join(root, fmt)
    os.mkdir(out)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", out], check=True)
    dst = os.path.join(out, "data")
    report = {"format": fmt}
    # uncompressed: the samples must overflow the 1 MB disk
    kw = {"compressor": "none"} if fmt == "zarr" else {}
    try:
        shardio.convert(src, dst, format=fmt, shard_size="256KB", **kw)
    except shardio.OutputWriteError as exc:
        report.update(error=str(exc), oserror=isinstance(exc, OSError))
    report["files"] = sorted(os.listdir(dst))
    subprocess.run(["mount", "-o", "remount,size=64m", out], check=True)
    result = shardio.convert(src, dst, format=fmt, shard_size="256KB", resume=True, **kw)
    report.update(reused=result.shards_reused, ok=shardio.verify(dst, against=src).ok,
                  checksums=[s.checksum for s in result.manifest.shards])
    print(json.dumps(report), flush=True)
"""


def _can_mount_tmpfs() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
    )  # fmt: skip
    return done.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare and a mountable tmpfs")
def test_full_disk_gives_a_clear_error_then_resumes(tmp_path) -> None:
    """A real ENOSPC, for every format: each output on a 1 MB tmpfs (in a private mount
    namespace, so no privilege is needed), which is then grown for the resumed run."""
    src = tmp_path / "src.h5"
    write_plain(str(src), n=3000, row_bytes=1000)  # 3 MB of samples
    (tmp_path / "mnt").mkdir()
    (tmp_path / "script.py").write_text(FULL_DISK_SCRIPT)
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", sys.executable,
         str(tmp_path / "script.py"), str(src), str(tmp_path / "mnt"), *FORMATS],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Segmentation" not in done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["format"] for r in reports] == FORMATS
    for report in reports:
        fmt = report["format"]
        assert "No space left on device" in report["error"] and report["oserror"], report
        assert "--resume" in report["error"]
        assert "manifest.json" not in report["files"] and PROGRESS_NAME in report["files"]
        assert not [f for f in report["files"] if ".partial" in f], report
        assert report["ok"] and report["reused"] >= 1, report
        kw = {"compressor": "none"} if fmt == "zarr" else {}
        shardio.convert(src, tmp_path / fmt, format=fmt, shard_size="256KB", **kw)
        assert report["checksums"] == [c[2] for c in checksums(tmp_path / fmt)], fmt


def test_file_size_limit_gives_a_clear_error(tmp_path) -> None:
    """RLIMIT_FSIZE (EFBIG, 'File too large'): the same path as a full disk, anywhere."""
    src = tmp_path / "src.h5"
    write_plain(str(src), n=2000, row_bytes=1000)
    script = textwrap.dedent(
        f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        import shardio
        try:
            shardio.convert({str(src)!r}, {str(tmp_path / "out")!r}, format="raw",
                            shard_size="1MB")
        except shardio.OutputWriteError as exc:
            print("ERROR", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ERROR writing shard shard-00000.mmap")
    assert "File too large" in done.stdout
    assert not (tmp_path / "out" / "manifest.json").exists()
    np.testing.assert_equal(sorted(os.listdir(tmp_path / "out")), [PROGRESS_NAME])
