"""``shardio bench``'s report: sizes as written, each reading process's own memory
figures (no raw memory_stats JSON), --json to stdout, -q and -v."""

from __future__ import annotations

import json
import re

import pytest

from shardio.bench.synthetic import write_synthetic
from shardio.cli import main

FAST = ["--epochs", "1", "--batch-size", "64", "--no-ceiling", "--no-warm"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("bench") / "train.shardio")
    return write_synthetic(path, "mmap", 400, 1024, shard_size="100KB")


def test_report_echoes_sizes_and_shows_each_workers_own_memory(
    dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", dataset, "--workers", "0,2", "--max-rss", "512MB", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert "rss<=512MB" in out and "MiB" not in out.split("rss<=")[1].split()[0]
    assert "488.3" not in out
    assert "memory_stats" not in out and "{" not in out  # no raw JSON lines
    memory = [line for line in out.splitlines() if line.startswith("memory ")]
    by_process = {
        re.search(r"rss<=512MB (\w+):", line).group(1): line  # type: ignore[union-attr]
        for line in memory
    }
    assert set(by_process) == {"main", "w0", "w1"}, memory  # main only for 0 workers
    for process in ("w0", "w1"):  # each worker read its half, not the main process's zeros
        read = re.search(r"([\d.]+) (KiB|MiB) read", by_process[process])
        assert read is not None and float(read.group(1)) > 0, by_process[process]
    main_read = re.search(r"([\d.]+) (KiB|MiB) read", by_process["main"])
    assert main_read is not None and main_read.group(2) == "KiB"  # 400 KB read by main alone


def test_json_to_stdout_quiet_and_verbose(dataset: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", dataset, "--json", *FAST]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"][0]["samples"] == 400 and data["command"].startswith("shardio bench ")
    assert main(["bench", dataset, "-q", *FAST]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # no progress bar either
    assert main(["bench", dataset, "-v", *FAST]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("memory ")]
    assert "bytes_read " in line and "checks " in line  # every figure, without a budget


def test_unknown_format_names_the_flag(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\0" * 32)
    assert main(["bench", str(blob), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("pass --format to say which") and len(err.splitlines()) == 1


def test_a_job_budget_is_split_between_the_bench_workers(
    dataset: str, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    out_json = tmp_path / "bench.json"
    args = ["bench", dataset, "--workers", "2", "--max-rss", "none,total:16GB"]
    assert main([*args, "--json", str(out_json), *FAST]) == 0
    out = capsys.readouterr().out
    assert "shardio w2 max_rss=total:16GB" in out
    runs = json.loads(out_json.read_text())["runs"]
    assert [r["max_rss"] for r in runs] == [None, "total:16GB"]
    stats = runs[1]["worker_memory_stats"]
    assert len(stats) == 2
    for worker in stats.values():  # each worker learned its slot of the 16 GB job
        assert worker["job_limit"] == 16 * 10**9 and worker["workers"] == 2
        assert 0 < worker["budget"] < 16 * 10**9 // 3


def test_a_bad_job_budget_names_the_flag(dataset: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", dataset, "--max-rss", "total:lots", *FAST]) == 2
    err = capsys.readouterr().err
    assert "--max-rss" in err and "lots" in err and len(err.strip().splitlines()) == 1
