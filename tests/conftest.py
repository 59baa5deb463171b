from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/groundtruth.py for spawned workers

from groundtruth import SOURCES, Truth


@pytest.fixture(params=sorted(SOURCES))
def truth(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Truth:
    """Each ground-truth dataset, written without shardio (see groundtruth.py)."""
    directory = tmp_path_factory.mktemp(request.param)
    return SOURCES[request.param](str(directory))
