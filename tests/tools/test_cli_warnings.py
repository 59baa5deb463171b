"""The CLI's warning lines: once per text, naming the library a warning came from."""

from __future__ import annotations

import warnings

import pytest

from shardio.tools.cli._common import flag_message, one_line_warnings

TORCH_FILE = "/venv/lib/python3.11/site-packages/torch/utils/data/dataloader.py"


def test_a_warning_is_printed_once_and_a_libraries_says_whose(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with one_line_warnings("bench", {"max_rss": "--max-rss"}):
        for line in (10, 20):  # the same text from two lines, as torch raises it
            warnings.warn_explicit("workers are many", UserWarning, TORCH_FILE, line)
        for _ in range(2):
            warnings.warn("pass max_rss= to cap it", UserWarning, stacklevel=1)
    assert capsys.readouterr().err.splitlines() == [
        "shardio bench: warning (from torch): workers are many",
        "shardio bench: warning: pass --max-rss to cap it",
    ]


def test_hints_read_as_the_flag_typed() -> None:
    flags = {"fields": "--fields", "format": "--format"}
    assert (
        flag_message("To read others, pass fields=['lat', 'lon'] (--fields lat,lon)", flags)
        == "To read others, pass --fields lat,lon"
    )
    assert flag_message("pick with fields= (--fields)", flags) == "pick with --fields"
    assert (
        flag_message("read it with format='netcdf3' (--format netcdf3)", flags)
        == "read it with --format netcdf3"
    )
