"""A conformance harness for shardio's storage adapters (imported by tests only).

Subclass `AdapterTests` once per backend, or per kind of file a backend reads,
and implement `AdapterTests.write_truth`: write a dataset WITHOUT shardio (with
the backend's own library, following docs/format.md) and return what it must read back
as. pytest collects every check of the class for it. `shardio.tools.testing.groundtruth`
holds the ground truths of the backends shardio ships. Needs pytest and torch; no
shardio module imports this package.
"""

from .adapter import AdapterTests, assert_sample_equal
from .groundtruth import SOURCES, Truth

__all__ = ["AdapterTests", "SOURCES", "Truth", "assert_sample_equal"]
