"""The second reliability campaign's classes, one fast case each (issue 29).

The seeded draw over every class and format is `tests/campaign2.py`; these cases are
the ones the default run keeps."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardio import Loader, ShardedDataset, ShardWriter, verify
from shardio.core.errors import (
    OutputWriteError,
    SampleIndexError,
    SchemaError,
    ShardCorruptError,
    ShardioError,
    UnreadableFileError,
)

FORMATS = ["mmap", "lmdb", "zarr", "hdf5"]

BAD_NAMES = [
    ["a\\b"],
    ["."],
    [".."],
    ["zarr.json"],
    ["trailing/"],
    ["/lead"],
    ["a//b"],
    ["nul\x00"],
    ["a", "a/b"],
    ["v", "v.data"],
    ["v", "v.offsets"],
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_field_names_refused_before_any_shard(tmp_path: Path, fmt: str) -> None:
    refused = []
    for number, names in enumerate(BAD_NAMES):
        out = tmp_path / f"d{number}"
        rule = "a field name is a non-empty string"
        with pytest.raises(SchemaError, match=rule) as info, ShardWriter(out, format=fmt) as w:
            w.write({n: np.int64(1) for n in names})
        assert os.listdir(out) == []  # no shard, no .partial, no manifest
        refused.append(str(info.value))
    assert len(refused) == len(BAD_NAMES)
    with ShardWriter(tmp_path / "ok", format=fmt) as writer:  # groups are fine
        writer.write({"g/x": np.int64(1), "v": b"ab", "w.data": np.float32(2)})
    (sample,) = list(ShardedDataset(tmp_path / "ok"))
    assert (int(sample["g/x"]), sample["v"], float(sample["w.data"])) == (1, b"ab", 2.0)


def test_convert_refuses_backslash_field(tmp_path: Path) -> None:
    import h5py

    from shardio import convert

    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["temp\\degC"] = np.arange(4.0)
    with pytest.raises(SchemaError, match="contains `\\\\`"):
        convert(str(tmp_path / "src.h5"), str(tmp_path / "out"), format="zarr")
    assert not (tmp_path / "out" / "manifest.json").exists()


NARROWING = [
    (np.int8(1), np.int64(300)),
    (np.uint16(1), np.uint32(70000)),
    (np.float32(1), 1e300),
    (np.int32(1), np.uint64(2**63)),
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_refuses_values_that_do_not_fit(tmp_path: Path, fmt: str) -> None:
    for number, (first, later) in enumerate(NARROWING):
        for batch in (False, True):
            out = tmp_path / f"d{number}{batch}"
            refused = r"expects dtype|which holds|as inf"
            with pytest.raises(SchemaError, match=refused), ShardWriter(out, format=fmt) as writer:
                if batch:
                    writer.write_batch({"x": np.array([first])})
                    writer.write_batch({"x": np.array([later])})
                else:
                    writer.write({"x": first})
                    writer.write({"x": later})
            assert not (out / "manifest.json").exists()
    with ShardWriter(tmp_path / "fits", format=fmt) as writer:
        writer.write({"x": np.int8(1), "f": np.float32(1)})
        writer.write({"x": np.int64(-128), "f": 0.5})
        writer.write_batch({"x": np.array([127], np.int64), "f": np.array([3e38])})
    values = ShardedDataset(tmp_path / "fits").read_batch([0, 1, 2])
    assert values["x"].tolist() == [1, -128, 127] and values["x"].dtype == np.int8
    assert values["f"].tolist()[:2] == [1.0, 0.5] and np.isfinite(values["f"]).all()


BAD_INDICES = [
    [np.uint64(2**64 - 1)],
    np.array([2**64 - 1], dtype=np.uint64),
    np.ones(5, dtype=bool),
    [True, 1],
    [1.0],
    np.array([1.0]),
    ["3"],
    [None],
    [2**64],
    [-6],
    np.array([[1]]),
]


def test_one_index_validation(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "d", format="mmap", shard_size=16) as writer:
        writer.write_batch({"x": np.arange(5)})
    ds = ShardedDataset(tmp_path / "d")
    refused = 0
    for bad in BAD_INDICES:
        with pytest.raises(SampleIndexError):
            ds.read_batch(bad)
        refused += 1
    for one in (1.0, True, "3", None, 2**64, np.uint64(2**64 - 1), np.bool_(True)):
        with pytest.raises(SampleIndexError):
            ds[one]
        refused += 1
    for sampler in ([1.0], ["3"], [None], [np.uint64(2**64 - 1)]):
        with pytest.raises(SampleIndexError):
            list(Loader(ds, batch_size=1, sampler=sampler))
        refused += 1
    assert refused == len(BAD_INDICES) + 7 + 4
    assert ds.read_batch([1, -1, np.int32(2)])["x"].tolist() == [1, 4, 2]
    assert ds.read_batch(np.array([3], np.uint8))["x"].tolist() == [3]
    assert ds.read_batch(range(2))["x"].tolist() == [0, 1]


def _write_full(path: Path, fmt: str, value: int) -> None:
    with ShardWriter(path, format=fmt, shard_size=64, overwrite=True) as writer:
        writer.write_batch({"x": np.full(16, value, dtype=np.int64)})


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("verify", ["off", "first-read"])
def test_reopened_shard_is_the_generation_first_opened(
    tmp_path: Path, fmt: str, verify: str
) -> None:
    path = tmp_path / "d"
    _write_full(path, fmt, 1)
    ds = ShardedDataset(path, max_open_shards=1, verify=verify)
    assert len(ds.shard_lengths) > 1
    assert ds.read_batch([0, len(ds) - 1])["x"].tolist() == [1, 1]  # shard 0 evicted
    _write_full(path, fmt, 2)
    with pytest.raises(ShardCorruptError, match="changed since this dataset first opened"):
        ds.read_batch([0])
    assert ShardedDataset(path).read_batch([0])["x"].tolist() == [2]  # a new one reads it


def test_first_read_checks_blocks_again_after_a_reopen(tmp_path: Path) -> None:
    """A rewrite that keeps inode, size and mtime passes the generation check; the
    blocks checked under the old handle are not trusted for the new one."""
    path = tmp_path / "d"
    _write_full(path, "mmap", 1)
    ds = ShardedDataset(path, max_open_shards=1, verify="first-read")
    assert ds.read_batch([0, len(ds) - 1])["x"].tolist() == [1, 1]
    (data,) = (path / "shard-00000.mmap").glob("*.bin")
    stat = data.stat()
    with open(data, "r+b") as handle:
        handle.write(np.int64(7).tobytes())
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ShardCorruptError, match="differ from what was written"):
        ds.read_batch([0])


# --------------------------------------------------------------- special files, bounds
SPECIAL = {
    "manifest.json": ("mmap", "manifest.json"),
    "shardio-mmap.json": ("mmap", "shard-00000.mmap/shardio-mmap.json"),
    "zarr.json": ("zarr", "shard-00000.zarr/zarr.json"),
    "a Zarr chunk": ("zarr", "shard-00000.zarr/x/c/0"),
    "data.mdb": ("lmdb", "shard-00000.lmdb/data.mdb"),
    "an .h5 shard": ("hdf5", "shard-00000.h5"),
}

_READ_ALL = """
import sys, shardio
try:
    ds = shardio.ShardedDataset(sys.argv[1])
    ds.read_batch(list(range(len(ds))))
    print("READ")
