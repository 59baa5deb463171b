"""The netCDF3 backend against the conformance suite, on a file scipy wrote."""

from __future__ import annotations

import pytest

from shardio.tools.testing import AdapterTests, Truth
from shardio.tools.testing.groundtruth import netcdf3_truth


class TestNetCDF3(AdapterTests):
    def write_truth(self, directory: str) -> Truth:
        return netcdf3_truth(directory)

    # A spawned interpreter takes seconds; tests/storage/test_scifiles.py runs spawned
    # workers on netCDF3 files too, also marked slow.
    @pytest.mark.slow
    def test_spawned_worker_reads_fixed_fields(self, written: Truth) -> None:
        super().test_spawned_worker_reads_fixed_fields(written)
