"""The saved position of a :class:`ShardSampler`, and the checks on loading it.

A state records where in an epoch this rank's order stands, plus every setting the
order depends on. Loading a state into a sampler whose order would differ (another
dataset, world size, seed, window, ...) raises instead of silently resuming
somewhere else.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InvalidOptionError

__all__ = ["STATE_VERSION", "SamplerState"]

STATE_VERSION = 1


@dataclass(frozen=True)
class SamplerState:
    """Position (``epoch``, ``offset``) and the settings that fix the order."""

    epoch: int
    offset: int  # indices of this rank's epoch order already consumed
    dataset_len: int
    world_size: int
    drop_last: bool
    partition: str
    order: str
    seed: int
    window: int
    layout: str  # ShardLayout.fingerprint()
    digest: str  # orders.order_digest() of the epoch's global order, "" if not computed

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of ints, bools and strings: safe for torch.save and JSON."""
        return {"version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> SamplerState:
        """Parse a dict made by :meth:`to_dict`, with a clear error for anything else."""
        if not isinstance(state, Mapping):
            raise InvalidOptionError(
                "state should be a dict from ShardSampler.state_dict(), "
                f"but got {type(state).__name__}"
            )
        if state.get("version") != STATE_VERSION:
            raise InvalidOptionError(
                f"state should have version {STATE_VERSION} (from ShardSampler.state_dict()), "
                f"but got version={state.get('version')!r}"
            )
        missing = [f.name for f in fields(cls) if f.name not in state]
        if missing:
            raise InvalidOptionError(
                f"state is missing {', '.join(missing)}: it does not come from "
                "ShardSampler.state_dict()"
            )
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = state[f.name]
            try:
                if f.type == "int":
                    value = operator.index(value)
                elif f.type == "bool":
                    value = bool(operator.index(value))
                elif not isinstance(value, str):
                    raise TypeError
            except TypeError:
                raise InvalidOptionError(
                    f"state[{f.name!r}] should be of type {f.type}, but got {value!r}"
                ) from None
            values[f.name] = value
        return cls(**values)

    def mismatches(self, current: SamplerState) -> list[str]:
        """The settings that differ from ``current`` and change the order, as messages."""
        compared = ["dataset_len", "world_size", "drop_last", "partition", "order"]
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
