"""Elastic resume: a state saved at one world size resumes at any other.

The index logic is checked with hypothesis on the sampler itself (shard_lengths=
layouts, no data); DataLoader workers and torchdata's StatefulDataLoader on a real
raw-mmap dataset. Real gloo process groups are in test_sampling_distributed.py.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mix_helpers import Layouts
from order_helpers import live_bytes, read_x
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from shardio import ShardedDataset, ShardWriter, StateMismatchError
from shardio.core.errors import InvalidOptionError
from shardio.loading.sampling import (
    ORDERS,
    PARTITIONS,
    MixSampler,
    ShardSampler,
    epoch_order,
    find_sampler_state,
)
from shardio.loading.sampling.elastic import complement, normalize_runs
from shardio.loading.sampling.orders import epoch_plan

BYTES_PER_SAMPLE = 100


def ranks(lengths: list[int], world: int, **options: Any) -> list[ShardSampler]:
    """One sampler per rank of a ``world``-rank job over a layout with no data behind it."""
    nbytes = [n * BYTES_PER_SAMPLE for n in lengths]
    return [
        ShardSampler(
            shard_lengths=lengths, shard_nbytes=nbytes, rank=r, world_size=world, **options
        )
        for r in range(world)
    ]


def consume(samplers: list[ShardSampler], k: int) -> tuple[list[list[int]], dict[str, Any]]:
    """Every rank takes ``k`` indices of its pass; returns them and rank 0's state."""
    heads = []
    for s in samplers:
        it = iter(s)
        heads.append([next(it) for _ in range(k)])
    return heads, samplers[0].state_dict()


def resume(
    state: dict[str, Any], lengths: list[int], world: int, **options: Any
) -> list[ShardSampler]:
    samplers = ranks(lengths, world, **options)
    for s in samplers:
        s.load_state_dict(state)
        s.set_epoch(state["epoch"])  # the usual loop calls set_epoch after loading
    return samplers


def check_rest_of_epoch(
    tails: list[list[int]],
    consumed: set[int],
    n: int,
    world: int,
    drop_last: bool,
    padded_from: set[int] | None = None,
) -> None:
    """Each sample not yet consumed is read once by the new ranks; ranks read equally.

    ``padded_from``: the samples consumed when the pass began at this world size,
    which its padding repeats first; ``None`` for a pass that began at the start of
    the epoch (its padding repeats the order's start, as DistributedSampler's).
    """
    assert len({len(t) for t in tails}) == 1, "ranks must read equally many indices"
    reads = Counter(i for t in tails for i in t)
    unconsumed = set(range(n)) - consumed
    total = sum(len(t) for t in tails)
    if drop_last:
        assert set(reads) <= unconsumed and set(reads.values()) <= {1}
        assert len(unconsumed) - total < world  # only the cut of drop_last is left out
    else:
        assert unconsumed <= set(reads)
        padding = total - len(unconsumed)
        assert 0 <= padding < world
        if padded_from is not None and len(padded_from) >= padding:
            assert all(reads[i] == 1 for i in unconsumed)