except shardio.ShardioError as error:
    print(type(error).__name__, error)
"""


def _run(script: str, *args: str, timeout: float = 60) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )
    return done.stdout + done.stderr[-2000:]


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """A blocking open() of a FIFO is interrupted: the test fails instead of hanging."""

    def expire(*_: object) -> None:
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    refused = []
    for number, what in enumerate(sorted(SPECIAL)):
        fmt, relative = SPECIAL[what]
        path = tmp_path / f"d{number}"
        with ShardWriter(path, format=fmt) as writer:
            writer.write_batch({"x": np.arange(100)})
        target = path / relative
        target.unlink()
        os.mkfifo(target)
        with _deadline(20), pytest.raises(ShardioError, match="is a FIFO") as info:
            ds = ShardedDataset(path)
            ds.read_batch(list(range(len(ds))))
        assert "shardio reads only regular files" in str(info.value)
        refused.append(what)
    assert refused == sorted(SPECIAL)


def test_manifest_as_dev_zero_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with ShardWriter(path, format="mmap") as writer:
        writer.write_batch({"x": np.arange(10)})
    (path / "manifest.json").unlink()
    (path / "manifest.json").symlink_to("/dev/zero")
    with _deadline(20), pytest.raises(UnreadableFileError, match="character device"):
        ShardedDataset(path)


_BOMB_READ = """
import resource, sys, shardio
ds = shardio.ShardedDataset(sys.argv[1])
ds.read_batch([len(ds) - 1])  # a sound chunk first: zarr and its codecs are loaded
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    ds.read_batch([0])
    print("READ")
