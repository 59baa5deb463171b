"""Every code block of README.md and docs/*.md runs, as a reader would paste it.

Each fenced block has a language. ``python`` blocks run in one namespace per page, in
page order; ``bash`` blocks run with ``bash -e`` (``shardio`` and ``python`` are this
checkout's). ``text`` and ``json`` blocks (outputs, layouts) are not run. Every page
works in a directory of its own that holds the files its snippets name (see
:func:`write_sources`). An HTML comment on the line just above a block changes how it
runs (docs/index.md documents these for writers):

    <!-- docs-test: skip (why) -->   not run here: an install, a GPU, a cluster
    <!-- docs-test: slow -->         run with ``-m slow`` only
    <!-- docs-test: fresh -->        run, with the page's later blocks, in a new
                                     directory that has the sources but no train.shardio

A new block added to any page is picked up with no change here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import lmdb
import numpy as np
import pytest
import zarr

import shardio

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("python", "bash")
NOT_RUN = ("text", "json")
MARKER = re.compile(r"^<!-- docs-test: (.+?) -->$")
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.S | re.M)
#: Most blocks a page may leave unrun: keep them few.
MOST_SKIPPED = 8
NUM_SAMPLES = 64


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence
    language: str
    code: str
    markers: frozenset[str]
    reason: str = ""

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above = text[: match.start()].rstrip("\n").rpartition("\n")[2].strip()
        marker = MARKER.match(above)
        words, reason = frozenset(), ""
        if marker:
            head, _, reason = marker.group(1).partition("(")
            words = frozenset(w.strip() for w in head.split(",") if w.strip())
            reason = reason.rstrip(")").strip()
        page = str(path.relative_to(ROOT))
        blocks.append(Block(page, line, match.group(1), match.group(2), words, reason))
    return blocks


BLOCKS = [b for page in PAGES for b in read_blocks(page)]
RUNNABLE = [b for b in BLOCKS if b.language in RUN]


def _param(block: Block) -> Any:
    marks = []
    if "skip" in block.markers:
        marks.append(pytest.mark.skip(reason=f"docs-test: skip ({block.reason})"))
    if "slow" in block.markers:
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=block.name, marks=marks)


# ------------------------------------------------------------------ the data
def write_sources(directory: Path) -> None:
    """The files the docs name: train.h5 (datasets ``image`` and ``label``), the same
    as a Zarr v3 group (train.zarr) and as LMDBs written by another tool (train.lmdb,
    old.lmdb: 8 bytes of label then the image)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(NUM_SAMPLES, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(NUM_SAMPLES, dtype=np.int64) % 10
    with h5py.File(directory / "train.h5", "w") as file:
        file["image"] = images
        file["label"] = labels
    group = zarr.open_group(str(directory / "train.zarr"), mode="w")
    group.create_array("image", data=images)
    group.create_array("label", data=labels)
    for name in ("train.lmdb", "old.lmdb"):
        with lmdb.open(str(directory / name), map_size=2**24) as env, env.begin(write=True) as txn:
            for i in range(NUM_SAMPLES):
                txn.put(b"%08d" % i, labels[i].tobytes() + images[i].tobytes())


def write_dataset(directory: Path) -> None:
    """train.shardio: train.h5 converted to LMDB shards, as the README's first command."""
    shardio.convert(directory / "train.h5", directory / "train.shardio", format="lmdb")


@dataclass
class PageState:
    directory: Path
    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__docs__"})
    started: set[int] = field(default_factory=set)  # indices into RUNNABLE


class Pages:
    """Per page: its directory, its Python namespace and the blocks already run."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.states: dict[str, PageState] = {}

    def new_directory(self, page: str, with_dataset: bool) -> Path:
        directory = self.factory.mktemp(re.sub(r"\W", "_", page))
        write_sources(directory)
        for name in ("benchmarks", "shardio"):  # commands that run "from the repository root"
            (directory / name).symlink_to(ROOT / name, target_is_directory=True)
        if with_dataset:
            write_dataset(directory)
        return directory

    def state(self, page: str) -> PageState:
        if page not in self.states:
            self.states[page] = PageState(self.new_directory(page, with_dataset=True))
        return self.states[page]


@pytest.fixture(scope="session")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Pages:
    return Pages(tmp_path_factory)


# ------------------------------------------------------------------ running
def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    return env


def run_block(block: Block, pages: Pages, monkeypatch: pytest.MonkeyPatch) -> None:
    state = pages.state(block.page)
    if "fresh" in block.markers:
        state.directory = pages.new_directory(block.page, with_dataset=False)
    monkeypatch.chdir(state.directory)
    if block.language == "python":
        code = compile(block.code, block.name, "exec")
        exec(code, state.namespace)
    else:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block.code],
            cwd=state.directory,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (
            f"{block.name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
        assert "Traceback" not in done.stderr, done.stderr
        # files a command says it writes (--plot out.png, --json out.json) are there
        for name in re.findall(r"--(?:plot|json) (\S+\.(?:png|json))", block.code):
            written = state.directory / name
            assert written.is_file() and written.stat().st_size > 0, f"{block.name}: {name}"


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE])
def test_block_runs(block: Block, pages: Pages, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    index = RUNNABLE.index(block)
    state = pages.state(block.page)
    # Earlier fast blocks of the page first (when this block is run alone, with -k):
    # later snippets use what earlier ones defined. Each block runs once.
    for number, earlier in enumerate(RUNNABLE[:index]):
        fast = not earlier.markers & {"skip", "slow"}
        if earlier.page == block.page and number not in state.started and fast:
            state.started.add(number)
            run_block(earlier, pages, monkeypatch)
    if index not in state.started:
        state.started.add(index)
        run_block(block, pages, monkeypatch)


# ------------------------------------------------------------- the convention
def test_every_block_says_its_language_and_few_are_skipped() -> None:
    unlabelled = [b.name for b in BLOCKS if b.language not in RUN + NOT_RUN]
    assert not unlabelled, f"blocks without python, bash, text or json: {unlabelled}"
    skipped = [b for b in BLOCKS if "skip" in b.markers]
    assert all(b.reason for b in skipped), [b.name for b in skipped if not b.reason]
    assert len(skipped) <= MOST_SKIPPED, [b.name for b in skipped]
    known = {"skip", "slow", "fresh"}
    unknown = [(b.name, sorted(b.markers - known)) for b in BLOCKS if b.markers - known]
    assert not unknown, unknown
    assert len(RUNNABLE) - len(skipped) >= 20  # the docs keep most of their examples live


def test_the_readme_bench_line_draws_its_picture() -> None:
    readme = [b for b in BLOCKS if b.page == "README.md" and "shardio bench" in b.code]
    assert readme and all("--plot" in b.code for b in readme)
