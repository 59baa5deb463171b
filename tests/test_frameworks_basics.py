"""What frameworks rely on, checked in one process: ShardSampler and MixSampler are
DistributedSamplers that follow torch.distributed, keeps its position through set_epoch and len() as
DistributedSampler's; datasets index by lists, arrays and slices; scalar fields are
numpy scalars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from shardio import Mix, MixSampler, ShardedDataset, ShardSampler, ShardWriter
from shardio.core.errors import InvalidOptionError

torch.set_num_threads(1)

N = 120


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> ShardedDataset:
    path = tmp_path_factory.mktemp("fw") / "data"
    with ShardWriter(path, format="mmap", shard_size=500) as writer:
        writer.write_batch(
            {
                "label": np.arange(N, dtype=np.int64),
                "x": np.arange(N * 2, dtype=np.float32).reshape(N, 2),
            }
        )
    return ShardedDataset(path)


def test_scalar_fields_are_numpy_scalars_and_collate_by_hand(ds: ShardedDataset) -> None:
    sample = ds[5]
    assert type(sample["label"]) is np.int64 and sample["label"] == 5
    assert isinstance(sample["x"], np.ndarray) and sample["x"].tolist() == [10.0, 11.0]
    rows = list(ds.__getitems__([3, 4]))  # a Batch's rows, as collate_fns see them
    assert type(rows[0]["label"]) is np.int64
    # The hand-written collate_fn (and the HF default collator) build tensors from lists.
    labels = torch.tensor([s["label"] for s in [ds[1], *rows]])
    assert labels.tolist() == [1, 3, 4]


@pytest.mark.parametrize(
    "index",
    [[7, 2, 9], (7, 2, 9), np.array([7, 2, 9]), torch.tensor([7, 2, 9])],
    ids=["list", "tuple", "ndarray", "tensor"],
)
def test_a_sequence_of_indices_reads_the_batch_as_columns(ds: ShardedDataset, index: Any) -> None:
    batch = ds[index]
    assert batch["label"].tolist() == [7, 2, 9]
    expected = ds.read_batch([7, 2, 9])
    np.testing.assert_array_equal(batch["x"], expected["x"])


def test_a_slice_reads_the_batch_as_columns(ds: ShardedDataset) -> None:
    assert ds[3:9:2]["label"].tolist() == [3, 5, 7]
    assert ds[-3:]["label"].tolist() == [N - 3, N - 2, N - 1]
    assert ds[5:5]["label"].tolist() == []


def test_the_batch_sampler_idiom_of_hdf5_datasets(ds: ShardedDataset) -> None:
    sampler = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(0)), 25, False)
    loader = DataLoader(ds, sampler=sampler, batch_size=None)
    batches = list(loader)
    assert [len(b["label"]) for b in batches] == [25, 25, 25, 25, 20]
    assert isinstance(batches[0]["label"], torch.Tensor)
    assert sorted(torch.cat([b["label"] for b in batches]).tolist()) == list(range(N))


def test_shard_sampler_is_a_distributed_sampler_that_follows_the_process_group(
    ds: ShardedDataset, tmp_path: Path
) -> None:
    sampler = ShardSampler(ds, seed=1)  # made before the process group, as in a script
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.rank, sampler.world_size, sampler.num_replicas) == (0, 1, 1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        assert sampler.num_samples == sampler.total_size == len(sampler) == N
        assert sorted(sampler) == list(range(N))
    finally:
        dist.destroy_process_group()
    fixed = ShardSampler(ds, seed=1, rank=1, world_size=3)
    assert (fixed.rank, fixed.num_replicas, fixed.num_samples, fixed.total_size) == (1, 3, 40, 120)


def test_set_epoch_again_mid_pass_keeps_the_position(ds: ShardedDataset) -> None:
    sampler = ShardSampler(ds, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    it = iter(sampler)
    head = [next(it) for _ in range(30)]
    sampler.set_epoch(2)  # frameworks call it at every iter(); the position stays
    state = sampler.state_dict()
    assert state["offset"] == 30 and state["epoch"] == 2
    resumed = ShardSampler(ds, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert len(resumed) == N  # as DistributedSampler: the epoch's share
    assert head + list(resumed) == full
    sampler.set_epoch(3)  # another epoch starts from its beginning
    assert sampler.state_dict()["offset"] == 0 and sampler.state_dict()["epoch"] == 3


@pytest.mark.parametrize("version", [True, 2.0, "2", None])
def test_a_state_whose_version_is_not_an_int_is_refused(ds: ShardedDataset, version: Any) -> None:
    sampler = ShardSampler(ds)
    state = sampler.state_dict()
    state["version"] = version
    with pytest.raises(InvalidOptionError, match="version"):
        ShardSampler(ds).load_state_dict(state)
    state["version"] = 2
    state["epoch"] = True
    with pytest.raises(InvalidOptionError, match="epoch"):
        ShardSampler(ds).load_state_dict(state)


def test_a_share_sampler_inside_accelerates_dispatcher_is_refused(ds: ShardedDataset) -> None:
    accelerate = pytest.importorskip("accelerate")
    from accelerate.utils import DataLoaderConfiguration

    config = DataLoaderConfiguration(dispatch_batches=True)
    accelerator = accelerate.Accelerator(cpu=True, dataloader_config=config)
    share = ShardSampler(ds, seed=0, rank=0, world_size=2)  # one rank's share of two
    loader = accelerator.prepare(DataLoader(ds, batch_size=8, sampler=share))
    with pytest.raises(InvalidOptionError, match=r"DataLoaderDispatcher.*rank=0, world_size=1"):
        next(iter(loader))
    whole = ShardSampler(ds, seed=0, rank=0, world_size=1)
    loader = accelerator.prepare(DataLoader(ds, batch_size=8, sampler=whole))
    labels = [label for batch in loader for label in batch["label"].tolist()]
    assert sorted(labels) == list(range(N))


def _label_plus_one(sample: dict[str, Any]) -> int:
    return int(sample["label"]) + 1


def _label_sum(batch: dict[str, Any]) -> int:
    return int(batch["label"].sum())


def test_a_batch_by_list_goes_through_the_transforms(ds: ShardedDataset) -> None:
    per_sample = ShardedDataset(ds.path, transform=_label_plus_one)
    assert per_sample[[4, 1]] == [5, 2] and per_sample[4] == 5
    per_batch = ShardedDataset(ds.path, batch_transform=_label_sum)
    assert per_batch[[4, 1, 10]] == 15  # applied to the batch as tensors, as in a DataLoader


def test_mix_sampler_is_a_distributed_sampler_that_accelerate_does_not_split(
    ds: ShardedDataset, tmp_path: Path
) -> None:
    mix = Mix({"a": ds, "b": ds}, weights={"a": 0.5, "b": 0.5}, seed=2)
    sampler = MixSampler(mix)  # made before the process group, as in a script
    assert isinstance(sampler, DistributedSampler)  # what Lightning and Fabric keep as it is
    assert (sampler.rank, sampler.num_replicas, sampler.drop_last) == (0, 1, True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        assert sampler.num_samples == sampler.total_size == len(sampler) == 2 * N
        whole = list(sampler)
    finally:
        dist.destroy_process_group()
    half = MixSampler(mix, rank=1, world_size=2)
    assert (half.rank, half.num_replicas, half.num_samples, half.total_size) == (1, 2, N, 2 * N)
    assert list(half) == whole[1::2]
    it = iter(half)
    head = [next(it) for _ in range(5)]
    half.set_epoch(0)  # frameworks call it at every iter(); the position stays
    assert half.state_dict()["done"] == 5 and len(half) == N
    resumed = MixSampler(mix, rank=1, world_size=2)
    resumed.load_state_dict(half.state_dict())
    assert head + list(resumed) == whole[1::2]

    accelerate = pytest.importorskip("accelerate")
    from accelerate.utils import DataLoaderConfiguration

    config = DataLoaderConfiguration(dispatch_batches=True)
    accelerator = accelerate.Accelerator(cpu=True, dataloader_config=config)
    loader = accelerator.prepare(DataLoader(mix, batch_size=8, sampler=half))
    with pytest.raises(InvalidOptionError, match=r"MixSampler\(mix, rank=0, world_size=1\)"):
        next(iter(loader))


def test_accelerate_resume_restores_the_epoch_and_the_position_at_another_process_count(
    ds: ShardedDataset, tmp_path: Path
) -> None:
    accelerate = pytest.importorskip("accelerate")
    from accelerate.utils import DataLoaderConfiguration

    from shardio import AccelerateResume
    from shardio.core.errors import StateMismatchError
    from shardio.loading.sampling.accelerate_resume import sampler_of

    def prepared() -> tuple[Any, Any, AccelerateResume]:
        config = DataLoaderConfiguration(use_stateful_dataloader=True)
        accelerator = accelerate.Accelerator(cpu=True, dataloader_config=config)
        sampler = ShardSampler(ds, seed=3, rank=0, world_size=1)
        loader = accelerator.prepare(DataLoader(ds, batch_size=8, sampler=sampler))
        guard = AccelerateResume(loader)
        accelerator.register_for_checkpointing(guard)
        return accelerator, loader, guard

    accelerator, loader, _ = prepared()
    epoch0 = [label for batch in loader for label in batch["label"].tolist()]
    head: list[int] = []
    for step, batch in enumerate(loader, start=1):  # epoch 1
        head += batch["label"].tolist()
        if step == 4:
            accelerator.save_state(str(tmp_path / "state"))
            break
    accelerator, loader, guard = prepared()  # a new job: its loader counts epochs from 0
    accelerator.load_state(str(tmp_path / "state"))
    rest = [label for batch in loader for label in batch["label"].tolist()]
    order = ShardSampler(ds, seed=3, rank=0, world_size=1)
    assert epoch0 == order.indices(0).tolist()
    assert head + rest == order.indices(1).tolist() and len(head) == 32

    saved = torch.load(tmp_path / "state" / "custom_checkpoint_0.pkl", weights_only=False)
    assert (saved["epoch"], saved["mid_epoch"], saved["num_processes"]) == (1, True, 1)
    assert saved["sampler"]["offset"] == 32  # 4 batches of 8
    # As if saved at 2 processes after one step of 8 each: accelerate's count (4 batches,
    # loaded again) would skip 32 samples; the sampler's position says 16.
    accelerator, loader, guard = prepared()
    accelerator.load_state(str(tmp_path / "state"))
    two = {**saved, "num_processes": 2, "total_batch_size": 16}
    guard.load_state_dict({**two, "sampler": {**saved["sampler"], "offset": 16}})
    rest = [label for batch in loader for label in batch["label"].tolist()]
    assert rest == order.indices(1).tolist()[16:]
    with pytest.raises(StateMismatchError, match=r"num_processes=2 \(now 1\).*--num_processes 2"):
        guard.load_state_dict({**two, "sampler": None})  # e.g. under dispatch_batches
    guard.load_state_dict({**two, "mid_epoch": False, "epoch": 3, "sampler": None})
    restored = sampler_of(loader)
    assert restored is not None and restored.epoch == loader.iteration == 3
    with pytest.raises(InvalidOptionError, match=r"AccelerateResume\.state_dict"):
        guard.load_state_dict({"epoch": 1})
    with pytest.raises(InvalidOptionError, match=r"accelerator\.prepare"):
        AccelerateResume(DataLoader(ds, batch_size=8))


def test_a_resume_by_counting_batches_without_accelerate_resume_is_refused(
    ds: ShardedDataset, tmp_path: Path
) -> None:
    """accelerate's `skip_first_batches` and `load_state` of a stateful loader draw the
    first batches of the order again without knowing the epoch or the process count they
    were counted at: refused at the first batch, naming AccelerateResume, unless the
    user vouches for the count."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.utils import DataLoaderConfiguration

    from shardio.core.errors import StateMismatchError

    def prepared() -> tuple[Any, Any, ShardSampler]:
        config = DataLoaderConfiguration(use_stateful_dataloader=True)
        accelerator = accelerate.Accelerator(cpu=True, dataloader_config=config)
        sampler = ShardSampler(ds, seed=3, rank=0, world_size=1)
        return (
            accelerator,
            accelerator.prepare(DataLoader(ds, batch_size=8, sampler=sampler)),
            sampler,
        )

    accelerator, loader, sampler = prepared()
    with pytest.raises(StateMismatchError, match=r"skip_first_batches \(skipping 3 batches\)"):
        next(iter(accelerate.skip_first_batches(loader, 3)))
    sampler.trust_framework_resume()
    rest = [
        label
        for batch in accelerate.skip_first_batches(loader, 3)
        for label in batch["label"].tolist()
    ]
    assert rest == sampler.indices(0).tolist()[24:]

    mix = Mix({"a": ds, "b": ds}, weights={"a": 0.5, "b": 0.5}, seed=2)
    mixed = accelerator.prepare(
        DataLoader(mix, batch_size=8, sampler=MixSampler(mix, rank=0, world_size=1))
    )
    with pytest.raises(StateMismatchError, match=r"MixSampler \(epoch 0\).*skipping 2 batches"):
        next(iter(accelerate.skip_first_batches(mixed, 2)))

    accelerator, loader, sampler = prepared()
    for step, _ in enumerate(loader, start=1):
        if step == 4:
            accelerator.save_state(str(tmp_path / "state"))
            break
    accelerator, loader, sampler = prepared()
    accelerator.load_state(str(tmp_path / "state"))
    with pytest.raises(
        StateMismatchError, match=r"fast-forwarding 4 batches.*shardio\.AccelerateResume\(loader\)"
    ):
        next(iter(loader))
    accelerator, loader, sampler = prepared()
    accelerator.load_state(str(tmp_path / "state"))
    sampler.trust_framework_resume()  # the same epoch and process count: exact
    rest = [label for batch in loader for label in batch["label"].tolist()]
    assert rest == sampler.indices(0).tolist()[32:]


