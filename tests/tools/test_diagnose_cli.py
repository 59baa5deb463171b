"""``shardio diagnose`` through ``shardio.tools.cli.main``: the report, the files, one-line
errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardio.tools.bench.synthetic import write_synthetic
from shardio.tools.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("diagnose") / "train.shardio")
    return write_synthetic(path, "mmap", 600, 256, shard_size="40KB")


def test_one_run_prints_the_verdict_and_writes_the_plot_and_trace(
    dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png, chrome = tmp_path / "timeline.png", tmp_path / "trace.json"
    code = main(
        ["diagnose", dataset, "--workers", "0", "--batch-size", "16", "--step-ms", "100",
         "--batches", "10", "--plot", str(png), "--trace", str(chrome)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].startswith("compute-bound: the loop waited"), out
    assert "10 batches in 1 pass(es)" in out
    assert f"wrote {png}" in out and png.stat().st_size > 10_000
    events = json.loads(chrome.read_text())["traceEvents"]
    assert sum(e["ph"] == "X" and e["cat"] == "step" for e in events) == 10


def test_sweep_prints_a_row_per_value_and_plots_samples_per_second(
    dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "sweep.png"
    code = main(
        ["diagnose", dataset, "--sweep", "batch-size=8,32", "--workers", "0", "--step-ms", "5",
         "--batches", "6", "--plot", str(png)]
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[1].split() == [
        "batch-size",
        "samples/s",
        "batches/s",
        "waiting",
        "wait/batch",
        "bound",
    ]
    rows = [line.split() for line in lines[2:4]]
    assert [row[0] for row in rows] == ["8", "32"]
    rates = [float(row[1].replace(",", "")) for row in rows]
    assert all(rate > 0 for rate in rates)
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sweep", "threads=1,2"], ["--sweep", "workers, batch-size"]),
        (["--sweep", "workers="], ["--sweep"]),
        (["--sweep", "workers=1,x"], ["--sweep workers", "'x'"]),
        (["--workers", "-1"], ["--workers", ">= 0"]),
        (["--step-ms", "fast"], ["--step-ms", "'fast'"]),
        (["--order", "zigzag"], ["--order", "zigzag"]),
        (["--workers", "0", "--prefetch-factor", "2"], ["--prefetch-factor", "--workers"]),
        (["--sweep", "workers=0,1", "--trace", "t.json"], ["--trace", "--sweep"]),
    ],
)
def test_bad_flags_give_one_line_naming_them(
    dataset: str, args: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diagnose", dataset, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("shardio diagnose: error:"), err
    for word in words:
        assert word in err, err


def test_a_missing_dataset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", str(tmp_path / "nope.shardio")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.shardio" in err, err


def test_json_and_quiet_like_every_command(dataset, capsys) -> None:
    import json

    args = ["diagnose", dataset, "--workers", "0", "--batches", "4", "--step-ms", "1"]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["batches"] >= 3 and summary["bound"] in ("data-bound", "compute-bound")
    assert main([*args, "-q"]) == 0
    assert capsys.readouterr().out == ""