except shardio.ShardioError as error:
    print(type(error).__name__, error)
print("GROWTH", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def _replace_chunk(path: Path, relative: str, data: bytes) -> None:
    import json

    (path / relative).write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    shard = path / manifest["shards"][0]["path"]
    manifest["shards"][0]["nbytes"] = sum(f.stat().st_size for f in shard.rglob("*") if f.is_file())
    for key in ("checksum", "blocks"):
        manifest["shards"][0].pop(key, None)
    (path / "manifest.json").write_text(json.dumps(manifest))


def strip_zstd_content_size(frame: bytes) -> bytes:
    """The same zstd frame without its content size (as a streaming compressor writes)."""
    descriptor = frame[4]
    single = (descriptor >> 5) & 1
    start = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
    size_field = (1 if single else 0, 2, 4, 8)[descriptor >> 6]
    window = (27 - 10) << 3  # 128 MiB window: the decoder needs no more for zeros
    return frame[:4] + bytes([descriptor & 0b100, window]) + frame[start + size_field :]


#: The stated bound (docs/reliability.md): 2x the declared chunk (256 KiB here) per chunk
#: decoded, plus what a read of one chunk costs anyway; the margin is generous.
BOMB_GROWTH_LIMIT_KIB = 64 * 1024


def _bomb_dataset(tmp_path: Path, kind: str) -> Path:
    import gzip

    from numcodecs import Zstd

    path = tmp_path / kind
    with ShardWriter(path, format="zarr", compressor="gzip" if kind == "gzip" else "zstd") as w:
        w.write_batch({"x": np.arange(100_000)})
    zeros = np.zeros(1 << 30 if kind != "gzip" else 1 << 28, np.uint8)  # 1 GiB, 256 MiB
    if kind == "gzip":
        bomb = gzip.compress(zeros.tobytes(), 9)
    else:
        bomb = Zstd().encode(zeros)
        if kind == "zstd-no-size":
            bomb = strip_zstd_content_size(bomb)
    del zeros
    _replace_chunk(path, "shard-00000.zarr/x/c/0", bomb)
    return path


def test_a_zarr_chunk_bomb_is_corrupt(tmp_path: Path) -> None:
    ds = ShardedDataset(_bomb_dataset(tmp_path, "zstd-no-size"))
    with pytest.raises(ShardCorruptError, match="decodes to more than the 262144 bytes"):
        ds.read_batch([0])
    assert ds.read_batch([len(ds) - 1])["x"].tolist() == [len(ds) - 1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zstd", "zstd-no-size", "gzip"])
def test_a_zarr_chunk_bomb_fails_within_the_bound(tmp_path: Path, kind: str) -> None:
    path = _bomb_dataset(tmp_path, kind)
    out = _run(_BOMB_READ, str(path), timeout=120)
    assert "ShardCorruptError" in out and "decodes to more than the 262144 bytes" in out, out
    growth = int(out.rsplit("GROWTH", 1)[1])
    assert growth < BOMB_GROWTH_LIMIT_KIB, out


def test_absurd_chunk_and_row_declarations_are_refused(tmp_path: Path) -> None:
    import h5py
    import zarr

    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("x", shape=(100,), maxshape=(None,), chunks=(2**27,), dtype="i8")
    group = zarr.open_group(tmp_path / "rows.zarr", mode="w")
    group.create_array("x", shape=(10**12,), chunks=(1000,), dtype="i8")
    chunky = zarr.open_group(tmp_path / "chunks.zarr", mode="w")
    chunky.create_array("x", shape=(10, 8), chunks=(2**25, 8), dtype="i8")
    for name, expected in [
        ("big.h5", "declares chunks of 1073741824 bytes"),
        ("rows.zarr", "declares 1000000000000 rows"),
        ("chunks.zarr", "declares chunks of 2147483648 bytes"),
    ]:
        with pytest.raises(ShardCorruptError, match=expected):
            ShardedDataset(tmp_path / name)[0]


# ------------------------------------------------------------------ disks, descriptors
@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_shardwriter_on_a_full_disk(small_disk: Path, fmt: str) -> None:
    path = small_disk / "d"
    full = pytest.raises(OutputWriteError, match="No space left on device")
    with full as info, ShardWriter(path, format=fmt, shard_size="1MB") as writer:
        for seed in range(20):
            writer.write_batch({"x": np.random.default_rng(seed).integers(0, 2**62, (8192, 4))})
    assert "free space" in str(info.value) and "writing shard shard-" in str(info.value)
    left = sorted(os.listdir(path))
    # Whole shards stay (LMDB preallocates: its first shard already fills the disk); no
    # partial shard, temporary file or manifest does.
    assert all(n.startswith("shard-") and "partial" not in n for n in left), left


_WORKERS_UNDER_64 = """
import resource, sys, torch, shardio
torch.set_num_threads(1)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
ds = shardio.ShardedDataset(sys.argv[1], **eval(sys.argv[2]))
loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2,
                                     generator=torch.Generator().manual_seed(0))
try:
    print("READ", sum(len(batch["x"]) for batch in loader))
except shardio.ShardioError as error:
    print(type(error).__name__, str(error)[-600:])
"""


@pytest.mark.slow
def test_two_workers_over_199_mmap_shards_under_64_descriptors(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with ShardWriter(path, format="mmap", shard_size=8 * 24) as writer:
        writer.write_batch({"x": np.arange(199 * 8 * 2).reshape(-1, 2), "y": np.arange(199 * 8)})
    assert len(ShardedDataset(path).shard_lengths) == 199
    assert _run(_WORKERS_UNDER_64, str(path), "{}", timeout=120).startswith(f"READ {199 * 8}")
    out = _run(_WORKERS_UNDER_64, str(path), "{'max_open_shards': 1000}", timeout=120)
    assert "TooManyOpenFilesError" in out and "ulimit -n" in out, out
    assert "max_open_shards" in out


# ------------------------------------------------------------------- unclear errors
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_backend_refuses_the_same_dtypes_alike(tmp_path: Path, fmt: str) -> None:
    values = [np.array(["ab"]), np.array([1], dtype=np.longdouble)]
    messages = []
    for number, value in enumerate(values):
        with pytest.raises(SchemaError, match="which not every backend stores") as info:
            ShardWriter(tmp_path / f"d{number}", format=fmt).write_batch({"x": value})
        messages.append(str(info.value).split(": ", 1)[1])
    assert len(messages) == len(values) and "store it as bytes" in messages[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_backend_stores_dates_and_durations(tmp_path: Path, fmt: str) -> None:
    """datetime64 and timedelta64 (any unit, NaT, fixed and per-sample shapes) read back
    as written from every backend (HDF5 keeps int64 units, the schema the unit)."""
    n = 9
    times = np.datetime64("2001-01-01T00:00", "ns") + np.arange(n) * np.timedelta64(6, "h")
    times[3] = np.datetime64("NaT")
    columns = {
        "time": times,
        "day": np.arange(n).astype("datetime64[D]"),
        "waits": (np.arange(2 * n) * np.timedelta64(90, "s")).reshape(n, 2),
        "x": np.arange(n, dtype=np.float32),
    }
    with ShardWriter(tmp_path / "d", format=fmt, shard_size=5 * 48) as writer:
        writer.write_batch(columns)
    ds = ShardedDataset(tmp_path / "d")
    assert len(ds.shard_lengths) > 1  # across shards too
    assert ds.schema["time"].dtype == np.dtype("datetime64[ns]")
    batch = ds.read_batch([8, 3, 0, 3])
    for name, values in columns.items():
        assert batch[name].dtype == values.dtype, name
        assert np.array_equal(batch[name], values[[8, 3, 0, 3]], equal_nan=True), name
    assert np.isnat(batch["time"][1]) and ds[4]["day"] == np.datetime64("1970-01-05")
    assert verify(tmp_path / "d").ok


@pytest.mark.parametrize("fmt", FORMATS)
def test_equal_length_and_single_sample_variable_fields(tmp_path: Path, fmt: str) -> None:
    blobs = [bytes([n]) * 7 for n in range(5)]  # one length: HDF5 broadcast them as 2-D
    with ShardWriter(tmp_path / "d", format=fmt, shard_size="20B") as writer:  # 1 per shard
        for blob in blobs:
            writer.write({"jpeg": blob, "seq": np.arange(3)})
        assert writer.schema is not None
    ds = ShardedDataset(tmp_path / "d")
    assert len(ds.shard_lengths) == 5
    batch = ds.read_batch([4, 0])
    assert batch["jpeg"] == [blobs[4], blobs[0]]
    assert [s.tolist() for s in batch["seq"]] == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_inf_sizes_are_invalid_options(tmp_path: Path, value: float) -> None:
    from shardio import MemoryPolicy, ShardSampler
    from shardio.core.errors import InvalidOptionError

    with ShardWriter(tmp_path / "d", format="mmap") as writer:
        writer.write_batch({"x": np.arange(4)})
    ds = ShardedDataset(tmp_path / "d")
    attempts = [
        lambda: ShardedDataset(tmp_path / "d", max_rss=value),
        lambda: ShardWriter(tmp_path / "e", shard_size=value),
        lambda: ShardSampler(ds, window=value),
        lambda: MemoryPolicy(max_rss="1GB", reopen_every=value),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidOptionError, match="should be a finite size"):
            attempt()


def test_an_hdf5_deflate_bomb_is_corrupt_not_zeros(tmp_path: Path) -> None:
    import zlib

    import h5py

    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        data = f.create_dataset("x", shape=(4096,), chunks=(1024,), dtype="i8", compression="gzip")
        data[:] = np.arange(4096)
        data.id.write_direct_chunk((0,), zlib.compress(bytes(32 << 20), 9), filter_mask=0)
    ds = ShardedDataset(path)
    assert ds.read_batch([1030, 4095])["x"].tolist() == [1030, 4095]
    with pytest.raises(ShardCorruptError, match="inflates to more than the 8192 bytes"):
        ds.read_batch([0, 1])


_AS_NOBODY = """
import os, sys
# imported while the venv is readable
import shardio, shardio.storage.manifest, shardio.storage.adapters.mmap._adapter
from shardio import ShardedDataset, ShardioError
import shardio.loading.dataset
os.setgid(65534)
os.setuid(65534)
try:
    ShardedDataset(sys.argv[1])
except ShardioError as error:
    print(type(error).__name__, error)
"""


@pytest.mark.slow  # runs a child as another user
def test_an_unreadable_manifest_is_a_shardio_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to read as another user (root reads any file)")
    root = Path(tempfile.mkdtemp(prefix="unreadable-", dir="/tmp"))
    try:
        root.chmod(0o755)
        path = root / "d"
        with ShardWriter(path, format="mmap") as writer:
            writer.write_batch({"x": np.arange(4)})
        path.chmod(0o755)
        (path / "manifest.json").chmod(0)
        out = _run(_AS_NOBODY, str(path))
        assert out.startswith("UnreadableFileError cannot read"), out
        assert "permission denied" in out
    finally:
        shutil.rmtree(root)


def test_a_huge_zarr_json_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with ShardWriter(path, format="zarr") as writer:
        writer.write_batch({"x": np.arange(10)})
    shard = path / "shard-00000.zarr"
    os.truncate(shard / "x" / "zarr.json", 200 << 20)  # sparse: no 200 MB written
    with pytest.raises(ShardCorruptError, match="more than any metadata file can"):
        ShardedDataset(shard)[0]
