"""ShardSampler: options, epochs, ranks and exact mid-epoch resume."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

import shardio
from shardio import ShardedDataset, ShardWriter
from shardio.core.errors import InvalidOptionError, ShardioError
from shardio.loading.sampling import ORDERS, PARTITIONS, ShardSampler


class IndexDataset(Dataset[int]):
    """A map-style dataset with a shard layout whose samples are their own indices."""

    def __init__(self, shard_lengths: Sequence[int], bytes_per_sample: int = 100) -> None:
        self.shard_lengths = tuple(shard_lengths)
        self.shard_nbytes = tuple(n * bytes_per_sample for n in shard_lengths)

    def __len__(self) -> int:
        return sum(self.shard_lengths)

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return index


class PlainDataset(Dataset[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def sampler(n_shards: int = 4, per_shard: int = 25, **options: Any) -> ShardSampler:
    options.setdefault("window", 1000)
    return ShardSampler(IndexDataset([per_shard] * n_shards), **options)


configs = st.fixed_dictionaries(
    {
        "order": st.sampled_from(ORDERS),
        "partition": st.sampled_from(PARTITIONS),
        "drop_last": st.booleans(),
        "seed": st.integers(0, 2**32),
        "window": st.integers(1, 5000),
    }
)


# -- orders and ranks -------------------------------------------------------------


def test_default_order_depends_on_what_is_known() -> None:
    assert ShardSampler(IndexDataset([10, 10])).order == "shard-window"
    assert ShardSampler(PlainDataset(10)).order == "random"
    assert ShardSampler(PlainDataset(10), shuffle=False).order == "sequential"
    assert ShardSampler(shard_lengths=[3, 4], shard_nbytes=[30, 40]).order == "shard-window"
    assert list(ShardSampler(PlainDataset(5), shuffle=False)) == [0, 1, 2, 3, 4]


@settings(max_examples=60)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=6), st.integers(1, 5), configs)
def test_ranks_get_equal_disjoint_shares_of_one_epoch(
    lengths: list[int], world: int, config: dict[str, Any]
) -> None:
    n = sum(lengths)
    shares = [
        list(ShardSampler(IndexDataset(lengths), rank=r, world_size=world, **config))
        for r in range(world)
    ]
    per_rank = len(ShardSampler(IndexDataset(lengths), rank=0, world_size=world, **config))
    assert all(len(share) == per_rank for share in shares)
    everything = [i for share in shares for i in share]
    if config["drop_last"]:
        assert len(set(everything)) == len(everything) == n - n % world
    else:
        assert set(everything) == set(range(n))
        assert len(everything) - n == (-n) % world  # DistributedSampler's padding
    # Only padding repeats: exactly `padding` extra occurrences in all, none beyond them
    # within a share (the check holds, and can fail, whether or not padding is needed).
    padding = 0 if config["drop_last"] else (-n) % world
    assert sum(count - 1 for count in Counter(everything).values()) == padding
    for share in shares:
        assert len(share) - len(set(share)) <= padding


@settings(max_examples=30)
@given(configs, st.integers(0, 50))
def test_the_order_is_a_function_of_seed_epoch_rank_and_world(
    config: dict[str, Any], epoch: int
) -> None:
    a, b = sampler(rank=1, world_size=3, **config), sampler(rank=1, world_size=3, **config)
    a.set_epoch(epoch)
    b.set_epoch(epoch)
    assert list(a) == list(b)
    assert list(a) == list(a)  # a second pass over the same epoch repeats it


def test_epochs_and_seeds_change_a_shuffled_order() -> None:
    s = sampler(order="shard-window")
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    assert list(sampler(order="shard-window", seed=1)) != first
    assert sorted(first) == list(range(100))


def test_indices_of_another_epoch_do_not_move_the_sampler() -> None:
    s = sampler()
    s.set_epoch(2)
    ahead = s.indices(epoch=3)
    assert s.epoch == 2
    s.set_epoch(3)
    assert list(s) == ahead.tolist()


# -- resume ----------------------------------------------------------------------


@settings(max_examples=60)
@given(configs, st.integers(1, 4), st.data())
def test_resume_yields_exactly_the_rest_of_the_epoch(
    config: dict[str, Any], world: int, data: st.DataObject
) -> None:
    rank = data.draw(st.integers(0, world - 1))
    epoch = data.draw(st.integers(0, 5))
    original = sampler(n_shards=3, per_shard=17, rank=rank, world_size=world, **config)
    original.set_epoch(epoch)
    full = list(original)
    stop = data.draw(st.integers(0, len(full)))
    consumed = data.draw(st.integers(0, stop))

    it = iter(original)
    head = [next(it) for _ in range(stop)]  # yielded; the loop consumed only a prefix
    state = original.state_dict(consumed=consumed)

    resumed = sampler(n_shards=3, per_shard=17, rank=rank, world_size=world, **config)
    resumed.load_state_dict(state)
    resumed.set_epoch(epoch)  # the usual loop calls set_epoch after loading
    assert len(resumed) == len(full)  # as DistributedSampler: the whole epoch's share
    assert head[:consumed] + list(resumed) == full
    assert list(resumed) == full  # the pass after the resumed one is the whole epoch


def test_resume_twice_within_one_epoch() -> None:
    full = list(sampler())
    first = sampler()
    it = iter(first)
    part1 = [next(it) for _ in range(30)]
    second = sampler()
    second.load_state_dict(first.state_dict())
    it = iter(second)
    part2 = [next(it) for _ in range(30)]  # consumed counts from the resumed pass's start
    third = sampler()
    third.load_state_dict(second.state_dict(consumed=20))
    assert part1 + part2[:20] + list(third) == full


def test_state_of_rank_0_resumes_every_rank() -> None:
    ranks = [sampler(rank=r, world_size=3) for r in range(3)]
    fulls = [list(s) for s in ranks]
    it = iter(ranks[0])
    for _ in range(10):
        next(it)
    state = ranks[0].state_dict()
    for r in range(3):
        resumed = sampler(rank=r, world_size=3)
        resumed.load_state_dict(state)
        assert list(resumed) == fulls[r][10:]


def test_state_at_the_end_of_an_epoch_then_the_next_epoch() -> None:
    s = sampler()
    list(s)
    state = s.state_dict()
    assert state["offset"] == len(s) == 100
    resumed = sampler()
    resumed.load_state_dict(state)
    assert list(resumed) == []  # epoch 0 is done ...
    resumed.set_epoch(1)
    s.set_epoch(1)
    assert list(resumed) == list(s)  # ... and epoch 1 starts from its beginning


def test_set_epoch_to_another_epoch_drops_a_loaded_position() -> None:
    s = sampler()
    it = iter(s)
    for _ in range(40):
        next(it)
    state = s.state_dict()
    resumed = sampler()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert len(resumed) == 100
    assert resumed.state_dict()["offset"] == 0


def _epoch_state(epoch: int, taken: int, make: Any = sampler) -> dict[str, Any]:
    s = make()
    s.set_epoch(epoch)
    it = iter(s)
    for _ in range(taken):
        next(it)
    return dict(s.state_dict())


@pytest.mark.parametrize("workers", [0, 2])
def test_a_caller_counting_epochs_from_0_goes_on_after_the_state_s_epoch(workers: int) -> None:
    """Fabric's loader calls set_epoch(0), 1, ... by its iter() calls in each job, and the
    StatefulDataLoader hands the sampler its state (epoch 2) at the first iter(): the
    epochs after the resumed one are 3, 4, ... as in an uninterrupted run."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    options: dict[str, Any] = {"num_workers": workers}
    if workers:
        options["multiprocessing_context"] = "fork"
    s = sampler()
    saved_loader = StatefulDataLoader(PlainDataset(100), batch_size=10, sampler=s, **options)
    s.set_epoch(2)
    it = iter(saved_loader)
    head = [i for _ in range(3) for i in next(it).tolist()]
    state = saved_loader.state_dict()
    del it
    resumed = sampler()
    loader = StatefulDataLoader(PlainDataset(100), batch_size=10, sampler=resumed, **options)
    loader.load_state_dict(state)
    epochs = []
    for count in range(3):  # what Fabric's loader does at each iter()
        resumed.set_epoch(count)
        epochs.append([i for batch in loader for i in batch.tolist()])
        assert resumed.epoch == 2 + count
        assert resumed.state_dict()["epoch"] == 2 + count  # a later checkpoint says so too
    assert head + epochs[0] == s.indices(2).tolist()
    assert epochs[1:] == [s.indices(3).tolist(), s.indices(4).tolist()]


