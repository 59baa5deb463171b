"""verify()'s probe child: a fresh interpreter, so a script without a __main__ guard
works, and a crash is still reported with its signal's name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from shardio import ShardWriter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _corrupt_dataset(path: Path, source: Path | None = None) -> np.ndarray:
    """A raw dataset of 4 shards whose shard 1 has one flipped byte in field 'x'."""
    data = np.arange(64 * 8, dtype=np.int64).reshape(64, 8)
    with ShardWriter(path, format="mmap", shard_size=f"{16 * 64}B") as writer:
        writer.write_batch({"x": data})
    if source is not None:
        with ShardWriter(source, format="mmap", shard_size="1MB") as writer:
            writer.write_batch({"x": data})
    shard = sorted(p for p in path.iterdir() if p.name.startswith("shard-"))[1]
    (value,) = [f for f in shard.iterdir() if f.suffix == ".bin"]
    raw = bytearray(value.read_bytes())
    raw[3 * 64 + 5] ^= 0x5A  # sample 16 + 3 = 19, its element 0 (8 bytes each, 8 of them)
    value.write_bytes(bytes(raw))
    return data


def _run_script(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    runs = tmp_path / "runs.txt"
    script = tmp_path / "check_data.py"
    # No `if __name__ == "__main__":` guard: a spawned child would run all of it again.
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            import shardio
            with open({str(runs)!r}, "a") as runs:
                runs.write("ran\\n")
            """
        )
        + textwrap.dedent(body)
    )
    environment = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        cwd=tmp_path,
    )
    return result, runs


def test_verify_from_a_script_without_a_main_guard(tmp_path) -> None:
    _corrupt_dataset(tmp_path / "ds.shardio")
    result, runs = _run_script(
        tmp_path,
        """
        report = shardio.verify(sys.argv[0].replace("check_data.py", "ds.shardio"),
                                raise_errors=False)
        print(json.dumps([str(p) for p in report.problems]))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert runs.read_text() == "ran\n"  # the script ran once: the probe did not import it
    problems = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(problems) == 2, problems
    assert problems[0].startswith("shard-00001.mmap: is corrupt: its checksum is")
    # The probe decoded the shard in its child and reported back (what it says about
    # the damage is the checker's business; here: not a failure to start the child).
    assert problems[1].startswith("shard-00001.mmap: ")
    assert "checking shard" not in problems[1] and "exit with status" not in problems[1]


def test_probe_compares_with_the_source_from_a_script(tmp_path) -> None:
    _corrupt_dataset(tmp_path / "ds.shardio", source=tmp_path / "src.shardio")
    result, runs = _run_script(
        tmp_path,
        """
        here = sys.argv[0].replace("check_data.py", "")
        report = shardio.verify(here + "ds.shardio", against=here + "src.shardio",
                                raise_errors=False)
        print(json.dumps([str(p) for p in report.problems]))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert runs.read_text() == "ran\n"
    problems = json.loads(result.stdout.strip().splitlines()[-1])
    assert "shard-00001.mmap: sample 19: field 'x' differs from the source" in problems
