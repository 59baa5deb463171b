"""The saved position of a `MixSampler`: O(sources) numbers, and the checks on loading it.

The mixture order is consumed as a prefix (ranks take every ``world_size``-th
position), so the position is one number after an *anchor*: how many samples of each
source the mixture had read where the current weights took effect. From that, each
source's epoch and place in its own order is arithmetic (see `shardio.loading.sampling.mixture`).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from shardio.core.errors import InvalidOptionError

__all__ = ["MIX_STATE_VERSION", "MixState"]

MIX_STATE_VERSION = 1
KIND = "shardio.MixSampler"


@dataclass(frozen=True)
class MixState:
    """Where a mixture stands and the settings that fix its order."""

    epoch: int
    position: int  # mixture positions consumed after the anchor
    pass_stop: int  # where the current epoch's pass ends (after the anchor); -1: not begun
    anchor: tuple[int, ...]  # samples of each source read before the anchor
    weights: tuple[float, ...]  # in effect from the anchor on
    names: tuple[str, ...]
    lengths: tuple[int, ...]
    layouts: tuple[str, ...]  # ShardLayout.fingerprint() of each source
    seed: int
    order: str
    window: int
    exhausted: str
    samples_per_epoch: int
    world_size: int  # of the run that saved it (for reading; a state resumes at any)
    #: Per source, ``"epoch:digest"`` of the order it was reading (``orders.order_digest``),
    #: or ``""`` where it had not built one: a resume checks it sees the same orders.
    digests: tuple[str, ...] = ()
    #: Samples each rank consumed in this epoch before ``position`` (what a framework's
    #: checkpoint counts as done): ``len(sampler)`` stays the whole epoch's on resume.
    done: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain ints, floats, strings and lists: safe for torch.save and JSON."""
        state: dict[str, Any] = {"version": MIX_STATE_VERSION, "kind": KIND}
        for f in fields(self):
            value = getattr(self, f.name)
            state[f.name] = list(value) if isinstance(value, tuple) else value
        return state

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> MixState:
        """Parse `to_dict`'s dict, with a clear error for anything else."""
        if not isinstance(state, Mapping) or state.get("kind") != KIND:
            raise InvalidOptionError(
                "state should be a dict from MixSampler.state_dict() (with kind="
                f"{KIND!r}), but got {_describe(state)}"
            )
        if state.get("version") != MIX_STATE_VERSION:
            raise InvalidOptionError(
                f"state should have version {MIX_STATE_VERSION} (from MixSampler.state_dict()), "
                f"but got version={state.get('version')!r}"
            )
        optional = {"digests", "done"}
        missing = [f.name for f in fields(cls) if f.name not in state and f.name not in optional]
        if missing:
            raise InvalidOptionError(
                f"state is missing {', '.join(missing)}: it does not come from "
                "MixSampler.state_dict()"
            )
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in state:
                values[f.name] = _parse(f.name, str(f.type), state[f.name])
        parsed = cls(**values)
        count = len(parsed.names)
        for name in ("anchor", "weights", "lengths", "layouts", "digests"):
            if name == "digests" and not parsed.digests:
                continue
            if len(getattr(parsed, name)) != count:
                raise InvalidOptionError(
                    f"state[{name!r}] should have one entry per source ({count}), "
                    f"but got {len(getattr(parsed, name))}"
                )
        if parsed.position < 0 or parsed.done < 0 or min(parsed.anchor, default=0) < 0:
            raise InvalidOptionError(
                "state['position'], state['done'] and state['anchor'] should be >= 0, but got "
                f"position={parsed.position}, done={parsed.done}, anchor={list(parsed.anchor)}"
            )
        return parsed

    def mismatches(self, current: MixState) -> list[str]:
        """What differs from ``current`` and would change the order, as messages.

        Not the weights (new weights apply from the saved position) nor the world size."""
        problems = []
        if self.names != current.names:
            problems.append(f"sources {list(self.names)} (this mixture has {list(current.names)})")
        else:
            for i, name in enumerate(self.names):
                if self.lengths[i] != current.lengths[i]:
                    problems.append(
                        f"source {name!r} of {self.lengths[i]} samples (this mixture's has "
                        f"{current.lengths[i]})"
                    )
                elif self.layouts[i] != current.layouts[i] and current.order == "shard-window":
                    problems.append(f"another shard layout for source {name!r}")
        for name in ("seed", "order", "window", "exhausted", "samples_per_epoch"):
            if name == "window" and current.order != "shard-window":
                continue
            if getattr(self, name) != getattr(current, name):
                problems.append(
                    f"{name}={getattr(self, name)!r} (this sampler has {getattr(current, name)!r})"
                )
        return problems


def _describe(state: Any) -> str:
    if isinstance(state, Mapping):
        return f"a dict with keys {sorted(map(str, state))[:8]}"
    return type(state).__name__


def _parse(name: str, kind: str, value: Any) -> Any:
    try:
        if kind == "int":
            return operator.index(value)
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        items = list(value)
        if kind == "tuple[int, ...]":
            return tuple(operator.index(v) for v in items)
        if kind == "tuple[float, ...]":
            if any(isinstance(v, (str, bytes)) for v in items):
                raise TypeError
            return tuple(float(v) for v in items)
        if any(not isinstance(v, str) for v in items):
            raise TypeError
        return tuple(items)
    except (TypeError, ValueError):
        raise InvalidOptionError(
            f"state[{name!r}] should be of type {kind}, but got {value!r}"
        ) from None