def test_a_caller_counting_as_the_state_is_taken_at_its_word() -> None:
    state = _epoch_state(2, 30)
    full = sampler()
    # set_epoch(e) after the load (a stale set_epoch(0) before it): epoch e, then e + 1
    a = sampler()
    a.set_epoch(0)
    a.load_state_dict(state)
    a.set_epoch(2)
    assert list(a) == full.indices(2).tolist()[30:]
    a.set_epoch(3)
    assert list(a) == full.indices(3).tolist()
    # the pass right after the load, then the state's epoch + 1
    b = sampler()
    b.set_epoch(0)
    b.load_state_dict(state)
    assert list(b) == full.indices(2).tolist()[30:]
    b.set_epoch(3)
    assert list(b) == full.indices(3).tolist()
    # no set_epoch before the load: nothing is shifted
    c = sampler()
    c.load_state_dict(state)
    list(c)
    c.set_epoch(1)
    assert list(c) == full.indices(1).tolist()


def test_a_mixture_goes_on_after_the_state_s_epoch_too() -> None:
    from mix_helpers import Layouts

    from shardio.loading.sampling import MixSampler

    mix = Layouts({"a": [30, 20], "b": [40]}, {"a": 1, "b": 1})

    def make() -> MixSampler:
        return MixSampler(mix, rank=0, world_size=1)

    reference = make()
    orders = []
    for epoch in range(4):
        reference.set_epoch(epoch)
        orders.append(list(reference))
    state = _epoch_state(2, 7, make)
    resumed = make()
    resumed.set_epoch(0)
    resumed.load_state_dict(state)
    assert list(resumed) == orders[2][7:]
    resumed.set_epoch(1)
    assert list(resumed) == orders[3]