@pytest.mark.slow  # importing transformers' Trainer takes seconds; about 12 s on a busy machine
def test_trainer_resume_refuses_another_world_size_and_sets_the_epoch(
    ds: ShardedDataset, tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from shardio import TrainerResume
    from shardio.core.errors import StateMismatchError

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    settings = {"world_size": 1, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
    callback = TrainerResume()
    fresh = TrainerState(stateful_callbacks=[callback])
    callback.on_train_begin(args, fresh, TrainerControl())  # a first run: nothing to compare
    assert callback.state()["attributes"]["settings"] == settings
    saved = {"args": {}, "attributes": {"settings": {**settings, "world_size": 2}}}
    stored: Any = {"TrainerResume": saved}  # as the Trainer loads it from trainer_state.json
    resumed = TrainerState(global_step=4, epoch=1.25, stateful_callbacks=stored)
    with pytest.raises(StateMismatchError, match=r"world_size \(processes\) 2 \(now 1\)"):
        TrainerResume().on_train_begin(args, resumed, TrainerControl())
    saved["attributes"]["settings"] = settings
    TrainerResume().on_train_begin(args, resumed, TrainerControl())  # the same: goes on

    sampler = ShardSampler(ds, seed=0, rank=0, world_size=1)
    loader = DataLoader(ds, batch_size=8, sampler=BatchSampler(sampler, 8, False))
    TrainerResume().on_epoch_begin(args, resumed, TrainerControl(), train_dataloader=loader)
    assert sampler.epoch == 1  # the epoch in progress at step 4 of 1.25 epochs


def _doubled_x(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    # Any: ShardedDataset's hint says a dict, but with returns= a tuple comes in.
    x, label = batch
    return x * 2, label


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("accelerate.utils", "send_to_device"),
        pytest.param(  # importing Lightning alone takes seconds
            "lightning.fabric.utilities.apply_func", "move_data_to_device", marks=pytest.mark.slow
        ),
    ],
)
def test_dict_and_tuple_batches_go_through_the_frameworks_device_transfer(
    ds: ShardedDataset, module: str, name: str
) -> None:
    """accelerate's `send_to_device` and Lightning's `move_data_to_device` rebuild a batch's
    structure: our dict batch stays one (its type too), a tuple from a batch_transform a tuple."""
    move = getattr(pytest.importorskip(module), name)
    as_dict = next(iter(DataLoader(ds, batch_size=4)))
    pairs = ShardedDataset(ds.path, returns=("x", "label"), batch_transform=_doubled_x)
    as_tuple = next(iter(DataLoader(pairs, batch_size=4)))
    moved = move(as_dict, torch.device("cpu"))
    assert type(moved) is type(as_dict) and moved["label"].tolist() == [0, 1, 2, 3]
    x, label = move(as_tuple, torch.device("cpu"))
    assert label.tolist() == [0, 1, 2, 3]
    assert torch.equal(x, 2 * torch.arange(8, dtype=torch.float32).reshape(4, 2))


def test_dict_and_tuple_batches_keep_their_type_through_pin_memory(ds: ShardedDataset) -> None:
    """`pin_memory=True` runs torch's `pin_memory` on each batch: a mapping is copied
    (`copy.copy`) and updated, a tuple rebuilt. Our dict batch keeps its type and its
    refusal to be unpacked; pinning itself needs an accelerator, so on a machine without
    one the leaves are numpy arrays (which `pin_memory` passes as they are)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from shardio.loading.returns import FieldBatch

    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert type(batch) is FieldBatch
    pairs = ShardedDataset(ds.path, returns=("x", "label"), batch_transform=_doubled_x)
    as_tuple = next(iter(DataLoader(pairs, batch_size=4)))
    if torch.accelerator.is_available():
        pinned, pinned_tuple = pin_memory(batch), pin_memory(as_tuple)
        assert pinned["label"].is_pinned() and pinned_tuple[1].is_pinned()
    else:
        pinned = pin_memory(FieldBatch({k: v.numpy() for k, v in batch.items()}))
        pinned_tuple = pin_memory(tuple(t.numpy() for t in as_tuple))
    assert type(pinned) is FieldBatch and pinned is not batch
    assert pinned["label"].tolist() == [0, 1, 2, 3]
    with pytest.raises(InvalidOptionError, match="returns="):
        _x, _label = pinned
    assert type(pinned_tuple) is tuple and pinned_tuple[1].tolist() == [0, 1, 2, 3]


def test_a_loader_state_that_holds_the_sampler_s_is_not_a_counted_resume(
    ds: ShardedDataset,
) -> None:
    """torchdata hands a state it holds for the sampler to the sampler (exact), and
    fast-forwards a count only where the sampler is out of its reach."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from shardio.loading.sampling.counted_resume import _restores_sampler

    reached = StatefulDataLoader(ds, batch_size=8, sampler=ShardSampler(ds, rank=0, world_size=1))
    it = iter(reached)
    next(it)
    assert _restores_sampler(reached.state_dict())
    hidden = StatefulDataLoader(
        ds, batch_sampler=BatchSampler(ShardSampler(ds, rank=0, world_size=1), 8, False)
    )
    it = iter(hidden)
    next(it)
    assert not _restores_sampler(hidden.state_dict())
