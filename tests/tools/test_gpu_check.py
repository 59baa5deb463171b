"""benchmarks/gpu_check.sh: its options, shellcheck, and a CPU dry run (slow)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["install", "pytest-gpu", "prefetch", "reference", "feed"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=900,
    )


def test_help_and_bad_usage() -> None:
    shown = _run("--help")
    assert shown.returncode == 0 and "--dry-run" in shown.stdout and "pip download" in shown.stdout
    unknown = _run("--fast")
    assert unknown.returncode == 2 and "unknown option --fast" in unknown.stderr
    no_out = _run("--dry-run", env={"OUT": "", "GPU_CHECK_OUT": ""})
    assert no_out.returncode == 2 and "set OUT" in no_out.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean() -> None:
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_dry_run_keeps_every_figure_when_one_step_fails(tmp_path: Path) -> None:
    """The pytest step is made to fail: the other steps still run and write figures."""
    out = tmp_path / "out"
    result = _run(
        "--dry-run",
        env={
            "GPU_CHECK_OUT": str(out),
            "PYTHON": sys.executable,
            "GPU_CHECK_PYTEST_ARGS": "--no-such-option",
            "WHEELHOUSE": str(tmp_path / "no-wheelhouse"),
        },
    )
    assert result.returncode == 1, result.stdout + result.stderr
    with open(out / "status.tsv", newline="") as handle:
        status = {row["step"]: int(row["exit"]) for row in csv.DictReader(handle, delimiter="\t")}
    assert list(status) == STEPS
    assert status["install"] == 1 and status["pytest-gpu"] == 4  # no wheelhouse; usage error
    assert status["prefetch"] == status["reference"] == status["feed"] == 0, status
    assert len(json.loads((out / "prefetch.json").read_text())) == 1
    feed = json.loads((out / "feed.json").read_text())
    assert [row["path"] for row in feed][1:] == ["dataloader-samples", "dataloader-columns"]
    assert all(row["samples_per_s"] > 0 for row in feed)
    assert "| 32 |" in (out / "reference.md").read_text()
    summary = (out / "summary.md").read_text()
    assert "| pytest-gpu | 4 |" in summary and "no wheelhouse at" in summary
    assert sorted(os.listdir(out)) == sorted(
        ["feed.json", "logs.tar.gz", "prefetch.json", "reference.md", "status.tsv", "summary.md"]
    )