def test_state_before_iteration_and_after_set_epoch() -> None:
    s = sampler()
    assert s.state_dict()["offset"] == 0
    it = iter(s)
    next(it)
    s.set_epoch(1)
    assert s.state_dict() == {**s.state_dict(), "epoch": 1, "offset": 0}


def test_state_survives_json_and_torch_save(tmp_path: Any) -> None:
    s = sampler()
    it = iter(s)
    for _ in range(7):
        next(it)
    state = s.state_dict()
    torch.save({"sampler": state}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["sampler"]
    resumed = sampler()
    resumed.load_state_dict(json.loads(json.dumps(loaded)))
    assert list(resumed) == list(sampler())[7:]


# -- DataLoader ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> ShardedDataset:
    """A real raw-mmap dataset of 200 samples in a few shards; sample i stores i."""
    path = tmp_path_factory.mktemp("sampling") / "data"
    with ShardWriter(path, format="mmap", shard_size=400) as writer:
        writer.write_batch({"x": np.arange(200)})
    return ShardedDataset(path)


def window_is_partial(dataset: ShardedDataset, window: int) -> bool:
    """The window holds less than the dataset, so the order really is shard-window."""
    return window < sum(dataset.shard_nbytes)


def _take(loader: DataLoader[Any], batches: int | None) -> list[int]:
    out: list[int] = []
    for step, batch in enumerate(loader):
        out.extend(batch["x"].tolist())
        if step + 1 == batches:
            break
    return out


@pytest.mark.parametrize(("workers_before", "workers_after"), [(2, 0), (0, 2), (2, 1)])
def test_resume_behind_a_dataloader_when_the_worker_count_changes(
    sharded: ShardedDataset, workers_before: int, workers_after: int
) -> None:
    assert len(sharded.shard_lengths) > 2 and window_is_partial(sharded, 800)
    full = list(ShardSampler(sharded, window=800, seed=7))

    first = ShardSampler(sharded, window=800, seed=7)
    loader = DataLoader(sharded, batch_size=8, sampler=first, num_workers=workers_before)
    head = _take(loader, batches=6)
    state = first.state_dict(consumed=len(head))
    if workers_before:
        # The workers prefetched: counting yielded indices would skip samples.
        assert first.state_dict()["offset"] > len(head)
    del loader

    second = ShardSampler(sharded, window=800, seed=7)
    second.load_state_dict(state)
    loader = DataLoader(sharded, batch_size=8, sampler=second, num_workers=workers_after)
    # len() is the whole epoch's, as DistributedSampler's (frameworks subtract the
    # batches they count as done); the pass yields the rest.
    assert len(loader) == (len(full) + 7) // 8
    tail = _take(loader, batches=None)
    assert head + tail == full


# -- errors ----------------------------------------------------------------------


def _mid_epoch_state(**options: Any) -> dict[str, Any]:
    s = sampler(**options)
    it = iter(s)
    next(it)
    return s.state_dict()


@pytest.mark.parametrize(
    ("saved", "current", "named"),
    [
        ({}, {"n_shards": 5}, "dataset_len=100"),
        ({"seed": 1}, {"seed": 2}, "seed=1"),
        ({"window": 500}, {"window": 700}, "window=500"),
        ({"drop_last": True}, {}, "drop_last=True"),
        ({"partition": "strided"}, {}, "partition='strided'"),
        ({"order": "random"}, {}, "order='random'"),
        ({}, {"n_shards": 2, "per_shard": 50}, "shard layout"),
    ],
)
def test_a_state_from_another_setup_is_refused(
    saved: dict[str, Any], current: dict[str, Any], named: str
) -> None:
    state = _mid_epoch_state(**saved)
    target = sampler(**current)
    with pytest.raises(InvalidOptionError, match="cannot resume") as info:
        target.load_state_dict(state)
    assert named in str(info.value)
    assert target.state_dict()["offset"] == 0  # nothing was half-loaded


def test_sequential_order_ignores_seed_and_window() -> None:
    state = _mid_epoch_state(shuffle=False, seed=1, window=10)
    target = sampler(shuffle=False, seed=2, window=20)
    target.load_state_dict(state)
    assert next(iter(target)) == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"version": 99}, "version"),
        ({"offset": 101}, "offset"),
        ({"offset": -1}, "offset"),
        ({"epoch": "one"}, "epoch"),
        ({"seed": None}, "seed"),
    ],
)
def test_malformed_states_are_refused(edit: dict[str, Any], message: str) -> None:
    state = {**_mid_epoch_state(), **edit}
    with pytest.raises(InvalidOptionError, match=message):
        sampler().load_state_dict(state)


