"""Conversion: any readable dataset into a sharded dataset directory, and verification.

``shardio.convert(src, dst, format=...)`` converts; ``shardio.verify(path)`` checks a
dataset against its checksums and, with ``against=``, every sample against a source.
Conversion imports no torch: it runs on CPU machines without paying for it.

NOTE: ``shardio.convert`` is both this package and the function users call. Importing
a submodule binds the package to the ``shardio.convert`` attribute, so the package
module itself is made callable (``__call__`` is `convert`): ``shardio.convert(...)``
and ``from shardio.convert import convert`` both work, whichever import came first.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .check import Problem, VerifyReport, verify
from .converter import ConvertResult, convert
from .plan import Plan, ShardTask, make_plan
from .source import ReaderSource, Skipped, Source, open_source

__all__ = [
    "convert",
    "verify",
    "ConvertResult",
    "VerifyReport",
    "Problem",
    "Plan",
    "ShardTask",
    "make_plan",
    "Source",
    "ReaderSource",
    "Skipped",
    "open_source",
]


class _CallableModule(types.ModuleType):
    """This package, callable as `convert`."""

    def __call__(self, *args: Any, **kwargs: Any) -> ConvertResult:
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