settings_ = st.fixed_dictionaries(
    {
        "order": st.sampled_from(ORDERS),
        "partition": st.sampled_from(PARTITIONS),
        "drop_last": st.booleans(),
        "seed": st.integers(0, 2**16),
        "window": st.integers(1, 3000),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 25), min_size=1, max_size=6),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(1, 5),
    settings_,
    st.data(),
)
def test_a_state_resumes_at_any_world_size_reading_each_sample_once(
    lengths: list[int],
    world: int,
    new_world: int,
    third_world: int,
    options: dict[str, Any],
    data: st.DataObject,
) -> None:
    n = sum(lengths)
    epoch = data.draw(st.integers(0, 3))
    drop_last = options["drop_last"]
    first = ranks(lengths, world, **options)
    for s in first:
        s.set_epoch(epoch)
    full = [s.indices().tolist() for s in first]
    k = data.draw(st.integers(0, len(first[0])))
    heads, state = consume(first, k)
    assert len(state["consumed_runs"]) == 0  # a first pass needs no runs: offset says it all
    consumed = {i for h in heads for i in h}

    second = resume(state, lengths, new_world, **options)
    folded = second[0].state_dict()
    assert len(folded["consumed_runs"]) <= 2 * (world + 2)  # O(world size), not O(n)
    tails = [list(s) for s in second]
    elastic = new_world != world
    check_rest_of_epoch(tails, consumed, n, new_world, drop_last, consumed if elastic else None)
    if not elastic:  # the same world size goes on exactly where each rank stopped
        assert tails == [f[k:] for f in full]

    # A strided job whose consumed prefix is whole steps at the new world size goes on as
    # an uninterrupted run at the new world size would.
    prefix = k * world
    if options["partition"] == "strided" and prefix % new_world == 0 and prefix <= n:
        uninterrupted = ranks(lengths, new_world, **options)
        for s, tail in zip(uninterrupted, tails, strict=True):
            s.set_epoch(epoch)
            assert tail == s.indices().tolist()[prefix // new_world :]

    # Resume the resumed job once more, at a third world size.
    second = resume(state, lengths, new_world, **options)
    # len() counts the epoch's share as DistributedSampler's does (what this rank read
    # before the resume too), so the pass's own length is counted by iterating it.
    k2 = data.draw(st.integers(0, len(list(resume(state, lengths, new_world, **options)[0]))))
    heads2, state2 = consume(second, k2)
    third = resume(state2, lengths, third_world, **options)
    consumed2 = consumed | {i for h in heads2 for i in h}
    padded_from = consumed2 if third_world != new_world else consumed if elastic else None
    check_rest_of_epoch([list(s) for s in third], consumed2, n, third_world, drop_last, padded_from)

    # The next epoch is the one an uninterrupted run at the new world size reads.
    fresh = ranks(lengths, third_world, **options)
    for s, t in zip(fresh, third, strict=True):
        s.set_epoch(epoch + 1)
        t.set_epoch(epoch + 1)
        assert list(t) == list(s)


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=8))
def test_runs_are_normalized_and_complemented_like_sets(pairs: list[tuple[int, int]]) -> None:
    runs = normalize_runs(pairs)
    as_set = {i for a, b in pairs for i in range(a, b)}
    assert {i for a, b in runs.tolist() for i in range(a, b)} == as_set
    flat = runs.reshape(-1).tolist()
    assert all(x < y for x, y in itertools.pairwise(flat))  # sorted, disjoint, not adjacent
    rest = complement(runs, 40)
    assert {i for a, b in rest.tolist() for i in range(a, b)} == set(range(40)) - as_set


def test_the_global_order_does_not_depend_on_the_world_size() -> None:
    lengths = [30, 7, 0, 41]
    for partition in PARTITIONS:
        one = ranks(lengths, 1, partition=partition, window=900)[0].indices().tolist()
        for world in (2, 3, 6):
            shares = [s.indices() for s in ranks(lengths, world, partition=partition, window=900)]
            if partition == "strided":
                interleaved = np.stack([np.resize(s, len(shares[0])) for s in shares], axis=1)
                assert interleaved.reshape(-1)[: len(one)].tolist() == one
            else:
                assert np.concatenate(shares)[: len(one)].tolist() == one


def test_state_size_does_not_grow_with_the_dataset() -> None:
    lengths = [1_000_000] * 100  # 100M samples: only the shard layout, no data
    s = ShardSampler(shard_lengths=lengths, order="sequential", rank=1, world_size=8)
    state = s.state_dict()
    s.load_state_dict({**state, "offset": 123_456, "world_size": 4})  # fold at another size
    folded = s.state_dict()
    assert len(folded["consumed_runs"]) == 8  # four runs: one per rank of the old job
    assert len(repr(folded)) < 600


# -- shard-window locality ----------------------------------------------------------


@pytest.mark.parametrize("partition", PARTITIONS)
def test_shard_window_keeps_its_locality_at_any_world_size_and_after_a_resume(
    partition: str,
) -> None:
    lengths, window = [400, 250, 600, 350], 8000  # 160 kB of samples, 80 blocks
    plan = epoch_plan("shard-window", ranks(lengths, 1)[0].layout, window, 3, 0)
    assert plan.block_starts is not None
    n = sum(lengths)
    block_of = np.searchsorted(plan.block_starts, np.arange(n), side="right") - 1
    block_bytes = np.diff(np.append(plan.block_starts, n)) * BYTES_PER_SAMPLE
    options = {"window": window, "seed": 3, "partition": partition, "drop_last": True}
    for world in (1, 2, 3, 5):
        shares = [s.indices() for s in ranks(lengths, world, **options)]
        # Every rank's share is an in-order subsequence of the global order, so the
        # blocks it keeps live never hold more than the window.
        assert max(live_bytes(s, block_of, block_bytes).max(initial=0) for s in shares) <= window
        if partition == "contiguous":  # and each rank reads about 1/world of the blocks
            touched = [len(np.unique(block_of[s])) for s in shares]
            assert max(touched) <= len(block_bytes) / world + 20
    _, state = consume(ranks(lengths, 2, **options), 300)
    tails = [np.array(list(s)) for s in resume(state, lengths, 3, **options)]
    assert max(live_bytes(t, block_of, block_bytes).max(initial=0) for t in tails) <= window


