"""A seeded corruption campaign: damage a dataset, read it back, classify the outcome.

Each case copies a small dataset, damages it one way (a byte flipped, a file cut short
or deleted, a manifest entry edited, a metadata path pointed elsewhere) and reads every
sample through ``ShardedDataset``. The outcome is ``held`` (a ShardioError, or data
equal to what was written), ``wrong`` (other data came back silently), ``other`` (an
exception that is no ShardioError) or ``signal`` (the reading process died).

Cases run in a child process per format, so a crash is counted instead of ending the
run. ``python tests/corruption.py`` prints the counts recorded in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMATS = ("lmdb", "hdf5", "zarr", "mmap")
N = 60


@dataclass(frozen=True)
class Case:
    format: str
    kind: str
    target: str  # file path relative to the dataset directory, or a manifest edit
    detail: int = 0


def truth() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    return {
        "x": rng.integers(0, 2**40, size=(N, 6), dtype=np.int64),
        "blob": [bytes(rng.integers(0, 256, size=1 + i % 11, dtype=np.uint8)) for i in range(N)],
    }


def write(path: str, format: str) -> None:
    from shardio import ShardWriter

    with ShardWriter(path, format=format, shard_size="1KB") as writer:
        writer.write_batch(truth())


def files_of(path: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, names in os.walk(path) for f in names
    )


_MANIFEST_EDITS = (
    "swap",
    "duplicate",
    "empty",
    "huge-count",
    "infinite-count",
    "negative-count",
    "parent-path",
    "absolute-path",
    "string-count",
    "link-outside",
    "drop-last",
)


def cases(format: str, seed: int, flips: int, cuts: int) -> list[Case]:
    """The cases for one format, drawn from ``seed``."""
    directory = tempfile.mkdtemp()
    try:
        path = os.path.join(directory, "ds")
        write(path, format)
        names = files_of(path)
    finally:
        shutil.rmtree(directory)
    rng = random.Random(f"{seed}-{format}")
    found = [Case(format, "flip", rng.choice(names), rng.randrange(1 << 30)) for _ in range(flips)]
    found += [Case(format, "cut", rng.choice(names), rng.randrange(1 << 30)) for _ in range(cuts)]
    found += [Case(format, "delete", name) for name in names if name != "manifest.json"][:8]
    found += [Case(format, "manifest", edit) for edit in _MANIFEST_EDITS]
    if format == "mmap":
        found += [Case(format, "mmap-files", target) for target in ("/etc/passwd", "../x.bin")]
    return found


def damage(path: str, case: Case) -> None:
    target = os.path.join(path, case.target)
    if case.kind == "flip":
        size = os.path.getsize(target)
        if size:
            with open(target, "r+b") as handle:
                handle.seek(case.detail % size)
                byte = handle.read(1)
                handle.seek(case.detail % size)
                handle.write(bytes([byte[0] ^ (1 << (case.detail % 8))]))
    elif case.kind == "cut":
        size = os.path.getsize(target)
        os.truncate(target, case.detail % max(size, 1))
    elif case.kind == "delete":
        os.remove(target)
    elif case.kind == "manifest":
        _edit_manifest(path, case.target)
    elif case.kind == "mmap-files":
        meta_path = os.path.join(path, "shard-00000.mmap", "shardio-mmap.json")
        with open(meta_path) as handle:
            meta = json.load(handle)
        first = next(iter(meta["files"]))
        meta["files"][first]["data"] = case.target
        with open(meta_path, "w") as handle:
            json.dump(meta, handle)


def _edit_manifest(path: str, edit: str) -> None:
    manifest_path = os.path.join(path, "manifest.json")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    shards = manifest["shards"]
    if edit == "swap":
        shards[0], shards[1] = shards[1], shards[0]
    elif edit == "duplicate":
        shards[1] = dict(shards[0])
    elif edit == "empty":
        manifest["shards"], manifest["num_samples"] = [], 0
    elif edit == "huge-count":
        shards[0]["num_samples"] = 10**12
        manifest.pop("num_samples")
    elif edit == "infinite-count":
        shards[0]["nbytes"] = float("inf")
    elif edit == "negative-count":
        shards[0]["num_samples"] = -1
    elif edit == "parent-path":
        shards[0]["path"] = "../" + shards[0]["path"]
    elif edit == "absolute-path":
        shards[0]["path"] = "/etc"
    elif edit == "string-count":
        shards[0]["num_samples"] = "12"
    elif edit == "link-outside":
        outside = tempfile.mkdtemp()
        shard = os.path.join(path, shards[0]["path"])
        moved = os.path.join(outside, shards[0]["path"])
        shutil.move(shard, moved)
        os.symlink(moved, shard)
    elif edit == "drop-last":
        dropped = shards.pop()
        manifest["num_samples"] -= dropped["num_samples"]
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)


def read_back(path: str, verify: str = "off") -> str:
    """``held``, ``wrong`` or ``other:<type>`` for one damaged dataset."""
    from shardio import ShardedDataset, ShardioError

    want = truth()
    try:
        ds = ShardedDataset(path, **({} if verify == "off" else {"verify": verify}))
        if len(ds) != N:
            return "wrong"
        batch = ds.read_batch(np.arange(N)[::-1])
        singles = [ds[i] for i in range(0, N, 7)]
    except ShardioError:
        return "held"
    except Exception as exc:
        return f"other:{type(exc).__name__}"
    same = np.array_equal(batch["x"], want["x"][::-1]) and batch["blob"] == want["blob"][::-1]
    same = same and all(
        np.array_equal(s["x"], want["x"][i]) and s["blob"] == want["blob"][i]
        for s, i in zip(singles, range(0, N, 7), strict=True)
    )
    return "held" if same else "wrong"


def run_cases(format: str, seed: int, flips: int, cuts: int, skip: int, verify: str) -> None:
    """In the child: one JSON line per case, written as soon as it is known; the
    first ``skip`` cases ran in an earlier child (that crashed)."""
    pristine = tempfile.mkdtemp()
    source = os.path.join(pristine, "ds")
    write(source, format)
    for case in cases(format, seed, flips, cuts)[skip:]:
        work = tempfile.mkdtemp()
        path = os.path.join(work, "ds")
        shutil.copytree(source, path, symlinks=True)
        print(json.dumps({"case": case.__dict__}), flush=True)
        damage(path, case)
        print(json.dumps({"outcome": read_back(path, verify)}), flush=True)
        shutil.rmtree(work)
    shutil.rmtree(pristine)


def campaign(
    format: str, seed: int = 0, flips: int = 40, cuts: int = 10, verify: str = "off"
) -> list[tuple[Case, str]]:
    """Every case of one format with its outcome; a crash ends the child, and its
    case is counted as ``signal`` before the rest run in a new child."""
    results: list[tuple[Case, str]] = []
    done = 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    while True:
        command = [sys.executable, __file__, "--child", format, str(seed), str(flips), str(cuts)]
        child = subprocess.run(
            [*command, str(done), verify], capture_output=True, text=True, env=env, check=False
        )
        pending: Case | None = None
        for line in child.stdout.splitlines():
            record = json.loads(line)
            if "case" in record:
                pending = Case(**record["case"])
            else:
                assert pending is not None
                results.append((pending, record["outcome"]))
                pending = None
        done = len(results)
        if pending is None:
            if child.returncode != 0:
                raise RuntimeError(f"campaign child failed: {child.stderr[-2000:]}")
            return results
        results.append((pending, f"signal:{-child.returncode}"))
        done += 1


def summarize(results: list[tuple[Case, str]]) -> Counter[str]:
    return Counter(outcome.split(":")[0] for _, outcome in results)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        fmt, seed, flips, cuts, skip = sys.argv[2], *map(int, sys.argv[3:7])
        run_cases(fmt, seed, flips, cuts, skip, sys.argv[7])
        sys.exit(0)
    for mode in ("off", "first-read"):
        total: Counter[str] = Counter()
        for fmt in FORMATS:
            found = campaign(fmt, verify=mode)
            counts = summarize(found)
            total += counts
            print(f"verify={mode}", fmt, dict(counts))
            for case, outcome in found:
                if outcome != "held":
                    print("   ", outcome, case)
        print(f"verify={mode} all", dict(total), "cases:", sum(total.values()))
