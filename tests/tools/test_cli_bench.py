"""``shardio bench`` through ``shardio.tools.cli.main``: the report (sizes as written, each
reading process's own memory figures, no raw memory_stats JSON), --json to a file or
stdout, --plot, -q and -v, orders, cold cache, job budgets, and one-line errors that name
the flag."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest

from shardio.tools.cli import main

FAST = ["--epochs", "1", "--batch-size", "64", "--no-ceiling", "--no-warm"]


@pytest.fixture(scope="module")
def lmdb_dataset(synthetic: Callable[..., str]) -> str:
    """800 samples of 512 bytes in LMDB shards of 150 KB."""
    return synthetic("lmdb", 800, 512, shard_size="150KB")


@pytest.fixture(scope="module")
def mmap_dataset(synthetic: Callable[..., str]) -> str:
    """400 samples of 1 KiB in raw mmap shards of 100 KB."""
    return synthetic("mmap", 400, 1024, shard_size="100KB")


def test_report_echoes_sizes_and_shows_each_workers_own_memory(
    mmap_dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", mmap_dataset, "--workers", "0,2", "--max-rss", "512MB", *FAST])
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


@pytest.mark.slow
def test_json_to_stdout_quiet_and_verbose(
    mmap_dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", mmap_dataset, "--json", *FAST]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"][0]["samples"] == 400 and data["command"].startswith("shardio bench ")
    assert main(["bench", mmap_dataset, "-q", *FAST]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # no progress bar either
    assert main(["bench", mmap_dataset, "-v", *FAST]) == 0
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
    mmap_dataset: str, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    out_json = tmp_path / "bench.json"
    args = ["bench", mmap_dataset, "--workers", "2", "--max-rss", "none,total:16GB"]
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


def test_a_bad_job_budget_names_the_flag(
    mmap_dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", mmap_dataset, "--max-rss", "total:lots", *FAST]) == 2
    err = capsys.readouterr().err
    assert "--max-rss" in err and "lots" in err and len(err.strip().splitlines()) == 1


def _one_error_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("shardio bench: error:"), err
    for word in words:
        assert word in err, err
    return err


def test_bench_writes_table_json_and_plot(
    lmdb_dataset: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    code = main(
        [
            "bench", lmdb_dataset, "--workers", "0,1", "--batch-size", "128", "--epochs", "2",
            "--order", "random", "--compare", "raw", "--json", str(out_json),
            "--plot", str(out_png),
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "shardio w0" in out and "raw w1" in out and "vs raw" in out
    data = json.loads(out_json.read_text())
    assert data["command"].startswith("shardio bench ")
    assert data["config"]["workers"] == [0, 1] and data["config"]["batch_size"] == 128
    assert len(data["runs"]) == 4
    assert all(len(r["epochs"]) == 2 for r in data["runs"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_shard_window_order_from_the_command_line(lmdb_dataset: str, tmp_path: Any) -> None:
    out_json = tmp_path / "sw.json"
    code = main(
        [
            "bench", lmdb_dataset, "--order", "shard-window", "--window", "64KB", "--epochs", "1",
            "--json", str(out_json), "--quiet", "--no-ceiling",
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["config"]["order"] == "shard-window" and data["config"]["window"] == 64_000
    assert "--order shard-window --window 64KB" in data["command"]
    assert data["runs"][0]["epochs"][0]["samples"] == data["dataset"]["num_samples"]


def test_bench_cold_says_the_cache_was_dropped(
    lmdb_dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", lmdb_dataset, "--cold", "--epochs", "1", "--no-ceiling"]) == 0
    out = capsys.readouterr().out
    assert "cold cache" in out
    assert " cold " in out or " dropped " in out


def test_path_that_is_not_a_dataset(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(tmp_path / "missing.h5")]) == 2
    _one_error_line(capsys, "missing.h5")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert main(["bench", str(text)]) == 2
    _one_error_line(capsys, "notes.txt")


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--workers", "-1", ("--workers", ">= 0", "-1")),
        ("--workers", "0,x", ("--workers", "integer")),
        ("--batch-size", "0", ("--batch-size", ">= 1", "0")),
        ("--epochs", "0", ("--epochs",)),
        ("--order", "backwards", ("--order", "random, sequential or shard-window")),
        ("--max-rss", "lots", ("--max-rss='lots'", "512MB")),
    ],
)
def test_options_out_of_range(
    lmdb_dataset: str,
    option: str,
    value: str,
    words: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", lmdb_dataset, f"{option}={value}", "--quiet"]) == 2
    _one_error_line(capsys, *words)


def test_plot_without_matplotlib(
    lmdb_dataset: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code = main(["bench", lmdb_dataset, "--plot", str(tmp_path / "p.png"), "--quiet"])
    assert code == 2
    _one_error_line(capsys, "matplotlib", "pip install")
    assert not (tmp_path / "p.png").exists()
