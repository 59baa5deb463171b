"""Fixtures of the storage tests: a moto S3 server and a fault proxy in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def s3(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A moto S3 server on 127.0.0.1 holding the test module's `BUCKET`."""
    from shardio.tools.testing.objectstore import s3_server

    with s3_server(request.module.BUCKET) as server:
        yield server


@pytest.fixture
def proxy(s3: Any) -> Iterator[Any]:
    """A fault proxy (latency, bandwidth, 503s, drops) in front of `s3`."""
    from shardio.tools.testing.objectstore import proxy_for

    found = proxy_for(s3)
    yield found
    found.close()