# -- errors --------------------------------------------------------------------------


def test_a_state_of_another_order_is_a_state_mismatch_naming_it() -> None:
    _, state = consume(ranks([10, 10], 2, seed=1, window=500), 3)
    with pytest.raises(StateMismatchError, match=r"seed=1 \(this sampler has 2\)") as info:
        ranks([10, 10], 3, seed=2, window=500)[0].load_state_dict(state)
    assert isinstance(info.value, InvalidOptionError) and isinstance(info.value, ValueError)
    with pytest.raises(StateMismatchError, match="dataset_len=20"):
        ranks([10, 11], 3, seed=1, window=500)[0].load_state_dict(state)


def test_a_changed_order_is_refused_at_another_world_size_too() -> None:
    _, state = consume(ranks([10, 10], 2, window=500), 3)
    resumed = ranks([10, 10], 3, window=500)[0]
    resumed.load_state_dict({**state, "digest": "0123456789abcdef"})
    with pytest.raises(StateMismatchError, match="its order differs"):
        next(iter(resumed))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"consumed_runs": [0, 5, 3]}, "ascending"),
        ({"consumed_runs": [5, 2]}, "ascending"),
        ({"consumed_runs": [0, 21]}, "below dataset_len=20"),
        ({"consumed_runs": "0,5"}, "consumed_runs"),
        ({"world_size": 0}, r"world_size'\] should be >= 1"),
        ({"world_size": 4, "offset": 6}, r"offset.*between 0 and 5"),
    ],
)
def test_malformed_elastic_states_are_refused(edit: dict[str, Any], message: str) -> None:
    _, state = consume(ranks([10, 10], 2, window=500), 3)
    with pytest.raises(InvalidOptionError, match=message):
        ranks([10, 10], 3, window=500)[0].load_state_dict({**state, **edit})


def test_a_version_1_state_still_loads() -> None:
    samplers = ranks([10, 10], 2, window=500)
    full = samplers[1].indices().tolist()
    _, state = consume(samplers, 4)
    old = {key: value for key, value in state.items() if key != "consumed_runs"}
    resumed = ranks([10, 10], 2, window=500)[1]
    resumed.load_state_dict({**old, "version": 1})
    assert list(resumed) == full[4:]


