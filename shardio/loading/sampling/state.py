"""The saved position of a `ShardSampler`, and the checks on loading it.

A state records where in an epoch the job stands, plus every setting the epoch's
order depends on. Position: the runs of the epoch's order consumed before the
current pass (``consumed_runs``) and how many indices of its share each rank has
consumed in that pass (``offset``), at the pass's ``world_size``. That is a few
numbers per rank, never a list of indices, so any world size can work out the rest.

Loading a state into a sampler whose order would differ (another dataset, seed,
window, ...) raises `StateMismatchError` instead of
silently resuming somewhere else.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

from shardio.core.errors import InvalidOptionError

from .mixstate import KIND as MIX_KIND

__all__ = ["STATE_VERSION", "SamplerState", "find_sampler_state"]

STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1: the same without consumed_runs


@dataclass(frozen=True)
class SamplerState:
    """Position (``epoch``, ``consumed_runs``, ``offset``) and the settings that fix the order."""

    epoch: int
    offset: int  # indices of each rank's share consumed in the current pass
    dataset_len: int
    world_size: int  # of the current pass
    drop_last: bool
    partition: str
    order: str
    seed: int
    window: int
    layout: str  # ShardLayout.fingerprint()
    digest: str  # orders.order_digest() of the epoch's global order, "" if not computed
    #: Flat ``[start0, stop0, start1, stop1, ...]``: positions of the epoch's order
    #: consumed before the current pass began (by passes at other world sizes).
    consumed_runs: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of ints, bools, strings and a list of ints: safe for torch.save
        and JSON."""
        # Not dataclasses.asdict: it deep-copies every value, and StatefulDataLoader
        # asks for a state at every batch.
        state = {"version": STATE_VERSION, **{name: getattr(self, name) for name in _FIELDS}}
        state["consumed_runs"] = list(self.consumed_runs)
        return state

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> SamplerState:
        """Parse a dict made by `to_dict`, with a clear error for anything else."""
        if not isinstance(state, Mapping):
            raise InvalidOptionError(
                "state should be a dict from ShardSampler.state_dict(), "
                f"but got {type(state).__name__}"
            )
        version = state.get("version")
        # NOTE: True == 1 in Python, so a membership test alone would take True as 1.
        if type(version) is not int or version not in _READABLE_VERSIONS:
            raise InvalidOptionError(
                f"state should have version {STATE_VERSION} (from ShardSampler.state_dict()), "
                f"but got version={version!r}"
            )
        optional = {"consumed_runs"}
        missing = [f.name for f in fields(cls) if f.name not in state and f.name not in optional]
        if missing:
            raise InvalidOptionError(
                f"state is missing {', '.join(missing)}: it does not come from "
                "ShardSampler.state_dict()"
            )
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in state:
                continue
            values[f.name] = _parse(f.name, str(f.type), state[f.name])
        return cls(**values)

    def mismatches(self, current: SamplerState) -> list[str]:
        """The settings that differ from ``current`` and change the order, as messages.

        The world size is not one: a state resumes at any world size.
        """
        compared = ["dataset_len", "drop_last", "partition", "order"]
        if current.order != "sequential":
            compared.append("seed")
        if current.order == "shard-window":
            compared += ["window", "layout"]
        names = {"layout": "shard layout"}
        return [
            f"{names.get(name, name)}={getattr(self, name)!r} (this sampler has "
            f"{getattr(current, name)!r})"
            for name in compared
            if getattr(self, name) != getattr(current, name)
        ]


_FIELDS = tuple(f.name for f in fields(SamplerState))


def _parse(name: str, kind: str, value: Any) -> Any:
    try:
        if kind == "int":
            if isinstance(value, bool):  # an int to operator.index, never a count
                raise TypeError
            return operator.index(value)
        if kind == "bool":
            return bool(operator.index(value))
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        # consumed_runs: an even number of integers >= 0, ascending
        runs = tuple(operator.index(item) for item in value)
    except TypeError:
        raise InvalidOptionError(
            f"state[{name!r}] should be of type {kind}, but got {value!r}"
        ) from None
    if len(runs) % 2 or any(b < a for a, b in pairwise(runs)) or min(runs, default=0) < 0:
        raise InvalidOptionError(
            f"state[{name!r}] should be ascending [start, stop] pairs of positions >= 0, "
            f"but got {value!r}"
        )
    return runs


def find_sampler_state(state: Any) -> dict[str, Any]:
    """The `ShardSampler` or `MixSampler` state inside a bigger state, e.g. a torchdata
    ``StatefulDataLoader.state_dict()`` or a framework's checkpoint, to resume with
    another number of workers.

    Raises `InvalidOptionError` when there is none, or more than one
    differing state (two samplers).
    """
    found: list[dict[str, Any]] = []
    _collect(state, found)
    distinct = {repr(sorted(s.items())): s for s in found}
    if len(distinct) != 1:
        what = "no" if not distinct else f"{len(distinct)} different"
        raise InvalidOptionError(
            f"state should hold exactly one ShardSampler or MixSampler state, but it holds "
            f"{what} (look for a dict with the keys 'version', 'epoch', 'offset' and 'digest', "
            f"or with kind={MIX_KIND!r})"
        )
    return next(iter(distinct.values()))


_SHARD_KEYS = frozenset({"version", "epoch", "offset", "digest", "layout"})


def _collect(value: Any, found: list[dict[str, Any]]) -> None:
    if isinstance(value, Mapping):
        if value.get("kind") == MIX_KIND or set(value) >= _SHARD_KEYS:
            found.append(dict(value))
            return
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(item, found)
