"""Warnings that point at the user's line, not at shardio's.

`warnings.warn(..., stacklevel=N)` counts frames, and the count differs with the path
a call took (a DataLoader worker, a budget wrapper, a property). `warn_user` walks out
of shardio's own frames (and those of the libraries it is called through, torch
among them) and attributes the warning to the first frame of the caller's code.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["warn_user"]

#: Modules whose frames are passed over: shardio, and what calls into it.
_PASS_THROUGH = ("shardio", "torch", "concurrent", "threading", "multiprocessing", "importlib")


def warn_user(message: str, category: type[Warning]) -> None:
    """`warnings.warn(message, category)` at the first frame outside shardio and the
    libraries that call into it (the user's line)."""
    frame = sys._getframe(1)
    level = 2  # stacklevel=1 is this function's own frame
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.split(".", 1)[0] not in _PASS_THROUGH:
            break
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 1)
