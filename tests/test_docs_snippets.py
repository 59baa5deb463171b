"""The Python snippets of docs/loader.md run as written (in order, in one namespace)."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import torch

torch.set_num_threads(1)

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def python_blocks(name: str) -> list[str]:
    with open(os.path.join(DOCS, name), encoding="utf-8") as handle:
        return re.findall(r"```python\n(.*?)```", handle.read(), re.S)


@pytest.mark.parametrize("name", ["loader.md"])
def test_snippets_run(name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(name)
    assert len(blocks) >= 5
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for block in blocks:
        exec(compile(block, f"{name} snippet", "exec"), namespace)
