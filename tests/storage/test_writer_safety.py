"""Writing safely: overwrite never deletes a conversion in progress, and a read-only
output fails with one clear line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import shardio
from shardio import DatasetReader, ShardWriter


def _dataset(path: Path, count: int = 50, overwrite: bool = False) -> np.ndarray:
    data = np.arange(count * 3, dtype=np.int64).reshape(count, 3)
    with ShardWriter(path, format="mmap", shard_size="512B", overwrite=overwrite) as writer:
        writer.write_batch({"x": data})
    return data


@pytest.fixture
def lock_holder(tmp_path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A dataset directory and a separate process holding its conversion lock (the
    lock a running ``shardio convert`` holds on its output)."""
    out = tmp_path / "out.shardio"
    _dataset(out)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from shardio.storage.outputlock import lock_output\n"
            "lock_output(sys.argv[1])\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield out, holder
    finally:
        holder.kill()
        holder.wait(10)


def test_overwrite_refuses_while_a_conversion_holds_the_lock(lock_holder) -> None:
    out, holder = lock_holder
    before = sorted(os.listdir(out))
    with pytest.raises(shardio.OutputExistsError) as caught:
        ShardWriter(out, format="mmap", overwrite=True)
    message = str(caught.value)
    assert str(out) in message and f"process {holder.pid}" in message and "lock" in message
    assert sorted(os.listdir(out)) == before
    assert len(DatasetReader(out)) == 50

    holder.kill()
    holder.wait(10)  # the kernel drops the lock with the process
    _dataset(out, count=7, overwrite=True)
    assert len(DatasetReader(out)) == 7


def test_a_conversion_into_a_locked_output_names_the_holder(lock_holder, tmp_path) -> None:
    out, holder = lock_holder
    source = tmp_path / "src.shardio"
    _dataset(source)
    with pytest.raises(shardio.OutputExistsError, match=f"process {holder.pid}"):
        shardio.convert(source, out, format="mmap", overwrite=True)
    assert len(DatasetReader(out)) == 50


def _read_only_run(directory: Path, code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by Python with ``directory`` bind-mounted read-only over itself, in
    a private mount namespace (so nothing outside the test sees the mount)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) to make a read-only file system for one process")
    probe = subprocess.run(
        [unshare, "-rm", "sh", "-c", f"mount --bind '{directory}' '{directory}'"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(
            "needs a private mount namespace (unshare -rm) to mount a read-only "
            f"file system: {probe.stderr.strip()}"
        )
    script = (
        f"mount --bind '{directory}' '{directory}' && "
        f"mount -o remount,bind,ro '{directory}' && "
        f'exec "$0" -c "$1"'
    )
    return subprocess.run(
        [unshare, "-rm", "sh", "-c", script, sys.executable, code],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_convert_overwrite_into_a_read_only_file_system_is_one_line(tmp_path) -> None:
    source = tmp_path / "src.shardio"
    _dataset(source)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    out = read_only / "out.shardio"
    shardio.convert(source, out, format="mmap")
    before = sorted(os.listdir(out))
    code = textwrap.dedent(
        f"""
        import sys
        from shardio.tools.cli import main
        sys.exit(main(["convert", {str(source)!r}, {str(out)!r}, "--format", "mmap",
                       "--overwrite", "--quiet"]))
        """
    )
    result = _read_only_run(read_only, code)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(out) in lines[0] and "Read-only file system" in lines[0]
    assert sorted(os.listdir(out)) == before  # nothing was deleted
    assert len(DatasetReader(out)) == 50


def test_shard_writer_overwrite_on_a_read_only_file_system(tmp_path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    out = read_only / "out.shardio"
    _dataset(out)
    code = textwrap.dedent(
        f"""
        import shardio
        try:
            shardio.ShardWriter({str(out)!r}, format="mmap", overwrite=True)
        except shardio.OutputWriteError as exc:
            print("OutputWriteError:", exc)
        """
    )
    result = _read_only_run(read_only, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OutputWriteError:"), result.stdout + result.stderr
    assert str(out) in result.stdout and "Read-only file system" in result.stdout
    assert len(DatasetReader(out)) == 50


def test_an_open_shard_writer_holds_the_lock_until_closed(tmp_path) -> None:
    source = tmp_path / "src.shardio"
    _dataset(source)
    out = tmp_path / "out.shardio"
    writer = ShardWriter(out, format="mmap", shard_size="512B")
    writer.write_batch({"x": np.zeros((30, 3), np.int64)})
    with pytest.raises(shardio.OutputExistsError, match=f"process {os.getpid()}"):
        shardio.convert(source, out, format="mmap", overwrite=True)
    with pytest.raises(shardio.OutputExistsError, match="lock"):
        ShardWriter(out, format="mmap", overwrite=True)
    assert writer.close().num_samples == 30
    assert shardio.convert(source, out, format="mmap", overwrite=True).num_samples == 50
