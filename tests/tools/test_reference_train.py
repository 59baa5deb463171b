"""End to end: the reference transformer learns the synthetic task through shardio.

ShardWriter -> ShardedDataset -> ShardSampler -> DataLoader(num_workers=2) -> Prefetcher
-> train(), at a reduced size, with 8-bit saved activations and without.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from shardio import ShardedDataset
from shardio.core.errors import InvalidOptionError
from shardio.tools.reference.data import (
    MajorityTask,
    majority_labels,
    noise_floor,
    train_layout,
    write_token_dataset,
)
from shardio.tools.reference.model import ModelConfig, ReferenceTransformer
from shardio.tools.reference.train import (
    LogRecord,
    TrainResult,
    evaluate,
    heldout_batches,
    make_feed,
    train,
)

TASK = MajorityTask(vocab_size=16, seq_len=32, bias=0.2, label_noise=0.2)
NUM_TRAIN, NUM_HELDOUT = 2048, 512
STEPS, BATCH = 150, 32
SHORT_STEPS = 66  # just over one epoch of the 2048 training samples
SHORT_BOUND = 0.7  # held-out loss / chance after SHORT_STEPS; measured 0.54 for both
CHANCE = math.log(TASK.num_classes)


def _counter_majority(row: np.ndarray) -> int:
    counts = Counter(int(t) for t in row)
    best = max(counts.values())
    return min(t for t, c in counts.items() if c == best)


# ------------------------------------------------------------------------ data
def test_generation_is_deterministic_per_seed() -> None:
    a, b = TASK.generate(300, seed=7), TASK.generate(300, seed=7)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.noisy, b.noisy)
    other = TASK.generate(300, seed=8)
    assert not np.array_equal(a.tokens, other.tokens)
    assert a.tokens.shape == (300, TASK.seq_len) and a.tokens.dtype == np.int64
    assert a.labels.shape == (300,) and a.labels.dtype == np.int64
    assert a.tokens.min() >= 0 and a.tokens.max() < TASK.vocab_size


def test_labels_are_the_majority_token_except_the_noisy_ones() -> None:
    data = TASK.generate(2000, seed=3)
    expected = np.array([_counter_majority(row) for row in data.tokens])
    clean = ~data.noisy
    np.testing.assert_array_equal(data.labels[clean], expected[clean])
    assert abs(data.noisy.mean() - TASK.label_noise) < 0.04
    # a random replacement mostly differs from the majority: noise is really there
    assert (data.labels[data.noisy] != expected[data.noisy]).mean() > 0.8


def test_majority_ties_go_to_the_smallest_token() -> None:
    tokens = np.array([[3, 1, 3, 1, 0], [2, 2, 2, 0, 0], [4, 4, 0, 0, 1]])
    np.testing.assert_array_equal(majority_labels(tokens, 5), [1, 2, 0])


def test_noise_floor_matches_a_direct_computation() -> None:
    assert noise_floor(16, 0.0) == 0.0
    assert noise_floor(16, 1.0) == pytest.approx(math.log(16))
    data = TASK.generate(20000, seed=0)
    truth = majority_labels(data.tokens, TASK.vocab_size)
    right = (data.labels == truth).mean()
    empirical = -(right * math.log(right) + (1 - right) * math.log((1 - right) / 15))
    assert TASK.noise_floor() == pytest.approx(empirical, rel=0.03)
    other = TASK.label_noise / 16  # the best model's probability of each wrong class
    best = -(right * math.log(1 - TASK.label_noise + other) + (1 - right) * math.log(other))
    assert TASK.best_loss(data.tokens, data.labels) == pytest.approx(best, rel=1e-9)


def test_train_layout_keeps_a_prefix_of_the_shards() -> None:
    assert train_layout((10, 10, 10), (100, 100, 100), 15) == ((10, 5), (100, 50))
    assert train_layout((10, 10), (100, 100), 20) == ((10, 10), (100, 100))


def test_writing_shards_round_trips(tmp_path: Path) -> None:
    data = TASK.generate(100, seed=1)
    manifest = write_token_dataset(tmp_path / "d", data, format="lmdb", num_shards=3)
    assert len(manifest.shards) == 3
    with ShardedDataset(tmp_path / "d") as ds:
        np.testing.assert_array_equal(ds.read_batch(np.arange(100))["tokens"], data.tokens)
        np.testing.assert_array_equal(ds.read_batch(np.arange(100))["label"], data.labels)


# --------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> ShardedDataset:
    path = tmp_path_factory.mktemp("reference") / "majority.shardio"
    write_token_dataset(path, TASK.generate(NUM_TRAIN + NUM_HELDOUT, seed=0), num_shards=4)
    return ShardedDataset(path)


def _cfg() -> ModelConfig:
    return ModelConfig(
        vocab_size=TASK.vocab_size,
        num_classes=TASK.num_classes,
        max_len=TASK.seq_len,
        d_model=64,
        n_heads=4,
        n_layers=2,
    )


def _train(dataset: ShardedDataset, quantize: bool, steps: int) -> tuple[TrainResult, float, float]:
    torch.manual_seed(0)
    model = ReferenceTransformer(_cfg(), quantize=quantize)
    feed = make_feed(
        dataset, num_train=NUM_TRAIN, batch_size=BATCH, workers=2, seed=0, device="cpu"
    )
    records: list[LogRecord] = []
    try:
        result = train(
            model,
            feed,
            steps=steps,
            lr=3e-3,
            log_every=steps // 3,
            on_log=records.append,
            waited=lambda: feed.wait_seconds,
        )
    finally:
        feed.close()
    assert multiprocessing.active_children() == []  # the DataLoader workers are gone
    assert [r.step for r in records] == [steps // 3, 2 * steps // 3, steps]
    assert feed.epoch == steps * BATCH // NUM_TRAIN  # one sampler pass per epoch
    assert result.samples == steps * BATCH and len(result.losses) == steps
    assert 0.0 <= result.wait_fraction < 1.0
    loss, accuracy = evaluate(model, heldout_batches(dataset, NUM_TRAIN, 128, "cpu"))
    return result, loss, accuracy


@pytest.fixture(scope="module")
def runs(dataset: ShardedDataset) -> dict[bool, tuple[TrainResult, float, float]]:
    return {quantize: _train(dataset, quantize, STEPS) for quantize in (True, False)}


def test_a_short_run_learns_with_either_setting(dataset: ShardedDataset) -> None:
    """The fast version of the two slow tests below: one epoch, both settings."""
    short = {quantize: _train(dataset, quantize, SHORT_STEPS) for quantize in (True, False)}
    for result, heldout_loss, _ in short.values():
        assert result.losses[0] > 0.9 * CHANCE
        assert heldout_loss < SHORT_BOUND * CHANCE
    quantized, exact = short[True][1], short[False][1]
    assert abs(quantized - exact) / exact < 0.05, (quantized, exact)
    assert quantized != exact


@pytest.mark.slow
@pytest.mark.parametrize("quantize", [True, False], ids=["8bit", "exact"])
def test_loss_falls_well_below_chance(
    runs: dict[bool, tuple[TrainResult, float, float]], quantize: bool
) -> None:
    result, heldout_loss, accuracy = runs[quantize]
    assert result.losses[0] > 0.9 * CHANCE  # it starts near chance ...
    assert heldout_loss < 0.55 * CHANCE  # ... and ends far below it
    assert result.final_loss < 0.6 * CHANCE
    assert accuracy > 0.6


@pytest.mark.slow
def test_quantized_and_exact_final_losses_agree(
    runs: dict[bool, tuple[TrainResult, float, float]],
) -> None:
    quantized, exact = runs[True][1], runs[False][1]
    assert abs(quantized - exact) / exact < 0.02, (quantized, exact)
    assert quantized != exact  # the two runs did differ: quantization was really on


def test_evaluate_counts_loss_and_accuracy() -> None:
    # tokens (B, 1) -> logits (B, 4) peaked at the token itself
    embedding = torch.nn.Embedding(4, 4)
    with torch.no_grad():
        embedding.weight.copy_(torch.eye(4) * 100)
    model = torch.nn.Sequential(embedding, torch.nn.Flatten(1))
    batch = {"tokens": torch.tensor([[0], [1], [2], [3]]), "label": torch.tensor([0, 1, 2, 0])}
    loss, accuracy = evaluate(model, [batch])
    assert accuracy == 0.75
    assert loss == pytest.approx(100 / 4, rel=1e-4)  # one sample is wrong by a margin of 100


def test_train_rejects_zero_steps_and_too_few_batches() -> None:
    with pytest.raises(InvalidOptionError, match="steps"):
        train(torch.nn.Linear(1, 1), [], steps=0)
    model = torch.nn.Sequential(torch.nn.Embedding(4, 4), torch.nn.Flatten(1))
    batch = {"tokens": torch.tensor([[0], [1]]), "label": torch.tensor([0, 1])}
    with pytest.raises(InvalidOptionError, match="ran out after 2 steps"):
        train(model, [batch, batch], steps=3)


def test_a_progress_line_comes_at_least_every_log_seconds() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(4, 4), torch.nn.Flatten(1))
    batch = {"tokens": torch.tensor([[0], [1]]), "label": torch.tensor([0, 1])}

    def slow_batches() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            time.sleep(0.05)  # a slow machine: each step takes 50 ms
            yield batch

    timed: list[LogRecord] = []
    train(model, slow_batches(), steps=8, log_every=100, log_seconds=0.12, on_log=timed.append)
    assert len(timed) >= 3 and timed[-1].step == 8  # every 2 to 3 steps, and the last
    steps = [r.step for r in timed]
    assert all(b - a <= 3 for a, b in itertools.pairwise(steps)), steps
    only_last: list[LogRecord] = []
    train(model, slow_batches(), steps=8, log_every=100, on_log=only_last.append)
    assert [r.step for r in only_last] == [8]
