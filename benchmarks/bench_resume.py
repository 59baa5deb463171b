"""Resume cost of ShardSampler at 10M samples: state size and time to the first batch.

Only the sampler is measured: the layout is given as ``shard_lengths=`` and
``shard_nbytes=``, no data is read. A job of ``--world`` ranks stops half-way
through an epoch; rank 0's state is saved, then loaded by a new job of the same
world size and of others (elastic). The baseline, measured in the same run, is the
first batch of a fresh epoch (building the epoch's order is the cost any resume
pays too). The peer is torchdata's ``StatefulDistributedSampler`` (DistributedSampler
with a ``yielded`` count), resumed the same way; its world-size column counts the
samples a resume at another world size silently skips or repeats (on 100k samples).

    python benchmarks/bench_resume.py --samples 10M --write

Optional: ``--mosaic PYTHON`` times MosaicML Streaming's resume index logic
(``get_partitions`` + ``get_shuffle`` at the same sample offset) with the given
interpreter of a separate virtualenv where ``mosaicml-streaming`` is installed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from shardio.loading.sampling import ShardSampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, machine_line, markdown_table, replace_section

BATCH = 256
SHARDS = 1000
SAMPLE_BYTES = 1024


class _Range:
    """The smallest map-style dataset: DistributedSampler only needs len()."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def count(text: str) -> int:
    """``"10M"`` -> 10_000_000 (k, M and G are powers of 1000)."""
    scale = {"k": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def layout(n: int) -> dict[str, Any]:
    base, extra = divmod(n, SHARDS)
    lengths = [base + (1 if s < extra else 0) for s in range(SHARDS)]
    return {"shard_lengths": lengths, "shard_nbytes": [m * SAMPLE_BYTES for m in lengths]}


def first_batch(sampler: Any) -> list[int]:
    return list(itertools.islice(iter(sampler), BATCH))


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def shardio_cases(n: int, world: int, worlds: list[int], order: str) -> dict[str, Any]:
    """Seconds to the first batch (fresh epoch, resumes) and the state, for one order."""
    options = {**layout(n), "order": order, "window": "1GB", "seed": 1}
    old = ShardSampler(rank=0, world_size=world, **options)
    half = len(old) // 2
    it = iter(old)
    for _ in range(half):
        next(it)
    state = old.state_dict()
    del it, old

    cases = resume_cases(
        lambda w: ShardSampler(rank=0, world_size=w, **options), state, world, worlds
    )
    return {"cases": cases, "state": state, "options": options}


def resume_cases(
    make: Callable[[int], Any], state: dict[str, Any], world: int, worlds: list[int]
) -> dict[str, Callable[[], None]]:
    """A fresh epoch at ``world`` ranks, and ``state`` resumed at each of ``worlds``, as
    timed cases; ``make(w)`` builds rank 0's sampler at world size ``w``."""

    def resume(new_world: int) -> Callable[[], None]:
        def run() -> None:
            sampler = make(new_world)
            sampler.load_state_dict(state)
            first_batch(sampler)

        return run

    cases: dict[str, Callable[[], None]] = {"fresh epoch": lambda: first_batch(make(world))}
    for w in worlds:
        cases[f"resume at {w} ranks"] = resume(w)
    return cases


def state_figures(state: dict[str, Any], options: dict[str, Any], new_world: int) -> dict[str, Any]:
    sampler = ShardSampler(rank=0, world_size=new_world, **options)
    sampler.load_state_dict(state)
    folded = sampler.state_dict()
    next(iter(sampler))  # a pass is running, as when a loader asks at every batch
    calls = 500
    seconds = min(timed(lambda: [sampler.state_dict() for _ in range(calls)]) for _ in range(5))
    return {
        "bytes": len(json.dumps(state)),
        "bytes_folded": len(json.dumps(folded)),
        "state_dict_us": seconds / calls * 1e6,
    }


def torch_cases(n: int, world: int, worlds: list[int]) -> dict[str, Callable[[], None]]:
    from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

    per_rank = -(-n // world)
    state = {"yielded": per_rank // 2}

    return resume_cases(
        lambda w: StatefulDistributedSampler(_Range(n), num_replicas=w, rank=0, seed=1),  # type: ignore[arg-type]
        state,
        world,
        worlds,
    )


def torch_elastic_errors(world: int, new_world: int, n: int = 100_000) -> tuple[int, int]:
    """(skipped, repeated) samples of an epoch when StatefulDistributedSampler's state
    from ``world`` ranks resumes at ``new_world``."""
    from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

    def share(w: int, r: int) -> list[int]:
        return list(StatefulDistributedSampler(_Range(n), num_replicas=w, rank=r, seed=1))  # type: ignore[arg-type]

    k = len(share(world, 0)) // 2
    reads = Counter(i for r in range(world) for i in share(world, r)[:k])
    reads.update(i for r in range(new_world) for i in share(new_world, r)[k:])
    skipped = n - len(reads)
    repeated = sum(c - 1 for c in reads.values())
    padding = max(-(-n // world) * world, -(-n // new_world) * new_world) - n
    return skipped, max(repeated - padding, 0)


def shardio_elastic_errors(world: int, new_world: int, n: int = 100_000) -> tuple[int, int]:
    options = {**layout(n), "seed": 1, "window": "1MB"}
    olds = [ShardSampler(rank=r, world_size=world, **options) for r in range(world)]
    k = len(olds[0]) // 2
    reads: Counter[int] = Counter()
    for s in olds:
        it = iter(s)
        reads.update(next(it) for _ in range(k))
    state = olds[0].state_dict()
    for r in range(new_world):
        s = ShardSampler(rank=r, world_size=new_world, **options)
        s.load_state_dict(state)
        reads.update(s)
    padding = -(-n // world) * world - n + new_world - 1
    return n - len(reads), max(sum(c - 1 for c in reads.values()) - padding, 0)


MOSAIC = textwrap.dedent(
    """
    import importlib.util, json, os, sys, time, types
    import numpy as np
    # Import the two index modules without streaming/__init__ (it imports transformers).
    root = os.path.dirname(importlib.util.find_spec("streaming").origin)
    for name, path in (("streaming", root), ("streaming.base", os.path.join(root, "base"))):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
    from streaming.base.partition import get_partitions
    from streaming.base.shuffle import get_shuffle
    n, world, new_world, shards = (int(a) for a in sys.argv[1:5])
    sizes = np.full(shards, n // shards, dtype=np.int64)
    out = {}
    for name, nodes, skip in (
        ("fresh epoch", world, 0),
        (f"resume at {new_world} ranks", new_world, n // 2),
    ):
        start = time.perf_counter()
        shuffle = get_shuffle("py1e", sizes, world, 1, 1, 1 << 18)  # canonical nodes = world
        ids = get_partitions("orig", n, world, nodes, 1, 1, 256, skip, world)
        first = shuffle[ids.reshape(nodes, -1)[0, :256]]
        out[name] = time.perf_counter() - start
    print(json.dumps(out))
    """
)


def mosaic_cases(python: str, n: int, world: int, new_world: int) -> dict[str, float] | str:
    try:
        out = subprocess.run(
            [python, "-c", MOSAIC, str(n), str(world), str(new_world), str(SHARDS)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"not measured: {error}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_times(cases: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for repeat in range(repeats):
        # Alternated, and each repeat starts with another case, so a busy moment on
        # the shared machine or the cost of going first hits every case alike.
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(cases[name]))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="10M", help="dataset length, e.g. 10M")
    parser.add_argument("--world", type=int, default=8, help="ranks of the job that stops")
    parser.add_argument("--worlds", default="8,5,16", help="ranks of the resumed jobs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mosaic", help="python of a venv with mosaicml-streaming")
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = count(args.samples)
    worlds = [int(w) for w in args.worlds.split(",")]

    rows: list[list[str]] = []
    state_rows: list[list[str]] = []
    for order in ("shard-window", "random"):
        found = shardio_cases(n, args.world, worlds, order)
        times = median_times(found["cases"], args.repeats)
        base = times["fresh epoch"]
        for name, seconds in times.items():
            rows.append([f"shardio {order}", name, f"{seconds:.2f} s", f"{seconds / base:.2f}x"])
        figures = state_figures(found["state"], found["options"], worlds[-1])
        state_rows.append(
            [
                f"shardio {order}",
                f"{figures['bytes']} B",
                f"{figures['bytes_folded']} B",
                f"{figures['state_dict_us']:.0f} us",
            ]
        )
    times = median_times(torch_cases(n, args.world, worlds), args.repeats)
    base_torch = times["fresh epoch"]
    for name, seconds in times.items():
        rows.append(
            [
                "torchdata StatefulDistributedSampler",
                name,
                f"{seconds:.2f} s",
                f"{seconds / base_torch:.2f}x",
            ]
        )
    state_rows.append(
        [
            "torchdata StatefulDistributedSampler",
            f"{len(json.dumps({'yielded': -(-n // args.world) // 2}))} B",
            "the same",
            "-",
        ]
    )
    mosaic_note = "MosaicML Streaming: not measured (no --mosaic interpreter given)."
    if args.mosaic:
        found_mosaic = mosaic_cases(args.mosaic, n, args.world, worlds[-1])
        if isinstance(found_mosaic, str):
            mosaic_note = f"MosaicML Streaming: {found_mosaic}"
        else:
            base_m = found_mosaic["fresh epoch"]
            for name, seconds in found_mosaic.items():
                rows.append(
                    [
                        "mosaicml-streaming index logic",
                        name,
                        f"{seconds:.2f} s",
                        f"{seconds / base_m:.2f}x",
                    ]
                )
            mosaic_note = (
                "MosaicML Streaming: its resume index logic only (get_shuffle py1e + "
                "get_partitions), no dataset; its state is StreamingDataset.state_dict()'s "
                "five keys, with the sample offset as of this run."
            )
            mosaic_state = {
                "epoch": 0,
                "sample_in_epoch": n // 2,
                "num_canonical_nodes": args.world,
                "shuffle_seed": 1,
                "initial_physical_nodes": args.world,
            }
            state_rows.append(
                ["mosaicml-streaming", f"{len(json.dumps(mosaic_state))} B", "the same", "-"]
            )

    elastic_rows = []
    for w in worlds:
        if w == args.world:
            continue
        ts, tr = torch_elastic_errors(args.world, w)
        ss, sr = shardio_elastic_errors(args.world, w)
        elastic_rows.append([f"{args.world} -> {w}", f"{ts} / {tr}", f"{ss} / {sr}"])

    table = markdown_table(["sampler", "case", "time to first batch", "vs its fresh epoch"], rows)
    states = markdown_table(
        ["sampler", "state (JSON)", f"after a resume at {worlds[-1]} ranks", "state_dict() call"],
        state_rows,
    )
    elastic = markdown_table(
        ["world size change", "torchdata: skipped / repeated", "shardio: skipped / repeated"],
        elastic_rows,
    )
    body = "\n\n".join(
        [
            f"Command: `{command_line()}`",
            f"Machine: {machine_line()}; shared with other engineers' test runs "
            "(compare ratios within this run, not absolute times across runs).",
            f"{n:,} samples in {SHARDS} shards of {SAMPLE_BYTES} B samples, window 1GB; a "
            f"{args.world}-rank job stops half-way through the epoch; time = new sampler "
            f"+ load_state_dict + first {BATCH} indices of rank 0, median of "
            f"{args.repeats} alternated repeats; state_dict() call: best of 5 x 500 calls "
            "during a resumed pass.",
            table,
            states,
            "Samples an epoch skips or repeats beyond padding when a job stops half-way and "
            "resumes at another world size (100k samples):",
            elastic,
            mosaic_note,
        ]
    )
    print(body)
    if args.write:
        replace_section("Elastic resume: state size and time to first batch (issue 16)", body)


if __name__ == "__main__":
    main()
