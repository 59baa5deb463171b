"""The one RSS sampler (shardio.memory.RssSampler) that bench, the job watch and the
loader doctor share."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from shardio import InvalidOptionError
from shardio.memory import RssSampler, read_rss
from shardio.memory.sampler import RSS_ROW


def test_a_sample_is_due_once_per_interval() -> None:
    clock = RssSampler(interval=10.0)
    assert clock.due(100.0)
    assert not clock.due(105.0)
    assert clock.due(110.0)
    assert clock.maybe_sample() is not None  # its own clock: long past 110 s
    assert clock.maybe_sample() is None
    assert len(clock.rows) == 1


def test_samples_are_this_process_and_reach_its_file(tmp_path: Path) -> None:
    target = tmp_path / "main.rss"
    sampler = RssSampler(interval=0.005, path=str(target)).start()
    sampler.sample()
    rows = sampler.stop()
    assert len(rows) >= 3
    stored = [RSS_ROW.unpack_from(target.read_bytes(), i * RSS_ROW.size) for i in range(len(rows))]
    assert stored == rows
    assert target.stat().st_size == len(rows) * RSS_ROW.size
    now = read_rss()
    assert now is not None
    assert abs(rows[-1][1] - now.rss) < 256 * 2**20
    assert rows[-1][2] > 0 and rows[-1][3] > 0  # anon and file parts from /proc


def test_a_copy_carries_settings_not_the_thread(tmp_path: Path) -> None:
    sampler = RssSampler(interval=0.5, path=str(tmp_path / "x.rss")).start()
    try:
        copy = pickle.loads(pickle.dumps(sampler))
    finally:
        sampler.stop()
    assert (copy.interval, copy.path, copy.rows) == (0.5, sampler.path, [])
    assert copy.due()


def test_a_bad_interval_is_refused() -> None:
    with pytest.raises(InvalidOptionError, match="interval"):
        RssSampler(interval=0)
