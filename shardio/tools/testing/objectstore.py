"""A real S3 API server (moto's server mode) on 127.0.0.1 and a small proxy in front of it
that behaves like a slow, flaky object store: it adds latency per request, caps the
bandwidth of responses, answers 503 SlowDown, drops connections mid-response, freezes,
and counts the GETs of each object (tests and benchmarks/bench_remote.py use it).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultProxy", "S3Server", "proxy_for", "s3_server", "serve"]

_REQUEST = re.compile(rb"^(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.[01]\r\n")


def _error_response(status: str, code: str, message: str) -> bytes:
    """A whole S3 error response that closes the connection."""
    body = (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>\n"
    ).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_SLOWDOWN = _error_response("503 Slow Down", "SlowDown", "Reduce your rate")
_FORBIDDEN = _error_response("403 Forbidden", "AccessDenied", "Access Denied")


@dataclass
class S3Server:
    """A moto server's endpoint and client options for a bucket on it."""

    endpoint: str
    bucket: str
    server: Any = None

    def options(self, endpoint: str | None = None, **config: Any) -> dict[str, Any]:
        """s3fs storage_options for ``endpoint`` (the server's own by default)."""
        options: dict[str, Any] = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {
                "endpoint_url": endpoint or self.endpoint,
                "region_name": "us-east-1",
            },
        }
        if config:
            options["config_kwargs"] = config
        return options

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def upload(self, local: str, key: str) -> str:
        """Upload a file or directory tree to ``key``; returns its ``s3://`` URL."""
        client = self.client()
        if os.path.isdir(local):
            for directory, _, names in os.walk(local):
                for name in names:
                    path = os.path.join(directory, name)
                    client.upload_file(path, self.bucket, f"{key}/{os.path.relpath(path, local)}")
        else:
            client.upload_file(local, self.bucket, key)
        return f"s3://{self.bucket}/{key}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@contextlib.contextmanager
def s3_server(bucket: str = "shardio-test") -> Iterator[S3Server]:
    """A moto S3 server in this process (threads) on 127.0.0.1 with ``bucket`` made."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    found = S3Server(f"http://{host}:{port}", bucket, server)
    try:
        found.client().create_bucket(Bucket=bucket)
        yield found
    finally:
        server.stop()


@dataclass
class FaultProxy:
    """A TCP proxy to ``upstream`` (host, port) with faults set by its attributes.

    ``latency_s`` before each request is passed on; ``bandwidth`` (bytes/s, shared by
    all connections; 0: none) caps responses; ``slowdown`` requests are answered 503
    SlowDown; ``forbidden`` GETs of objects are answered 403 AccessDenied; ``drops``
    responses are cut after ``drop_after`` bytes; ``frozen`` accepts and never
    answers. ``gets`` counts GETs by path (query strings dropped)."""

    upstream: tuple[str, int]
    latency_s: float = 0.0
    bandwidth: float = 0.0
    slowdown: int = 0
    forbidden: int = 0
    drops: int = 0
    drop_after: int = 1024
    frozen: bool = False
    gets: Counter[str] = field(default_factory=Counter)
    #: Requests by (method, path), query strings dropped.
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    requests: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = 0.0  # bytes through the bandwidth cap
        self._since = time.monotonic()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def object_gets(self, prefix: str) -> Counter[str]:
        """GETs of object paths starting with ``prefix`` (listings excluded)."""
        with self._lock:
            return Counter({k: v for k, v in self.gets.items() if k.startswith(prefix)})

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()

    # ------------------------------------------------------------------ relay
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        state = {"cut": -1}  # bytes of the current response left before a drop
        threading.Thread(
            target=self._responses, args=(upstream, client, state), daemon=True
        ).start()
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                match = _REQUEST.match(data)
                if match is not None:
                    if self.frozen:
                        time.sleep(3600)
                    method, path = match.group(1), match.group(2).split(b"?", 1)[0]
                    query = b"?" in match.group(2)
                    object_get = method == b"GET" and not query
                    with self._lock:
                        self.requests += 1
                        if object_get:
                            self.gets[path.decode()] += 1
                        self.calls[(method.decode(), path.decode())] += 1
                        slow = self.slowdown > 0
                        if slow:
                            self.slowdown -= 1
                        denied = not slow and object_get and self.forbidden > 0
                        if denied:
                            self.forbidden -= 1
                        # A request answered here is not relayed: it cuts no response.
                        drop = not (slow or denied) and object_get and self.drops > 0
                        if drop:
                            self.drops -= 1
                    if slow or denied:
                        client.sendall(_SLOWDOWN if slow else _FORBIDDEN)
                        break
                    state["cut"] = self.drop_after if drop else -1
                    if self.latency_s:
                        time.sleep(self.latency_s)
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _responses(self, upstream: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if state["cut"] >= 0:
                    if len(data) >= state["cut"]:
                        client.sendall(data[: state["cut"]])
                        raise OSError("dropped by the fault proxy")
                    state["cut"] -= len(data)
                self._throttle(len(data))
                client.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _throttle(self, nbytes: int) -> None:
        if not self.bandwidth:
            return
        with self._lock:
            now = time.monotonic()
            # the cap's clock never runs more than 0.1 s behind: no saved-up bursts
            self._since = max(self._since, now - 0.1)
            self._since += nbytes / self.bandwidth
            wait = self._since - now
        if wait > 0:
            time.sleep(wait)


def proxy_for(server: S3Server, **faults: Any) -> FaultProxy:
    """A `FaultProxy` in front of ``server``."""
    host, port = server.endpoint.removeprefix("http://").split(":")
    return FaultProxy((host, int(port)), **faults)


def serve(bucket: str, bandwidth: float, latency_s: float) -> None:
    """Run a moto server and a proxy in front of it until killed (a process of its own,
    so a benchmark's reads do not share its interpreter): prints one JSON line with
    ``server`` and ``proxy`` endpoints."""
    import json
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with s3_server(bucket) as server:
        proxy = proxy_for(server, bandwidth=bandwidth, latency_s=latency_s)
        print(json.dumps({"server": server.endpoint, "proxy": proxy.endpoint}), flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    import sys

    serve(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
