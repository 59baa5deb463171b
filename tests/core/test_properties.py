"""Property tests: the index mapping and schema serialization."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import shardio
from shardio import Field, Schema
from shardio.core.index import ShardIndex
from shardio.core.schema import dtype_from_json, dtype_to_json

lengths = st.lists(st.integers(0, 50), min_size=1, max_size=20)


def naive(lengths: list[int], index: int) -> tuple[int, int]:
    for shard, n in enumerate(lengths):
        if index < n:
            return shard, index
        index -= n
    raise AssertionError


@given(lengths, st.data())
def test_locate_matches_a_linear_scan(shard_lengths: list[int], data: st.DataObject) -> None:
    index = ShardIndex(shard_lengths)
    total = sum(shard_lengths)
    assert len(index) == total
    if total == 0:
        with pytest.raises(shardio.SampleIndexError):
            index.locate(0)
        return
    position = data.draw(st.integers(-total, total - 1))
    assert index.locate(position) == naive(shard_lengths, position % total)


@given(lengths, st.data())
def test_locate_many_matches_locate(shard_lengths: list[int], data: st.DataObject) -> None:
    index = ShardIndex(shard_lengths)
    total = sum(shard_lengths)
    if total == 0:
        return
    positions = data.draw(st.lists(st.integers(-total, total - 1), max_size=64))
    shards, local = index.locate_many(np.array(positions, dtype=np.int64))
    assert [(int(s), int(i)) for s, i in zip(shards, local, strict=True)] == [
        index.locate(p) for p in positions
    ]


@given(lengths, st.integers())
def test_out_of_range_is_refused(shard_lengths: list[int], position: int) -> None:
    index = ShardIndex(shard_lengths)
    total = len(index)
    if -total <= position < total:
        return
    with pytest.raises(IndexError, match=str(position)):
        index.locate(position)
    with pytest.raises(IndexError, match=str(position)):
        index.locate_many(np.array([0, position] if total else [position], dtype=object))


scalar_dtypes = st.one_of(
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.boolean_dtypes(),
    hnp.byte_string_dtypes(max_len=8),
)
dtypes = st.one_of(scalar_dtypes, hnp.array_dtypes(scalar_dtypes, max_size=4, allow_subarrays=True))


@given(dtypes)
def test_dtype_json_round_trip(dtype: np.dtype) -> None:
    import json

    assert dtype_from_json(json.loads(json.dumps(dtype_to_json(dtype)))) == dtype


field_names = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12
)


@st.composite
def fields(draw: st.DrawFn) -> Field:
    kind = draw(st.sampled_from(["array", "ragged", "bytes"]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)) if kind == "array" else ()
    dtype = draw(scalar_dtypes) if kind != "bytes" else np.dtype(np.uint8)
    return Field(draw(field_names), dtype, shape, kind)


@given(st.lists(fields(), min_size=1, max_size=6, unique_by=lambda f: f.name))
def test_schema_json_round_trip(schema_fields: list[Field]) -> None:
    schema = Schema(tuple(schema_fields))
    assert Schema.loads(schema.dumps()) == schema


@given(st.lists(fields(), min_size=1, max_size=6, unique_by=lambda f: f.name), st.data())
def test_schema_select_keeps_requested_order(
    schema_fields: list[Field], data: st.DataObject
) -> None:
    schema = Schema(tuple(schema_fields))
    chosen = data.draw(st.permutations(schema.names))[: data.draw(st.integers(1, len(schema)))]
    assert schema.select(chosen).names == tuple(chosen)


def test_parse_size_units() -> None:
    assert shardio.parse_size("512MB") == 512_000_000
    assert shardio.parse_size("1.5GiB") == 3 * 2**29
    assert shardio.parse_size(4096) == 4096
    with pytest.raises(shardio.InvalidOptionError, match="max_rss"):
        shardio.parse_size("12 parsecs", "max_rss")
