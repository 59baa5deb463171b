"""One style on every ``shardio`` command: ``--json [FILE]``, ``-q``/``-v``, flags in messages."""

from __future__ import annotations

import argparse

import pytest

from shardio.tools.cli import build_parser
from shardio.tools.cli._common import flag_message

COMMANDS = ("inspect", "convert", "verify", "bench", "demo")


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    (subparsers,) = actions
    return subparsers.choices[name]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_json_quiet_and_verbose(command: str) -> None:
    options = {
        option: action
        for action in _subparser(command)._actions
        for option in action.option_strings
    }
    assert {"--json", "-q", "--quiet", "-v", "--verbose"} <= options.keys(), sorted(options)
    json_action = options["--json"]
    assert json_action.nargs == "?" and json_action.const == "-"  # bare --json: stdout
    assert options["-q"] is options["--quiet"] and options["-v"] is options["--verbose"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_maps_parameters_to_flags(command: str) -> None:
    flags = _subparser(command).get_default("flags")
    options = {o for a in _subparser(command)._actions for o in a.option_strings}
    assert flags, command
    assert all(f in options or f.isupper() for f in flags.values()), flags


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "cannot tell the format of x.bin; pass format= to say which",
            "cannot tell the format of x.bin; pass --format to say which",
        ),
        (
            "shard_size should be a size such as '512MB', but got shard_size='big'",
            "--shard-size should be a size such as '512MB', but got --shard-size='big'",
        ),
        (
            "workers should be >= 1, but got workers=0",
            "--workers should be >= 1, but got --workers=0",
        ),
        # words that merely contain a parameter's name stay as they are
        ("the source_format of --format x", "the source_format of --format x"),
        ("output format: lmdb", "output format: lmdb"),
    ],
)
def test_flag_message(message: str, expected: str) -> None:
    flags = {"format": "--format", "shard_size": "--shard-size", "workers": "--workers"}
    assert flag_message(message, flags) == expected


def test_a_bare_json_before_the_path_writes_json_to_stdout(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import numpy as np

    import shardio
    from shardio.tools.cli import main

    with shardio.ShardWriter(tmp_path / "ds", format="mmap") as writer:
        writer.write_batch({"x": np.arange(5)})
    path = str(tmp_path / "ds")
    assert main(["inspect", "--json", path]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == path
    assert main(["inspect", "--json", str(tmp_path / "out.json"), path]) == 0  # FILE, path
    assert json.loads((tmp_path / "out.json").read_text())["path"] == path
    with pytest.raises(SystemExit) as exited:
        main(["inspect", "--json"])
    assert exited.value.code == 2
    assert "shardio inspect: error: the following arguments are required: path" in (
        capsys.readouterr().err
    )
