"""Which of a file's arrays become fields: one rule for every format that holds arrays.

HDF5 (``_hdf5_discovery``), Zarr groups and netCDF3 files each list their arrays as
candidates (a name, its first-axis length and, where the file names it, its first
dimension); this module picks the ones read together and words what was left out.

- ``dim=`` picks the arrays whose first dimension has that name.
- AnnData (``.h5ad`` or Zarr; old layouts without an ``encoding-type`` too): X with
  obs, obsm and layers, one sample per cell.
- Otherwise the largest set sharing a first axis (dimension name and length) wins;
  ties go to the longer axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from shardio.core.errors import FieldNotFoundError

from .source import Skipped

__all__ = [
    "Candidate",
    "Choice",
    "axis_reason",
    "choose",
    "chosen_line",
    "fields_hint",
    "is_anndata",
    "is_anndata_obs",
    "left_out_line",
    "together",
]

#: Names listed in a one-line summary before "and N more".
_LISTED = 8


class Candidate(Protocol):
    """An array that may become a field."""

    name: str  # the field name
    dataset: str  # the array it is read from (compound members share one)
    rows: int  # first-axis length
    axis: str  # first dimension's name where the file names it, else ""


C = TypeVar("C", bound=Candidate)


@dataclass(eq=False)
class Choice:
    """A plain `Candidate` for backends without a record of their own."""

    name: str
    dataset: str
    rows: int
    axis: str = ""


def is_anndata(encoding: str | None, top: Iterable[str]) -> bool:
    """An AnnData file or store: marked so (``encoding-type``), or the layout AnnData
    wrote before it marked files (``X``, ``obs`` and ``var`` at the top)."""
    return encoding == "anndata" or {"X", "obs", "var"} <= set(top)


def is_anndata_obs(name: str) -> bool:
    """AnnData objects with one row per cell (X, obs, obsm, layers), not obsp (cell x cell)."""
    top = name.split("/", 1)[0]
    return name == "X" or top in ("obs", "obsm", "layers")


def choose(
    path: str, entries: Sequence[C], dim: str | None, layout: str
) -> tuple[list[C], list[C]]:
    """The entries to read (one first axis) and those left out."""
    if dim is not None:
        chosen = [e for e in entries if e.axis == dim]
        if not chosen:
            dims = sorted({e.axis for e in entries if e.axis})
            raise FieldNotFoundError(
                f"{path}: no array has dimension {dim!r} first (dim=, --dim); "
                + (
                    f"first dimensions in the file are {dims}"
                    if dims
                    else "the file names no dimensions"
                )
            )
        return chosen, [e for e in entries if e.axis != dim]
    if layout == "anndata":
        obs = [e for e in entries if is_anndata_obs(e.name)]
        x = [e for e in obs if e.name == "X"]
        if obs:
            rows = (x or obs)[0].rows
            chosen = [e for e in obs if e.rows == rows]
            return chosen, _others(entries, chosen)
    groups: dict[tuple[str, int], list[C]] = {}
    for entry in entries:
        groups.setdefault((entry.axis, entry.rows), []).append(entry)
    key = max(groups, key=lambda k: (len({e.dataset for e in groups[k]}), k[1]))
    chosen = groups[key]
    return chosen, _others(entries, chosen)


def _others(entries: Sequence[C], chosen: list[C]) -> list[C]:
    taken = {id(e) for e in chosen}
    return [e for e in entries if id(e) not in taken]


def axis_reason(entry: Candidate, chosen: Candidate, layout: str) -> str:
    """Why ``entry`` was left out when ``chosen``'s axis was read."""
    if layout == "anndata" and entry.rows == chosen.rows:
        return "is not one row per cell (AnnData: only X, obs, obsm and layers are)"
    if entry.axis and entry.axis != chosen.axis:
        return f"has dimension {entry.axis!r} first, not {chosen.axis!r}"
    return f"has {entry.rows} rows, not {chosen.rows}"


def chosen_line(path: str, chosen: Sequence[Candidate], layout: str) -> str:
    """One line naming what was read."""
    axis = f"dimension {chosen[0].axis!r}" if chosen[0].axis else f"{chosen[0].rows} rows"
    what = {"anndata": "AnnData: X with obs, obsm and layers, one sample per cell; "}.get(
        layout, ""
    )
    names = _names([e.name for e in chosen])
    return f"{path}: {what}read {len(chosen)} field(s) along {axis}: {names}"


def left_out_line(path: str, left: Sequence[Skipped], example: Sequence[str]) -> str:
    """One line naming what was left out and how to pick other arrays."""
    return f"{path}: left out {_listing(left)}. To read others, pass {fields_hint(example)}"


def together(others: Sequence[Candidate]) -> list[str]:
    """Names of left-out arrays that can be read together (those sharing the first
    one's axis), so that a hint naming them works when pasted."""
    if not others:
        return []
    first = others[0]
    return [e.name for e in others if (e.axis, e.rows) == (first.axis, first.rows)]


def fields_hint(names: Sequence[str]) -> str:
    """The option and the flag, as they are typed: ``fields=['a', 'b'] (--fields a,b)``."""
    shown = list(names[:2]) or ["NAME"]
    return f"fields={shown!r} (--fields {','.join(shown)})"


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _listing(left: Sequence[Skipped]) -> str:
    shown = ", ".join(f"{s.name!r} ({_short(s.reason)})" for s in left[:_LISTED])
    more = f" and {len(left) - _LISTED} more" if len(left) > _LISTED else ""
    return f"{len(left)} array(s): {shown}{more}"


def _short(reason: str) -> str:
    reason = reason.removeprefix("is ").removeprefix("has ")
    return reason if len(reason) <= 80 else reason[:77].rstrip() + "..."
