"""``shardio demo``: progress lines, summary, --data validation, and no torch for --help."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shardio import ShardedDataset, ShardWriter
from shardio.core.errors import InvalidOptionError
from shardio.tools.cli import build_parser, main
from shardio.tools.reference.data import MajorityTask, write_token_dataset
from shardio.tools.reference.demo import DemoConfig
from shardio.tools.reference.plot import PlotRun, draw_demo
from shardio.tools.reference.threads import ThreadChoice, choose_threads, idle_cores
from shardio.tools.reference.train import LogRecord

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--steps", "4", "--log-every", "2", "--batch-size", "16", "--workers", "1", "--no-plot"]

STEP_LINE = re.compile(
    r"^step +(\d+)/4  loss (\d+\.\d+) +(\d+) samples/s  waiting for data +(\d+\.\d)%  "
    r"rss +\d+(\.\d+)? [KMG]iB$"
)
SAVED = re.compile(
    r"saved activations .*: \S+ [KMG]iB 8-bit vs \S+ [KMG]iB exact \((0\.\d\d)x\)$", re.M
)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["demo", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_demo_prints_progress_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run([*TINY, "--samples", "256"], capsys)
    assert code == 0, err
    steps = [m for m in map(STEP_LINE.match, out.splitlines()) if m]
    assert [int(m.group(1)) for m in steps] == [2, 4], out
    saved = SAVED.search(out)
    assert saved is not None and float(saved.group(1)) < 0.5, out  # 8-bit saves well under half
    assert "4 mmap shards" in out and "256 train, 1024 held out" in out
    summary = re.search(
        r"8-bit: final training loss (\d+\.\d+), held-out loss (\d+\.\d+), "
        r"held-out accuracy (\d+\.\d)%",
        out,
    )
    assert summary is not None, out
    assert "chance loss ln(16) = 2.7726; best possible held-out loss" in out
    # the temporary dataset is removed at the end, so its path is never printed
    assert "into a temporary directory (removed at the end: --keep keeps it)" in out
    assert "dataset (temporary): " in out and "shardio-demo-" not in out
    threads = os.environ["OMP_NUM_THREADS"]  # conftest.py sets it unless the user did
    assert f"torch intra-op threads: {torch.get_num_threads()} (OMP_NUM_THREADS={threads})\n" in out


@pytest.mark.slow
def test_demo_keep_keeps_the_dataset_and_says_where(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run([*TINY, "--samples", "64", "--workers", "0", "--keep"], capsys)
    assert code == 0, err
    kept = re.search(r"^the dataset stays at (\S+): shardio inspect \1$", out, re.M)
    assert kept is not None, out
    try:
        with ShardedDataset(kept.group(1)) as dataset:
            assert len(dataset) == 64 + 1024
    finally:
        shutil.rmtree(os.path.dirname(kept.group(1)))


@pytest.mark.slow
def test_demo_compare_reports_both_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    picture = tmp_path / "demo.png"
    args = ["--samples", "128", "--compare", "--workers", "0", "--workdir", str(tmp_path)]
    before = torch.get_num_threads()
    code, out, err = _run([*TINY[:-1], *args, "--plot", str(picture), "--threads", "1"], capsys)
    assert code == 0, err
    assert re.search(r"^torch intra-op threads: 1 \(--threads\)$", out, re.M), out
    assert torch.get_num_threads() == before  # the demo restores the caller's setting
    assert f"picture: {picture}" in out
    assert picture.read_bytes().startswith(b"\x89PNG") and picture.stat().st_size > 10_000
    assert "training with 8-bit" in out and "training with exact" in out
    assert re.search(r"^exact: final training loss", out, re.M)
    assert re.search(r"held-out loss 8-bit / exact = \d+\.\d+", out)
    with ShardedDataset(tmp_path / "majority.shardio") as kept:  # --workdir keeps the shards
        assert len(kept) == 128 + 1024 and len(kept.shard_lengths) == 4


@pytest.mark.slow
def test_demo_reuses_its_workdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--steps", "1", "--samples", "64", "--workers", "0", "--workdir", str(tmp_path)]
    args += ["--plot", str(tmp_path / "shardio-demo.png")]  # replaced too
    assert _run(args, capsys)[0] == 0
    assert _run([*args, "--seed", "1"], capsys)[0] == 0  # the earlier shards are replaced
    assert sorted(os.listdir(tmp_path)) == ["majority.shardio", "shardio-demo.png"]


def test_demo_trains_on_a_users_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = MajorityTask(vocab_size=8, seq_len=12)
    data = task.generate(200, seed=5)
    path = tmp_path / "user.shardio"
    write_token_dataset(path, data, format="lmdb", num_shards=2)
    code, out, err = _run([*TINY, "--data", str(path)], capsys)
    assert code == 0, err
    assert f"dataset {path}: 200 samples (160 train, 40 held out) in 2 shard(s)" in out
    assert "sequence length 12, 8 classes" in out
    assert "chance loss ln(8) = 2.0794" in out
    assert "best possible" not in out  # the noise floor is known for the synthetic task only


def test_demo_missing_data_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.shardio"
    code, _, err = _run(["--data", str(missing)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(missing) in err, err
    assert err.startswith("shardio demo: error:")


def _write(path: Path, columns: dict[str, np.ndarray]) -> None:
    with ShardWriter(path, format="mmap") as writer:
        writer.write_batch(columns)


TOKENS = np.zeros((8, 6), dtype=np.int64)
LABELS = np.zeros(8, dtype=np.int64)


@pytest.mark.parametrize(
    ("columns", "field", "words"),
    [
        ({"tokens": TOKENS, "y": LABELS}, "label", "missing"),
        ({"ids": TOKENS, "label": LABELS}, "tokens", "missing"),
        ({"tokens": TOKENS.astype(np.float32), "label": LABELS}, "tokens", "float32"),
        ({"tokens": np.zeros((8, 2, 3), np.int64), "label": LABELS}, "tokens", "(2, 3)"),
        ({"tokens": TOKENS, "label": np.zeros((8, 2), np.int64)}, "label", "(2,)"),
        ({"tokens": TOKENS - 1, "label": LABELS}, "tokens", "negative"),
    ],
    ids=["no-label", "no-tokens", "float-tokens", "2d-tokens", "vector-label", "negative"],
)
def test_demo_rejects_a_dataset_with_wrong_fields(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    columns: dict[str, np.ndarray],
    field: str,
    words: str,
) -> None:
    path = tmp_path / "bad.shardio"
    _write(path, columns)
    code, out, err = _run(["--data", str(path)], capsys)
    assert code == 2, out
    line = err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in line and f"'{field}'" in line and words in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tpu", "cdua"])
def test_demo_rejects_unavailable_devices(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["--device", device], capsys)
    assert code == 2 and "device" in err and device in err, err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_demo_trains_on_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run([*TINY, "--samples", "256", "--device", "cuda"], capsys)
    assert code == 0, err
    assert "Prefetcher(cuda)" in out and "8-bit: final training loss" in out


def test_demo_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["--steps", "0"], capsys)
    assert code == 2 and "steps" in err
    code, _, err = _run(["--threads", "0", "--no-plot"], capsys)
    assert code == 2 and "--threads should be >= 1, but got --threads 0" in err, err
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--exact", "--compare"])
    assert exc.value.code == 2


def test_cli_defaults_are_the_library_defaults() -> None:
    args = build_parser().parse_args(["demo"])
    config = DemoConfig()
    names = ("steps", "batch_size", "workers", "seed", "log_every", "log_seconds", "threads")
    for name in (*names, "exact", "compare", "keep"):
        assert getattr(args, name) == getattr(config, name), name
    assert args.samples == config.num_samples
    # the CLI draws its picture by default; the library draws none unless asked
    assert args.plot == "shardio-demo.png" and config.plot is None


def test_the_picture_is_skipped_with_one_line_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    run = PlotRun(quantize=True, losses=[2.0, 1.5], records=[LogRecord(2, 2, 1.7, 50.0, 0.1)])
    path = tmp_path / "demo.png"
    note = draw_demo([run], str(path), title="t", chance=2.7, floor=None)
    assert note == "no picture: matplotlib is not installed (pip install 'shardio[bench]')"
    assert not path.exists()


def test_choose_threads_respects_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert choose_threads(3) == ThreadChoice(3, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads() == ThreadChoice(torch.get_num_threads(), "OMP_NUM_THREADS=1")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    usable, _ = idle_cores()
    chosen = choose_threads()
    assert 1 <= chosen.threads <= min(4, usable) and f"{usable} usable cores" in chosen.reason
    with pytest.raises(InvalidOptionError, match="--threads should be >= 1"):
        choose_threads(0)


def run_python(code: str) -> str:
    """stdout of ``code`` in a fresh interpreter (so torch is not yet imported)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_parser_does_not_import_torch() -> None:
    code = (
        "import sys; from shardio.tools.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    assert run_python(code).strip() == "False"


def test_shardio_help_lists_demo_without_importing_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from shardio.tools.cli import build_parser, main\n"
        "buffer = io.StringIO()\n"
        "with contextlib.redirect_stdout(buffer):\n"
        "    try:\n"
        "        main(['demo', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('--compare' in buffer.getvalue(), 'torch' in sys.modules)\n"
    )
    assert run_python(code).split() == ["True", "False"]
