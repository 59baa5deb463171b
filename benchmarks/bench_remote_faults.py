"""Time from a remote read to its RemoteReadError with shardio's default timeouts, for
an S3 server (moto, a separate process) killed (SIGKILL) or frozen (SIGSTOP).

    python benchmarks/bench_remote_faults.py

The stated bound (docs/remote.md) with the defaults is 33 s per failing request.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import boto3
import h5py
import numpy as np

import shardio
from shardio import ShardWriter

BUCKET = "faults"


def _server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _upload(endpoint: str, local: str, key: str) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="t",
        aws_secret_access_key="t",
    )
    client.create_bucket(Bucket=BUCKET)
    if os.path.isfile(local):
        client.upload_file(local, BUCKET, key)
        return
    for directory, _, names in os.walk(local):
        for name in names:
            path = os.path.join(directory, name)
            client.upload_file(path, BUCKET, f"{key}/{os.path.relpath(path, local)}")


def measure(kind: str, how: str, workdir: str) -> tuple[float, str]:
    """Seconds from the read after the fault to its error, and the error's class."""
    process, endpoint = _server()
    try:
        local = os.path.join(workdir, f"{kind}-{how}")
        if kind == "zarr":
            with ShardWriter(local, format="zarr", shard_size="1KB") as writer:
                writer.write_batch({"x": np.zeros((400, 4), np.float32)})
        else:
            local += ".h5"
            with h5py.File(local, "w") as file:
                file["x"] = np.zeros((4096, 64), np.int64)
        url = f"s3://{BUCKET}/{os.path.basename(local)}"
        _upload(endpoint, local, os.path.basename(local))
        options = {
            "key": "t",
            "secret": "t",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            "default_block_size": 4096,
        }
        ds = shardio.ShardedDataset(url, storage_options=options)
        ds.read_batch([0])
        process.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        started = time.monotonic()
        try:
            ds.read_batch([len(ds) - 1])
            raise AssertionError("the read after the fault succeeded")
        except shardio.RemoteReadError as exc:
            return time.monotonic() - started, type(exc.__cause__).__name__
        finally:
            ds.close()
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        print("| data | fault | seconds to RemoteReadError | cause |")
        print("|---|---|---|---|")
        for kind in ("zarr", "hdf5"):
            for how in ("kill", "stop"):
                seconds, cause = measure(kind, how, workdir)
                print(f"| {kind} | {how} | {seconds:.1f} | {cause} |", flush=True)


if __name__ == "__main__":
    main()
