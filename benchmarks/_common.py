"""Helpers shared by the benchmark scripts: machine line, timing, RESULTS.md sections."""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "RESULTS.md")
FIGURES = os.path.join(HERE, "figures")
TITLE = "# Benchmark results\n"


def machine_line() -> str:
    from shardio.tools.bench import machine_info

    info = machine_info()
    memory = (info.get("memory_bytes") or 0) / 2**30
    return (
        f"{info.get('cpus_usable') or info.get('cpu_count')} CPU cores ({info.get('cpu_model')}), "
        f"{memory:.0f} GiB memory, no GPU; Python {info['python']}, numpy {info['numpy']}, "
        f"torch {info.get('torch')}, shardio {info['shardio']}"
    )


def load_line() -> str:
    """The 1, 5 and 15 minute load averages: targets are judged only on a quiet machine."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def command_line() -> str:
    """How this script was run, relative to the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), os.path.dirname(HERE))
    return " ".join(shlex.quote(a) for a in ["python", script, *sys.argv[1:]])


def timed_rate(
    read: Callable[[np.ndarray], Any],
    batches: Sequence[np.ndarray],
    seconds: float,
) -> tuple[float, int]:
    """(samples/s, samples read) running ``read`` over ``batches`` for about ``seconds``.

    Reads every batch when that takes less time; otherwise stops after the batch that
    passes ``seconds`` (every loader reads the same prefix of the same order)."""
    count = 0
    start = time.perf_counter()
    for batch in batches:
        read(batch)
        count += len(batch)
        if time.perf_counter() - start >= seconds:
            break
    elapsed = time.perf_counter() - start
    return count / elapsed, count


def replace_section(heading: str, body: str, path: str = RESULTS) -> None:
    """Write ``body`` under ``## heading`` in RESULTS.md, replacing that section only."""
    text = TITLE
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    if not text.startswith("# "):
        text = TITLE + "\n" + text
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.rstrip("\n") + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
