"""`returns=`: the tuple loop of a hand-written Dataset runs unchanged after the swap."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from handwritten import H5Tuples, tuple_loop, write_images
from torch.utils.data import DataLoader

from shardio import Loader, Prefetcher, ShardedDataset
from shardio.core.errors import FieldNotFoundError, InvalidOptionError
from shardio.loading.returns import FieldBatch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def h5(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, np.ndarray]:
    path = str(tmp_path_factory.mktemp("returns") / "train.h5")
    images, labels = write_images(path)
    return path, images, labels


@pytest.mark.parametrize("context", [None, "fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_tuple_loop_runs_unchanged_after_the_swap(h5: tuple, context: str | None) -> None:
    path, images, labels = h5
    workers = 0 if context is None else 2
    kwargs = {"batch_size": 5, "num_workers": workers, "multiprocessing_context": context}
    before = tuple_loop(DataLoader(H5Tuples(path), **kwargs))
    after = tuple_loop(DataLoader(ShardedDataset(path, returns=("images", "labels")), **kwargs))
    for old, new in zip(before, after, strict=True):
        assert torch.equal(old, new)
    assert torch.equal(after[0], torch.from_numpy(images).float())
    assert torch.equal(after[1], torch.from_numpy(labels))


def test_returns_holds_for_samples_loader_and_prefetcher(h5: tuple) -> None:
    path, images, labels = h5
    ds = ShardedDataset(path, returns=("images", "labels"))
    image, label = ds[3]
    assert np.array_equal(image, images[3]) and int(label) == labels[3]
    from_loader = tuple_loop(Loader(ds, batch_size=4))
    from_prefetcher = tuple_loop(Prefetcher(Loader(ds, batch_size=4), device="cpu"))
    for got in (from_loader, from_prefetcher):
        assert torch.equal(got[0], torch.from_numpy(images).float())
        assert torch.equal(got[1], torch.from_numpy(labels))
    # A dict structure renames; a single name gives the bare tensor.
    renamed = next(iter(DataLoader(ShardedDataset(path, returns={"x": "images"}), batch_size=2)))
    assert list(renamed) == ["x"] and torch.equal(renamed["x"], torch.from_numpy(images[:2]))
    only = next(iter(DataLoader(ShardedDataset(path, returns="labels"), batch_size=3)))
    assert torch.equal(only, torch.from_numpy(labels[:3]))
    assert pickle.loads(pickle.dumps(ds)).returns.spec == ("images", "labels")


def test_transforms_get_the_structure(h5: tuple) -> None:
    path, images, labels = h5

    ds = ShardedDataset(path, returns=("images", "labels"), batch_transform=_scale)
    got_images, got_labels = next(iter(DataLoader(ds, batch_size=4)))
    assert torch.equal(got_images, torch.from_numpy(images[:4]).float() / 255)
    assert torch.equal(got_labels, torch.from_numpy(labels[:4]))
    per_sample = ShardedDataset(path, returns=("images", "labels"), transform=_flip)
    got_images, _ = next(iter(DataLoader(per_sample, batch_size=4)))
    assert torch.equal(got_images, torch.from_numpy(np.ascontiguousarray(images[:4, :, ::-1])))


def _scale(batch: tuple) -> tuple:
    images, labels = batch
    return images.float() / 255, labels


def _flip(sample: tuple) -> tuple:
    image, label = sample
    return np.ascontiguousarray(image[:, ::-1]), label


def test_unpacking_a_dict_batch_names_returns(h5: tuple) -> None:
    path, _, _ = h5
    loader = DataLoader(ShardedDataset(path), batch_size=4)
    batch = next(iter(loader))
    assert isinstance(batch, FieldBatch)
    assert list(batch) == ["images", "labels"] and [k for k in batch] == ["images", "labels"]
    assert dict(batch).keys() == {"images", "labels"}
    with pytest.raises(InvalidOptionError, match=r"returns=\('images', 'labels'\)"):
        _images, _labels = batch
    with pytest.raises(InvalidOptionError, match="key strings"):
        tuple_loop(loader)
    # It crosses to the main process from a worker as the same kind of batch.
    from_worker = next(iter(DataLoader(ShardedDataset(path), batch_size=4, num_workers=1)))
    assert isinstance(from_worker, FieldBatch)


def test_returns_naming_a_missing_field_says_which(h5: tuple) -> None:
    path, _, _ = h5
    with pytest.raises(FieldNotFoundError, match=r"returns\[1\] names field 'label'.*'labels'"):
        ShardedDataset(path, returns=("images", "label"))
    with pytest.raises(InvalidOptionError, match="returns should be"):
        ShardedDataset(path, returns=3)