# -- DataLoader workers and StatefulDataLoader ----------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> ShardedDataset:
    """A real raw-mmap dataset of 200 samples in a few shards; sample i stores i."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("elastic") / "data"
    with ShardWriter(path, format="mmap", shard_size=400) as writer:
        writer.write_batch({"x": np.arange(200)})
    return ShardedDataset(path)


def _stateful(dataset: ShardedDataset, sampler: ShardSampler, workers: int) -> StatefulDataLoader:
    context = "fork" if workers else None
    return StatefulDataLoader(
        dataset, batch_size=8, sampler=sampler, num_workers=workers, multiprocessing_context=context
    )


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.filterwarnings("ignore:.set_vital. is deprecated")
def test_stateful_dataloader_resumes_exactly_with_workers(
    sharded: ShardedDataset, workers: int
) -> None:
    full = list(ShardSampler(sharded, window=800, seed=7))
    first = ShardSampler(sharded, window=800, seed=7)
    loader = _stateful(sharded, first, workers)
    head = read_x(loader, batches=6)
    state = loader.state_dict()
    if workers:  # the workers prefetched past what the loop received
        assert first.state_dict()["offset"] > len(head)
    assert find_sampler_state(state)["offset"] == len(head)
    del loader

    second = ShardSampler(sharded, window=800, seed=7)
    loader = _stateful(sharded, second, workers)
    loader.load_state_dict(state)
    tail = read_x(loader)
    assert head + tail == full


@pytest.mark.filterwarnings("ignore:.set_vital. is deprecated")
def test_a_stateful_dataloader_state_resumes_with_other_workers_and_ranks(
    sharded: ShardedDataset,
) -> None:
    """The loader refuses another worker count; the sampler state inside it does not."""
    first = [ShardSampler(sharded, window=800, seed=7, rank=r, world_size=2) for r in range(2)]
    heads = []
    for s in first:
        loader = _stateful(sharded, s, workers=2)
        heads.append(read_x(loader, batches=3))
        state = loader.state_dict()  # all ranks hold the same sampler position
        del loader
    sampler_state = find_sampler_state(state)
    tails = []
    for rank in range(3):
        s = ShardSampler(sharded, window=800, seed=7, rank=rank, world_size=3)
        s.load_state_dict(sampler_state)
        tails.append(read_x(DataLoader(sharded, batch_size=8, sampler=s, num_workers=0)))
    consumed = {i for h in heads for i in h}
    check_rest_of_epoch(tails, consumed, 200, 3, drop_last=False)


def test_find_sampler_state_needs_exactly_one() -> None:
    with pytest.raises(InvalidOptionError, match="holds no"):
        find_sampler_state({"a": [1, {"b": 2}]})
    one = ranks([4], 1)[0].state_dict()
    assert find_sampler_state({"x": [one], "y": {"z": one}}) == one
    with pytest.raises(InvalidOptionError, match="2 different"):
        find_sampler_state([one, {**one, "offset": 1}])


def test_epoch_order_is_exported_for_checks() -> None:
    s = ranks([5, 5], 1, window=300, seed=4)[0]
    assert list(s) == epoch_order("shard-window", s.layout, 300, 4, 0).tolist()


def test_a_state_that_outgrows_an_earlier_len_is_refused() -> None:
    """A loop that sized the epoch with len() before the state arrived (Lightning's
    Trainer) would stop early at more ranks: refused, naming the world size; fewer
    ranks, or the same, or `forget_len()` first, resume."""
    lengths = [50, 50, 50, 50]
    _, state = consume(ranks(lengths, 1), 40)
    grown = ranks(lengths, 2)[0]
    answered = len(grown)
    with pytest.raises(StateMismatchError, match=r"len\(\)=100 .*Resume at world_size=1"):
        grown.load_state_dict(state)
    trusting = ranks(lengths, 2)[0]
    assert len(trusting) == answered
    trusting.forget_len()
    trusting.load_state_dict(state)
    assert len(list(trusting)) == 80  # (200 - 40) / 2: the rest, each rank half
    _, state2 = consume(ranks(lengths, 2), 30)
    shrunk = ranks(lengths, 1)[0]
    assert len(shrunk) == 200
    shrunk.load_state_dict(state2)
    assert len(list(shrunk)) == 140  # 200 - 2 * 30


def test_a_mixture_state_that_outgrows_an_earlier_len_is_refused_as_a_shard_one() -> None:
    """MixSampler checks the sized epoch as ShardSampler does, at every load: at the same
    world size too, where new weights (applied from the saved position) move the end
    of a `stop` epoch past what len() answered."""

    def mix(weights: dict[str, float]) -> Layouts:
        return Layouts({"a": [12, 9], "b": [40]}, weights, exhausted="stop")

    saver = MixSampler(mix({"a": 1, "b": 1}), rank=0, world_size=1)
    it = iter(saver)
    head = [next(it) for _ in range(5)]
    state = saver.state_dict()
    same = MixSampler(mix({"a": 1, "b": 1}), rank=0, world_size=1)
    assert len(same) == 43
    same.load_state_dict(state)  # the same weights: len() unchanged, resumed
    assert head + list(same) == list(MixSampler(mix({"a": 1, "b": 1}), rank=0, world_size=1))
    heavier = MixSampler(mix({"a": 2, "b": 1}), rank=0, world_size=1)
    assert len(heavier) == 32
    with pytest.raises(StateMismatchError, match=r"34 indices .*len\(\)=32 .*saved with"):
        heavier.load_state_dict(state)
    trusting = MixSampler(mix({"a": 2, "b": 1}), rank=0, world_size=1)
    assert len(trusting) == 32
    trusting.forget_len()
    trusting.load_state_dict(state)
    assert len(list(trusting)) == 34 - 5
    # at another world size, from the start of an epoch: the same check, passed
    grown = MixSampler(mix({"a": 1, "b": 1}), rank=0, world_size=2)
    fresh = MixSampler(mix({"a": 1, "b": 1}), rank=0, world_size=1).state_dict()
    answered = len(grown)
    grown.load_state_dict(fresh)
    assert len(grown) == answered == 21