def test_a_different_order_for_the_same_settings_is_refused() -> None:
    """E.g. a numpy or shardio upgrade between the checkpoint and the resume."""
    state = {**_mid_epoch_state(), "digest": "0123456789abcdef"}
    resumed = sampler()
    resumed.load_state_dict(state)
    with pytest.raises(InvalidOptionError, match="its order differs"):
        next(iter(resumed))  # the order is built, and checked, on the first next()
    resumed.set_epoch(1)  # starting another epoch over is fine
    assert sorted(resumed) == list(range(100))


def test_states_that_are_not_sampler_states_are_refused() -> None:
    with pytest.raises(InvalidOptionError, match="missing"):
        sampler().load_state_dict({"version": 1, "epoch": 0})
    with pytest.raises(InvalidOptionError, match="should be a dict"):
        sampler().load_state_dict([1, 2])  # type: ignore[arg-type]


def test_consumed_must_be_possible() -> None:
    s = sampler()
    with pytest.raises(InvalidOptionError, match="consumed should be 0 before"):
        s.state_dict(consumed=5)
    it = iter(s)
    for _ in range(3):
        next(it)
    with pytest.raises(InvalidOptionError, match="at most the 3 indices"):
        s.state_dict(consumed=4)
    with pytest.raises(InvalidOptionError, match="consumed should be an integer"):
        s.state_dict(consumed=-1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seed": -1}, "seed should be an integer >= 0, but got seed=-1"),
        ({"window": "-1"}, "window should be a size"),
        ({"window": 0}, "window should be a size such as '1GB', but got window=0"),
        ({"order": "shuffled"}, "order should be one of"),
        ({"shuffle": False, "order": "random"}, "shuffle=False"),
        ({"rank": 2, "world_size": 2}, r"rank should be in \[0, 1\]"),
        ({"rank": 1}, "rank and world_size should be given together"),
        ({"world_size": 0, "rank": 0}, "world_size should be >= 1"),
        ({"partition": "blocks"}, "partition should be one of"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        sampler(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shard_lengths": [1.5, 2]}, "shard_lengths should be a sequence of integers"),
        ({"shard_lengths": [-1, 2]}, "shard_lengths should be a sequence of integers"),
        ({"shard_lengths": [3], "shard_nbytes": [1, 2]}, "one entry per shard"),
        ({"shard_lengths": [3], "order": "shard-window"}, "needs the bytes of every shard"),
        ({}, "needs a dataset or shard_lengths="),
    ],
)
def test_bad_layouts_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        ShardSampler(**options)


def test_layout_and_dataset_must_agree() -> None:
    with pytest.raises(InvalidOptionError, match="add up to len"):
        ShardSampler(PlainDataset(10), shard_lengths=[4, 4])
    with pytest.raises(InvalidOptionError, match="has no len"):
        ShardSampler(object())


def test_errors_are_shardio_errors_and_value_errors() -> None:
    with pytest.raises(ShardioError) as info:
        sampler(seed=-5)
    assert isinstance(info.value, ValueError)


def test_explicit_layout_works_without_a_dataset() -> None:
    s = ShardSampler(shard_lengths=np.array([3, 0, 4]), shard_nbytes=[300, 0, 400], window=350)
    assert sorted(s) == list(range(7))
    assert "order='shard-window'" in repr(s)


def test_import_shardio_stays_torch_free_and_exports_the_sampler() -> None:
    code = "import sys, shardio; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "False"
    assert shardio.ShardSampler is ShardSampler
