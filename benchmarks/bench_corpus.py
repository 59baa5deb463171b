"""How many scientists' files open with defaults: the corpus table of issue 28.

Every file of the test corpus (tests/scifiles.py: files written here by xarray, netCDF4,
scipy, h5netcdf, anndata, astropy and h5py; tests/scishipped.py: real files that h5py,
nibabel (MINC1, MINC2), astropy, xarray and scipy (netCDF3, MATLAB v7.3) ship) is opened
with no options, read whole, compared with its producer's own reader (as stored, and
decoded with ``decode_cf=True`` where the file carries CF or MINC scaling), converted to
LMDB and verified. Prints one row per file and "N of M open with defaults".

    PYTHONPATH=. python benchmarks/bench_corpus.py            # the table (about 30 s)
    PYTHONPATH=. python benchmarks/bench_corpus.py --quick    # the first file of each kind
    PYTHONPATH=. python benchmarks/bench_corpus.py --record   # also into RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from typing import Any

import numpy as np

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

from _common import command_line, load_line, markdown_table, replace_section
from scifiles import CORPUS, SciFile, available, start_netcdf4_files

import shardio


def same(got: dict[str, Any], truth: dict[str, Any]) -> str:
    """ "" when every field of ``truth`` is in ``got`` with equal values (native byte
    order), else what differs."""
    for name, expected in truth.items():
        if name not in got:
            return f"no field {name!r}"
        if isinstance(expected, list):
            if list(got[name]) != expected:
                return f"{name!r} differs"
            continue
        value = np.asarray(got[name])
        if value.dtype != expected.dtype.newbyteorder("="):
            return f"{name!r} is {value.dtype}, its producer reads {expected.dtype}"
        if not np.array_equal(value, expected, equal_nan=value.dtype.kind in "fcmM"):
            return f"{name!r} values differ"
    return ""


def check(sci: SciFile, directory: str) -> tuple[list[str], str]:
    """(the row's cells, the first failure or "") for one file."""
    path = sci.write(directory)
    cells, failure = [], ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps: list[tuple[str, Any]] = [("raw", lambda: _read(path, sci, False))]
        if sci.decodes:
            steps.append(("decoded", lambda: _read(path, sci, True)))
        steps.append(("converts", lambda: _convert(path, directory, sci.name)))
        for _, step in steps:
            try:
                problem = step()
            except shardio.ShardioError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            cells.append("yes" if not problem else "no")
            failure = failure or problem
    if not sci.decodes:
        cells.insert(1, "-")
    return cells, failure


def _read(path: str, sci: SciFile, decoded: bool) -> str:
    ds = shardio.ShardedDataset(path, decode_cf=decoded)
    truth = sci.truth(path, decoded)
    problem = same(ds.read_batch(np.arange(len(ds))), truth)
    left = [name for name in truth if name not in ds.fields]
    if left:  # left out by the defaults: asking for it says why
        try:
            shardio.ShardedDataset(path, fields=left[:1])
        except shardio.ShardioError as exc:
            return f"{left[0]!r} left out: {exc}"
    return problem


def _convert(path: str, directory: str, name: str) -> str:
    out = os.path.join(directory, f"{name}.shardio")
    shardio.convert(path, out, format="lmdb")
    return "" if shardio.verify(out, against=path).ok else "verify found differences"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one file per producer")
    parser.add_argument("--record", action="store_true", help="write RESULTS.md's section")
    args = parser.parse_args()
    corpus = [f for f in CORPUS if available(f)]
    missing = [f.name for f in CORPUS if not available(f)]
    if args.quick:  # the first file of each producing library
        seen: set[str] = set()
        kinds = [f.producer.split()[0] for f in corpus]
        corpus = [f for f, k in zip(corpus, kinds, strict=True) if not (k in seen or seen.add(k))]
    rows, opened = [], 0
    with tempfile.TemporaryDirectory() as directory:
        start_netcdf4_files(directory)
        for sci in corpus:
            cells, failure = check(sci, directory)
            opened += not failure
            failure = failure.replace(directory + os.sep, "")  # the file's name is the row's
            rows.append([sci.name, sci.producer, *cells, failure[:200].replace("|", "/")])
            print(f"{'ok  ' if not failure else 'FAIL'} {sci.name}: {failure}", flush=True)
    table = markdown_table(
        ["file", "written by", "opens, equal", "decode_cf equal", "converts", "why not"], rows
    )
    summary = (
        f"{opened} of {len(corpus)} open with defaults, read their producers' values, "
        "and convert and verify"
        + (
            f" ({len(missing)} skipped, producer not installed: {', '.join(missing)})"
            if missing
            else ""
        )
    )
    print(table, summary, sep="\n\n")
    if args.record:
        body = (
            f"`{command_line()}`, load average {load_line()} (a count, not a timing: the "
            "load does not change it). A file counts when it opens with no options, every "
            "field its producer's reader reads is there with equal values (and decodes "
            "as its producer decodes, where it carries CF or MINC scaling), and it "
            f"converts to LMDB and verifies.\n\n{table}\n\n{summary}.\n"
        )
        replace_section("Scientists' files open with defaults (issue 28)", body)


if __name__ == "__main__":
    main()
