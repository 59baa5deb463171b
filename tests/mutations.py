"""Mutation check of the conformance harness: break an adapter's read path on purpose
and count the harness checks that fail (docs/adapters.md, benchmarks/RESULTS.md).

    python tests/mutations.py

Each edit is applied to a copy of ``shardio/`` and ``tests/`` in a temporary directory,
never to the checkout. A harness that passes with an edit applied cannot see that bug.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = [
    "tests/storage/test_conformance.py",
    "tests/storage/test_registry.py",
    "-k",
    "not spawn and not forked",
]


@dataclass(frozen=True)
class Mutation:
    title: str
    path: str
    old: str
    new: str
    after: str = ""  # the edit is made at the first ``old`` after this text


MUTATIONS = (
    Mutation(
        "LMDB _read_by_offsets: every offset one byte late",
        "shardio/storage/adapters/lmdb/_adapter.py",
        "positions = handle.offsets[indices]\n",
        "positions = handle.offsets[indices] + [1, 0]\n",
        after="def _read_by_offsets(",
    ),
    Mutation(
        "Zarr _read_variable: variable-length ends one element short",
        "shardio/storage/adapters/zarr/_adapter.py",
        "ends = after.astype(np.int64)\n",
        "ends = after.astype(np.int64) - 1\n",
    ),
    Mutation(
        "raw mmap read_into: every fixed-field row one row late",
        "shardio/storage/adapters/mmap/_adapter.py",
        "files.file.take_rows(indices, column)",
        "files.file.take_rows(indices + 1, column)",
    ),
    Mutation(
        "HDF5 _RowTable.positions: every row one byte late",
        "shardio/storage/adapters/hdf5/_adapter.py",
        "return starts + (rows % self.rows) * self.row_bytes\n",
        "return starts + (rows % self.rows) * self.row_bytes + 1\n",
    ),
)


def apply(tree: str, mutation: Mutation) -> str:
    """Edit the copy at ``tree``; returns the file's original text."""
    path = os.path.join(tree, mutation.path)
    with open(path) as handle:
        text = handle.read()
    start = text.index(mutation.after) if mutation.after else 0
    at = text.find(mutation.old, start)
    if at < 0:
        raise SystemExit(f"{mutation.title}: the code to edit is gone from {mutation.path}")
    with open(path, "w") as handle:
        handle.write(text[:at] + mutation.new + text[at + len(mutation.old) :])
    return text


def run_checks(tree: str) -> tuple[str, Counter[str]]:
    """pytest's summary line, and failures per test class."""
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CHECKS],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = done.stdout.strip().splitlines()
    failed = Counter(
        m.group(1) for line in lines if (m := re.match(r"FAILED tests/[\w/]+\.py::(\w+)", line))
    )
    return (lines[-1] if lines else done.stderr.strip()[-200:]), failed


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="shardio-mutations-") as tree:
        for name in ("shardio", "tests", "docs", "pyproject.toml"):
            source = os.path.join(ROOT, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(tree, name))
            else:
                shutil.copy(source, tree)
        summary, _ = run_checks(tree)
        print(f"unmutated: {summary}", flush=True)
        missed = 0
        for mutation in MUTATIONS:
            original = apply(tree, mutation)
            try:
                summary, failed = run_checks(tree)
            finally:
                with open(os.path.join(tree, mutation.path), "w") as handle:
                    handle.write(original)
            missed += not failed
            print(f"{mutation.title}: {summary}; {dict(failed)}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
