"""shardio beside peer loaders on the same samples and access pattern (issue 5).

Peers, where they install (``pip install -c constraints.txt 'shardio-data[peers]'``):
WebDataset (tar shards), MosaicML Streaming (MDS shards), LitData (optimized chunks).
Each gets the same synthetic samples (``data``: uint8 array, ``label``: int64) and
reads them

- in random order: the same permutation for every loader, ``ds[i]`` for the peers
  (their random-access API) and shardio's batched ``read_batch``/``__getitems__``
  plus its ``ds[i]``; WebDataset has no random access, which the table says;
- sequentially: iterating the dataset in order.

Every measurement runs in a fresh forked process, so its peak RSS growth (sampled
every 10 ms) belongs to that loader alone. Prints a table and with ``--write`` puts
it in benchmarks/RESULTS.md under "Peer loaders (issue 5)".

    python benchmarks/bench_peers.py --write
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common

from shardio import ShardedDataset, format_size, parse_size
from shardio.tools.bench import RssSampler, raw_reader
from shardio.tools.bench.synthetic import synthetic_batches, write_synthetic

HEADING = "Peer loaders (issue 5)"
NO_RANDOM = "n/a: no random access"


# --------------------------------------------------------------------- peers
def import_streaming() -> Any:
    """``import streaming``, working around a torchvision that cannot load.

    NOTE: mosaicml-streaming imports torchvision at package import, for its vision
    datasets only. On a CPU-only torch the torchvision wheel from PyPI is a CUDA build
    that fails to load, so where the real import fails a stub provides the two names
    ``streaming.vision`` needs; nothing measured here touches them.
    """
    try:
        import streaming

        return streaming
    except (ImportError, RuntimeError) as exc:
        if "torchvision" not in repr(exc) and "nms" not in repr(exc):
            raise
    for name in [m for m in sys.modules if m.startswith(("streaming", "torchvision"))]:
        del sys.modules[name]
    stub = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    datasets.VisionDataset = type("VisionDataset", (), {})  # type: ignore[attr-defined]
    datasets.CIFAR10 = type("CIFAR10", (), {})  # type: ignore[attr-defined]

    def to_tensor(*_: Any) -> Any:
        raise NotImplementedError("torchvision stub (see benchmarks/bench_peers.py)")

    functional.to_tensor = to_tensor  # type: ignore[attr-defined]
    stub.datasets, stub.transforms = datasets, transforms  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    sys.modules.update(
        {
            "torchvision": stub,
            "torchvision.datasets": datasets,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
    )
    import streaming

    return streaming


def _samples(count: int, sample_bytes: int) -> Iterator[tuple[int, np.ndarray, int]]:
    for batch in synthetic_batches(count, sample_bytes):
        for data, label in zip(batch["data"], batch["label"].tolist(), strict=True):
            yield label, np.ascontiguousarray(data), label


def write_wds(root: str, count: int, sample_bytes: int) -> str:
    import webdataset as wds

    out = os.path.join(root, "wds")
    os.makedirs(out)
    with wds.ShardWriter(os.path.join(out, "shard-%05d.tar"), maxsize=256 << 20) as sink:
        for key, data, label in _samples(count, sample_bytes):
            sink.write({"__key__": f"{key:09d}", "data.npy": data, "cls": label})
    return out


def write_mds(root: str, count: int, sample_bytes: int) -> str:
    streaming = import_streaming()
    out = os.path.join(root, "mds")
    columns = {"data": f"ndarray:uint8:{sample_bytes - 8}", "label": "int64"}
    with streaming.MDSWriter(out=out, columns=columns, size_limit=256 << 20) as sink:
        for _, data, label in _samples(count, sample_bytes):
            sink.write({"data": data, "label": np.int64(label)})
    return out


_POOLS: dict[int, np.ndarray] = {}


def _litdata_sample(item: tuple[int, int]) -> dict[str, Any]:
    """Sample ``index`` of the synthetic data (as shardio.tools.bench.synthetic makes it)."""
    from shardio.tools.bench import synthetic

    index, sample_bytes = item
    width = sample_bytes - 8
    pool = _POOLS.get(width)
    if pool is None:
        rng = np.random.default_rng(0)
        pool = _POOLS[width] = rng.integers(0, 256, size=synthetic._POOL + width, dtype=np.uint8)
    start = (index * synthetic._STRIDE) % synthetic._POOL
    return {"data": pool[start : start + width].copy(), "label": index}


def write_litdata(root: str, count: int, sample_bytes: int) -> str:
    import litdata

    out = os.path.join(root, "litdata")
    litdata.optimize(
        fn=_litdata_sample,
        inputs=[(i, sample_bytes) for i in range(count)],
        output_dir=out,
        chunk_bytes="64MB",
        num_workers=1,
        mode="overwrite",
    )
    return out


# --------------------------------------------------------------- measurement
def _open(loader: str, path: str) -> tuple[Any, Callable[[np.ndarray], Any] | None, Any]:
    """(dataset, random read of a batch of indices or None, sequential iterable factory)."""
    if loader.startswith("shardio"):
        api = loader.split(" ", 1)[1]
        ds = ShardedDataset(path)
        read: Callable[[np.ndarray], Any] = {
            "read_batch": ds.read_batch,
            "__getitems__": ds.__getitems__,
            "ds[i]": lambda batch: [ds[i] for i in batch.tolist()],
        }[api]

        def sequential() -> Iterator[Any]:
            for start in range(0, len(ds), 256):
                yield ds.read_batch(np.arange(start, min(start + 256, len(ds))))

        return ds, read, sequential
    if loader.startswith("raw"):
        ds = ShardedDataset(path)
        raw = raw_reader(ds)
        ds.close()
        return raw, raw.read_loop, None
    if loader == "webdataset":
        import webdataset as wds

        urls = sorted(glob.glob(os.path.join(path, "*.tar")))
        return None, None, lambda: iter(wds.WebDataset(urls, shardshuffle=False).decode())
    if loader == "mosaicml-streaming":
        streaming = import_streaming()
        streaming.base.util.clean_stale_shared_memory()
        sds = streaming.StreamingDataset(local=path, remote=None, shuffle=False, batch_size=256)
        return sds, lambda batch: [sds[i] for i in batch.tolist()], lambda: iter(sds)
    if loader == "litdata":
        import litdata

        lds = litdata.StreamingDataset(input_dir=path, shuffle=False)
        return lds, lambda batch: [lds[i] for i in batch.tolist()], lambda: iter(lds)
    raise ValueError(loader)


def _child(
    loader: str, path: str, pattern: str, order: np.ndarray, seconds: float, queue: Any
) -> None:
    try:
        sampler = RssSampler(0.01).start()
        _dataset, read, sequential = _open(loader, path)
        if pattern == "random":
            if read is None:
                queue.put(("skip", NO_RANDOM))
                return
            batches = np.array_split(order, max(1, len(order) // 256))
            read(batches[-1][:8])  # opens files and shards outside the timing
            rate, count = _common.timed_rate(read, batches, seconds)
        else:
            if sequential is None:
                queue.put(("skip", "-"))
                return
            count, start = 0, time.perf_counter()
            for item in sequential():
                count += _items(item)
                if time.perf_counter() - start >= seconds:
                    break
            rate = count / (time.perf_counter() - start)
        sampler.stop()
        series = sampler.series(loader)
        queue.put(("ok", (rate, count, series.growth, series.baseline)))
    except BaseException as exc:  # reported in the table, not a crash of the whole run
        queue.put(("error", f"{type(exc).__name__}: {exc}"[:160]))


def _items(item: Any) -> int:
    """Samples in one yielded item: a shardio column batch, or one peer sample."""
    label = item.get("label") if isinstance(item, dict) else None
    return len(label) if isinstance(label, np.ndarray) and label.ndim == 1 else 1


def measure(
    loader: str, path: str, pattern: str, order: np.ndarray, seconds: float
) -> tuple[str, Any]:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(loader, path, pattern, order, seconds, queue))
    process.start()
    try:
        result = queue.get(timeout=seconds * 20 + 120)
    except Exception:
        result = ("error", "timed out")
    process.join(30)
    if process.is_alive():
        process.kill()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256MB", help="bytes of samples (default 256MB)")
    parser.add_argument("--sample-bytes", default="4KB")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement at most")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    sample_bytes = parse_size(args.sample_bytes)
    count = max(256, parse_size(args.size) // sample_bytes)
    root = args.dir or tempfile.mkdtemp(prefix="shardio-bench-peers-")
    os.makedirs(root, exist_ok=True)
    order = np.random.default_rng(0).permutation(count).astype(np.int64)
    paths: dict[str, str | None] = {}
    notes: dict[str, str] = {}
    for fmt in ("lmdb", "mmap"):
        path = os.path.join(root, f"shardio-{fmt}.shardio")
        if not os.path.exists(os.path.join(path, "manifest.json")):
            write_synthetic(path, fmt, count, sample_bytes)
        paths[f"shardio-{fmt}"] = path
    for name, writer in (
        ("webdataset", write_wds),
        ("mosaicml-streaming", write_mds),
        ("litdata", write_litdata),
    ):
        try:
            start = time.perf_counter()
            paths[name] = writer(root, count, sample_bytes)
            print(f"wrote {name} in {time.perf_counter() - start:.1f} s", flush=True)
        except ImportError as exc:
            paths[name] = None
            notes[name] = f"not installed ({exc.name})"
        except Exception as exc:
            paths[name] = None
            notes[name] = f"cannot write: {type(exc).__name__}: {exc}"[:120]

    loaders: list[tuple[str, str, str | None]] = []
    for fmt in ("lmdb", "mmap"):
        for api in ("read_batch", "__getitems__", "ds[i]"):
            loaders.append((f"shardio ({fmt}) {api}", f"shardio {api}", paths[f"shardio-{fmt}"]))
        loaders.append((f"raw {fmt} loop", "raw", paths[f"shardio-{fmt}"]))
    for name in ("webdataset", "mosaicml-streaming", "litdata"):
        loaders.append((f"{name} ds[i] / iteration", name, paths[name]))

    results: dict[tuple[str, str], Any] = {}
    for _ in range(args.repeats):
        for label, loader, path in loaders:
            for pattern in ("random", "sequential"):
                if path is None:
                    results[(label, pattern)] = ("skip", notes.get(loader, "not installed"))
                    continue
                status, value = measure(loader, path, pattern, order, args.seconds)
                old = results.get((label, pattern))
                better = old is None or (
                    status == "ok" and (old[0] != "ok" or value[0] > old[1][0])
                )
                if better or (old is not None and old[0] != "ok"):
                    results[(label, pattern)] = (status, value)
                print(label, pattern, status, value, flush=True)

    def best_random(prefix: str) -> float:
        rates = [
            v[1][0]
            for (lab, p), v in results.items()
            if p == "random" and lab.startswith(prefix) and v[0] == "ok"
        ]
        return max(rates) if rates else 0.0

    shardio_best = best_random("shardio")
    rows = []
    for label, _, _ in loaders:
        cells = [label]
        growth = ""
        for pattern in ("random", "sequential"):
            status, value = results[(label, pattern)]
            if status == "ok":
                cells.append(f"{value[0]:,.0f}")
                growth = growth or f"{value[2] / 2**20:,.0f}"
            else:
                cells.append(str(value))
        random_status, random_value = results[(label, "random")]
        if not label.startswith(("shardio", "raw")) and random_status == "ok":
            ratio = f"{shardio_best / random_value[0]:.1f}x"
        else:
            ratio = "-"
        cells += [ratio, growth or "-"]
        rows.append(cells)
    header = [
        "loader",
        "random samples/s",
        "sequential samples/s",
        "best shardio random / this",
        "peak RSS growth MiB",
    ]
    table = _common.markdown_table(header, rows)
    print(table)
    if args.write:
        versions = _versions()
        body = "\n\n".join(
            [
                f"Command: `{_common.command_line()}` (run with the peers' environment, see below)",
                f"Machine: {_common.machine_line()}. The 2 cores were shared with other "
                "engineers' test runs; figures are best of the repeats.",
                f"Data: {count:,} synthetic samples of {format_size(sample_bytes)} "
                f"({format_size(count * sample_bytes)}), written by each loader's own writer; "
                f"warm page cache. Random: the same permutation for everyone, at most "
                f"{args.seconds:g} s per measurement, batches of 256 for shardio's batched "
                "APIs, `ds[i]` for the peers (their random-access API). Sequential: "
                "iteration in order. Each measurement in a fresh forked process; RSS growth "
                "is its peak over its baseline (random access where it exists).",
                f"Peer versions: {versions}.",
                table,
            ]
        )
        _common.replace_section(HEADING, body)
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _versions() -> str:
    from importlib import metadata

    found = []
    for name in ("webdataset", "mosaicml-streaming", "litdata"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


if __name__ == "__main__":
    sys.exit(main())
