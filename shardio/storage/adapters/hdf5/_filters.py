"""HDF5 filter plugins: loaded when a dataset needs one, named with advice when missing.

Reading and conversion call `missing_filters` (discovery) and `load_filters`
(each process that opens a file), so hdf5plugin's filters load for both alike.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import h5py

from shardio.core.errors import UnsupportedFeatureError

__all__ = ["filter_advice", "load_filters", "missing_filters"]

# Filters every HDF5 library has built in: deflate, shuffle, fletcher32, szip, nbit, scaleoffset.
_BUILTIN_FILTERS = frozenset({1, 2, 3, 4, 5, 6})
# Filter ids registered with The HDF Group that hdf5plugin provides, for error messages.
_PLUGIN_NAMES = {
    307: "bzip2",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32013: "zfp",
    32015: "zstd",
    32017: "sz",
    32018: "fcidecomp",
    32024: "sz3",
    32026: "blosc2",
}
# Filters hdf5plugin does not have (PyTables bundles LZO with its own HDF5 library).
_OTHER_FILTERS = {305: "lzo"}
_PLUGIN_ADVICE = (
    "pip install hdf5plugin (or shardio[hdf5plugin]), or point HDF5_PLUGIN_PATH at the filter"
)
_NO_PLUGIN_ADVICE = (
    "hdf5plugin has no such filter: point HDF5_PLUGIN_PATH at a build of it, or rewrite "
    "the file without it (PyTables: ptrepack --complib=blosc:zstd)"
)


@functools.lru_cache(maxsize=1)
def _import_plugins() -> bool:
    """Register hdf5plugin's filters with HDF5, if the package is installed."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        return False
    return True


def _filters(dataset: h5py.Dataset) -> dict[int, bytes]:
    try:
        plist = dataset.id.get_create_plist()
        found = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    except Exception:  # not every dataset layout has a filter pipeline to query
        return {}
    return {int(f[0]): f[3] for f in found}


def missing_filters(dataset: h5py.Dataset) -> list[str]:
    """The filters of ``dataset`` HDF5 cannot apply, after loading hdf5plugin's when
    one is needed (``"32001 (blosc)"``); empty when the dataset reads."""
    codes = _filters(dataset)
    if any(c not in _BUILTIN_FILTERS for c in codes):
        _import_plugins()
    return [f"{c} ({_filter_name(c, codes[c])})" for c in codes if not h5py.h5z.filter_avail(c)]


def _filter_name(code: int, stored: bytes) -> str:
    known = _PLUGIN_NAMES.get(code) or _OTHER_FILTERS.get(code)
    return known or stored.decode(errors="replace") or "unknown"


def filter_advice(missing: Iterable[str]) -> str:
    """What to do about filters named by `missing_filters`, said once."""
    codes = {int(m.split(" ", 1)[0]) for m in missing}
    if codes and all(c in _OTHER_FILTERS or c not in _PLUGIN_NAMES for c in codes):
        if not _import_plugins():
            return f"{_PLUGIN_ADVICE}, if it has the filter"
        return _NO_PLUGIN_ADVICE
    return _PLUGIN_ADVICE


def load_filters(datasets: Iterable[h5py.Dataset], where: str) -> None:
    """Load the filter plugins ``datasets`` need; raise naming any that is missing."""
    missing = {d.name: m for d in datasets if (m := missing_filters(d))}
    if missing:
        listing = "; ".join(f"{n!r} uses {', '.join(m)}" for n, m in missing.items())
        advice = filter_advice(f for m in missing.values() for f in m)
        raise UnsupportedFeatureError(f"{where}: HDF5 filter not available: {listing}; {advice}")
