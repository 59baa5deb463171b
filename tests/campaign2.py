"""The second reliability campaign (issue 29): seeded cases by class, outcomes counted.

Classes: field names that break a backend (`names`), later values that do not fit the
field (`narrowing`), indices that are no sample (`indices`), a directory rewritten
under an open dataset (`generations`), special files where a dataset's files belong
(`special`), chunks that decompress past their declaration (`bombs`) and a disk that
fills while writing (`fulldisk`, only where a small tmpfs can be mounted).

Each class runs in a child process that prints one outcome per case: `held` (the
ShardioError the class calls for, or the data that was written), `wrong` (data that was
not written came back, or was stored, silently), `other` (another exception, or a bomb
past its memory bound) or `hang` (a read blocked past its deadline). A child that dies
counts its unreported cases as `signal`.

`python tests/campaign2.py [CLASS ...]` prints the counts recorded in
docs/reliability.md (about 3 minutes); run it with `PYTHONPATH` pointing at another
checkout to count that code instead.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

FORMATS = ("mmap", "lmdb", "zarr", "hdf5")
CLASSES = ("names", "narrowing", "indices", "generations", "special", "bombs", "fulldisk")
#: Peak RSS growth a bomb may cause (docs/reliability.md: 2x the declared 256 KiB chunk
#: per chunk decoded, plus what reading one chunk costs anyway), with a generous margin.
BOMB_LIMIT_KIB = 64 * 1024
#: A case still running after this long counts as a hang.
DEADLINE_S = 20


def _deadline(seconds: int) -> Any:
    def expire(*_: object) -> None:
        raise TimeoutError("blocked")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)


def _outcome(run: Callable[[], str]) -> str:
    import shardio

    started = time.monotonic()
    _deadline(DEADLINE_S)
    try:
        outcome = run()
    except TimeoutError:
        outcome = "hang"
    except shardio.ShardioError:
        outcome = "held"
    except Exception:
        outcome = "other"
    finally:
        signal.alarm(0)
    # A blocked read interrupted by the deadline may surface as any error (a library
    # wraps it): the time taken says it hung.
    return "hang" if time.monotonic() - started >= DEADLINE_S - 0.5 else outcome


def _write(path: str, fmt: str, columns: dict[str, Any], **options: Any) -> None:
    from shardio import ShardWriter

    with ShardWriter(path, format=fmt, **options) as writer:
        writer.write_batch(columns)


# ------------------------------------------------------------------------ classes
def names(rng: random.Random, root: str) -> Iterator[tuple[str, Callable[[], str]]]:
    from shardio import ShardedDataset, ShardWriter

    pieces = ["\\", "\x00", "/", "//", ".", "..", "zarr.json", ".zarray", "__x"]
    for number in range(24):
        fmt = rng.choice(FORMATS)
        base = rng.choice(["temp", "a", "img", "v"])
        kind = rng.randrange(4)
        if kind == 0:
            names = [base + rng.choice(pieces[:2]) + "c"]
        elif kind == 1:
            names = [rng.choice(["", base + "/"]) + rng.choice(pieces[4:])]
        elif kind == 2:
            names = [base, base + rng.choice(["/b", ".data", ".offsets"])]
        else:
            names = [rng.choice(["/", ""]) + base + rng.choice(["/", "//x"])]
        path = os.path.join(root, f"names{number}")

        def run(path: str = path, fmt: str = fmt, names: list[str] = names) -> str:
            try:
                with ShardWriter(path, format=fmt) as writer:
                    writer.write_batch({n: np.arange(3) for n in names})
            except Exception:
                if os.path.isdir(path) and os.listdir(path):
                    return "other"  # refused, but left files behind
                raise
            read = ShardedDataset(path).read_batch([0, 1, 2])
            ok = all(read[n].tolist() == [0, 1, 2] for n in names)
            return "held" if ok else "wrong"

        yield f"{fmt} {names!r}", run


def narrowing(rng: random.Random, root: str) -> Iterator[tuple[str, Callable[[], str]]]:
    from shardio import ShardedDataset, ShardWriter

    for number in range(24):
        fmt = rng.choice(FORMATS)
        dtype = np.dtype(rng.choice(["int8", "int16", "uint8", "uint16", "int32", "float32"]))
        if dtype.kind == "f":
            later: Any = np.float64(rng.choice([1e39, -1e300, 3.5e38]))
        else:
            info = np.iinfo(dtype)
            wider = "uint64" if rng.random() < 0.3 else "int64"
            later = np.array(rng.choice([int(info.max) + 1 + rng.randrange(1000)]), dtype=wider)
            later = later.reshape(())
        batch = rng.random() < 0.5
        path = os.path.join(root, f"narrow{number}")

        def run(path: str = path, fmt: str = fmt, dtype: Any = dtype, later: Any = later,
                batch: bool = batch) -> str:  # fmt: skip
            with ShardWriter(path, format=fmt) as writer:
                if batch:
                    writer.write_batch({"x": np.array([1], dtype)})
                    writer.write_batch({"x": np.array([later])})
                else:
                    writer.write({"x": dtype.type(1)})
                    writer.write({"x": later})
            value = ShardedDataset(path)[1]["x"]
            return "held" if float(value) == float(later) else "wrong"

        yield f"{fmt} {dtype} then {later!r} ({'write_batch' if batch else 'write'})", run


def indices(rng: random.Random, root: str) -> Iterator[tuple[str, Callable[[], str]]]:
    import torch

    from shardio import Loader, SampleIndexError, ShardedDataset

    torch.set_num_threads(1)
    path = os.path.join(root, "indices")
    _write(path, "mmap", {"x": np.arange(10)}, shard_size=32)
    ds = ShardedDataset(path)
    bad: list[Any] = [
        True, np.bool_(False), 1.0, np.float32(2), "3", None, 2**64, -11, 10,
        np.uint64(2**64 - 1), 2**63, np.int64(-11),
    ]  # fmt: skip
    for _ in range(24):
        way = rng.choice(["getitem", "read_batch", "mask", "array", "loader"])
        value = rng.choice(bad)

        def run(way: str = way, value: Any = value) -> str:
            try:
                if way == "getitem":
                    ds[value]
                elif way == "read_batch":
                    ds.read_batch([0, value])
                elif way == "mask":
                    ds.read_batch(np.arange(10) % 2 == 0)
                elif way == "array":
                    ds.read_batch(np.array([2**64 - 1, 3], dtype=np.uint64))
                else:
                    list(Loader(ds, batch_size=2, sampler=[0, value]))
            except SampleIndexError:
                return "held"
            return "wrong"  # read some sample for an index that names none

        yield f"{way} {value!r}", run


def generations(rng: random.Random, root: str) -> Iterator[tuple[str, Callable[[], str]]]:
    from shardio import ShardedDataset

    for number in range(8):
        fmt = FORMATS[number % 4]
        verify = "first-read" if number >= 4 else "off"
        path = os.path.join(root, f"gen{number}")
        first = rng.randrange(100)

        def run(path: str = path, fmt: str = fmt, verify: str = verify, first: int = first) -> str:
            columns = {"x": np.full(16, first, dtype=np.int64)}
            _write(path, fmt, columns, shard_size=64)
            ds = ShardedDataset(path, max_open_shards=1, verify=verify)
            ds.read_batch([0, len(ds) - 1])  # shard 0 is closed again
            _write(path, fmt, {"x": np.full(16, first + 1, dtype=np.int64)}, shard_size=64,
                   overwrite=True)  # fmt: skip
            value = int(ds.read_batch([0])["x"][0])
            return "held" if value == first else "wrong"

        yield f"{fmt} verify={verify}", run


_SPECIAL_TARGETS = {
    "mmap": ["manifest.json", "shard-00000.mmap/shardio-mmap.json", "shard-00000.mmap/000.bin"],
    "lmdb": ["shard-00000.lmdb/data.mdb", "manifest.json"],
    "zarr": [
        "shard-00000.zarr/zarr.json",
        "shard-00000.zarr/x/c/0",
        "shard-00000.zarr/x/zarr.json",
    ],
    "hdf5": ["shard-00000.h5", "manifest.json"],
}


def special(rng: random.Random, root: str) -> Iterator[tuple[str, Callable[[], str]]]:
    from shardio import ShardedDataset

    for number in range(16):
        fmt = rng.choice(FORMATS)
        target = rng.choice(_SPECIAL_TARGETS[fmt])
        kind = rng.choice(["fifo", "fifo", "/dev/zero"])
        # The shard opened on its own half the time (a single file or directory of any
        # backend opens as a one-shard dataset, with no manifest sizes to compare).
        direct = target != "manifest.json" and rng.random() < 0.5
        path = os.path.join(root, f"special{number}")

        def run(
            path: str = path, fmt: str = fmt, target: str = target, kind: str = kind,
            direct: bool = direct,
        ) -> str:  # fmt: skip
            _write(path, fmt, {"x": np.arange(100)})
            where = os.path.join(path, target)
            os.remove(where)
            if kind == "fifo":
                os.mkfifo(where)
            else:
                os.symlink("/dev/zero", where)
            ds = ShardedDataset(os.path.join(path, target.split("/")[0]) if direct else path)
            ds.read_batch(list(range(len(ds))))
            return "wrong"

        yield f"{fmt} {target} as {kind}" + (" (shard opened directly)" if direct else ""), run


def bombs(rng: random.Random, root: str) -> Iterator[tuple[str, Callable[[], str]]]:
    import gzip
    import resource

    from numcodecs import Zstd

    from shardio import ShardedDataset

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_campaign2 import _replace_chunk, strip_zstd_content_size

    for number in range(6):
        kind = ("zstd", "zstd-no-size", "gzip")[number % 3]
        size = rng.choice([1 << 28, 1 << 29]) if kind != "gzip" else 1 << 27
        path = os.path.join(root, f"bomb{number}")

        def run(path: str = path, kind: str = kind, size: int = size) -> str:
            compressor = "gzip" if kind == "gzip" else "zstd"
            _write(path, "zarr", {"x": np.arange(100_000)}, compressor=compressor)
            zeros = np.zeros(size, np.uint8)
            bomb = gzip.compress(zeros.tobytes(), 6) if kind == "gzip" else Zstd().encode(zeros)
            del zeros
            if kind == "zstd-no-size":
                bomb = strip_zstd_content_size(bomb)
            _replace_chunk(__import__("pathlib").Path(path), "shard-00000.zarr/x/c/0", bomb)
            ds = ShardedDataset(path)
            ds.read_batch([len(ds) - 1])
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                ds.read_batch([0])
            except Exception:
                growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
                if growth > BOMB_LIMIT_KIB:
                    return "other"
                raise
            return "wrong"

        yield f"{kind} {size >> 20} MiB in one 256 KiB chunk", run


def fulldisk(rng: random.Random, root: str) -> Iterator[tuple[str, Callable[[], str]]]:
    from shardio import OutputWriteError, ShardWriter

    mount = os.path.join(root, "disk")
    os.makedirs(mount)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mount]).returncode:
        return
    try:
        for fmt in FORMATS:

            def run(fmt: str = fmt) -> str:
                path = os.path.join(mount, fmt)
                try:
                    with ShardWriter(path, format=fmt, shard_size="1MB") as writer:
                        for seed in range(20):
                            rows = np.random.default_rng(seed).integers(0, 2**62, (8192, 4))
                            writer.write_batch({"x": rows})
                except OutputWriteError:
                    left = os.listdir(path)
                    if any(not n.startswith("shard-") or "partial" in n for n in left):
                        return "other"
                    return "held"
                finally:
                    shutil.rmtree(path, ignore_errors=True)
                return "wrong"

            yield f"{fmt} on a 2 MiB tmpfs", run
    finally:
        subprocess.run(["umount", mount])


# ------------------------------------------------------------------------ running
def child(name: str, seed: int) -> None:
    root = tempfile.mkdtemp(prefix=f"campaign2-{name}-")
    try:
        rng = random.Random(f"{name}-{seed}")
        for label, run in globals()[name](rng, root):
            print(json.dumps({"case": label, "outcome": _outcome(run)}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def campaign(name: str, seed: int = 0) -> list[tuple[str, str]]:
    """(case, outcome) of every case of class ``name``."""
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", name, str(seed)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    results = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            results.append((item["case"], item["outcome"]))
    if done.returncode < 0:
        results.append((f"(child killed by signal {-done.returncode})", "signal"))
    return results


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
        return
    totals: Counter[str] = Counter()
    for name in sys.argv[1:] or CLASSES:
        results = campaign(name)
        counts = Counter(outcome for _, outcome in results)
        totals.update(counts)
        print(
            f"{name:12} {len(results):4} cases  "
            + "  ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )
        for case, outcome in results:
            if outcome != "held":
                print(f"    {outcome:6} {case}")
    print(
        f"{'total':12} {sum(totals.values()):4} cases  "
        + "  ".join(f"{k} {v}" for k, v in sorted(totals.items()))
    )


if __name__ == "__main__":
    main()
