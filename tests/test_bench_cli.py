"""``shardio bench`` through ``shardio.cli.main``: output files and one-line errors."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from shardio.bench.synthetic import write_synthetic
from shardio.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "train.shardio")
    return write_synthetic(path, "lmdb", 800, 512, shard_size="150KB")


def _one_error_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("shardio bench: error:"), err
    for word in words:
        assert word in err, err
    return err


def test_bench_writes_table_json_and_plot(
    dataset: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    code = main(
        [
            "bench", dataset, "--workers", "0,1", "--batch-size", "128", "--epochs", "2",
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


def test_bench_shard_window_order_from_the_command_line(dataset: str, tmp_path: Any) -> None:
    out_json = tmp_path / "sw.json"
    code = main(
        [
            "bench", dataset, "--order", "shard-window", "--window", "64KB", "--epochs", "1",
            "--json", str(out_json), "--quiet", "--no-ceiling",
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["config"]["order"] == "shard-window" and data["config"]["window"] == 64_000
    assert "--order shard-window --window 64KB" in data["command"]
    assert data["runs"][0]["epochs"][0]["samples"] == data["dataset"]["num_samples"]


def test_bench_cold_says_the_cache_was_dropped(
    dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", dataset, "--cold", "--epochs", "1", "--no-ceiling"]) == 0
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
    dataset: str,
    option: str,
    value: str,
    words: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", dataset, f"{option}={value}", "--quiet"]) == 2
    _one_error_line(capsys, *words)


def test_plot_without_matplotlib(
    dataset: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code = main(["bench", dataset, "--plot", str(tmp_path / "p.png"), "--quiet"])
    assert code == 2
    _one_error_line(capsys, "matplotlib", "pip install")
    assert not (tmp_path / "p.png").exists()
