"""Token-sequence datasets for the reference model: a synthetic task, and checks on a user's.

The synthetic task is *majority token*: each sequence is drawn around one token, which
appears more often than the others, and the label is the sequence's most frequent token
(ties go to the smallest token id).  A fixed fraction of labels is then replaced by a
uniformly random class, so the best achievable loss is known and well above zero
(`noise_floor`): two training runs that both learn the task end near the same loss.

Needs no torch of its own: generation and writing use numpy and `shardio.ShardWriter`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shardio import DatasetReader, Manifest, Schema, ShardWriter
from shardio.core.errors import InvalidOptionError, SchemaError

__all__ = [
    "TOKENS",
    "LABEL",
    "MajorityTask",
    "TokenData",
    "TokenSpec",
    "majority_labels",
    "noise_floor",
    "write_token_dataset",
    "inspect_token_dataset",
    "train_layout",
]

TOKENS = "tokens"
LABEL = "label"
_SCAN_CHUNK = 8192  # samples read at a time when scanning a dataset's value ranges


@dataclass(frozen=True)
class TokenData:
    """Token sequences ``tokens`` (n, seq_len) and their integer ``labels`` (n,)."""

    tokens: np.ndarray
    labels: np.ndarray
    noisy: np.ndarray  # True where the label was replaced by a random class

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class MajorityTask:
    """The synthetic majority-token task; `generate` is a pure function of the fields.

    Each sequence picks a token ``c``; every position is ``c`` with probability ``bias``
    and a uniformly random token otherwise.  The label is the majority token, replaced
    with probability ``label_noise`` by a uniformly random class.
    """

    vocab_size: int = 16
    seq_len: int = 64
    bias: float = 0.2
    label_noise: float = 0.2

    def __post_init__(self) -> None:
        if self.vocab_size < 2 or self.seq_len < 1:
            raise InvalidOptionError(
                f"vocab_size should be >= 2 and seq_len >= 1, but got "
                f"vocab_size={self.vocab_size}, seq_len={self.seq_len}"
            )
        for name in ("bias", "label_noise"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidOptionError(f"{name} should be in [0, 1], but got {name}={value}")

    @property
    def num_classes(self) -> int:
        return self.vocab_size

    def generate(self, num_samples: int, seed: int) -> TokenData:
        """``num_samples`` sequences and labels, the same for the same ``seed``."""
        rng = np.random.default_rng(seed)
        shape = (num_samples, self.seq_len)
        planted = rng.integers(0, self.vocab_size, size=num_samples)
        uniform = rng.integers(0, self.vocab_size, size=shape)
        tokens = np.where(rng.random(shape) < self.bias, planted[:, None], uniform)
        labels = majority_labels(tokens, self.vocab_size)
        noisy = rng.random(num_samples) < self.label_noise
        labels[noisy] = rng.integers(0, self.vocab_size, size=int(noisy.sum()))
        return TokenData(tokens.astype(np.int64), labels.astype(np.int64), noisy)

    def noise_floor(self) -> float:
        """The expected loss of a model that knows every sequence's majority token."""
        return noise_floor(self.num_classes, self.label_noise)

    def best_loss(self, tokens: np.ndarray, labels: np.ndarray) -> float:
        """The loss on these samples of the best model: the one that knows the majority
        token and the noise rate (`noise_floor` is its expectation)."""
        other = self.label_noise / self.num_classes
        right = 1.0 - self.label_noise + other
        hits = majority_labels(tokens, self.vocab_size) == np.asarray(labels)
        miss = -math.log(other) if other > 0 else math.inf
        return float(np.mean(np.where(hits, -math.log(right), miss)))


def majority_labels(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """The most frequent token of each row of ``tokens``; ties go to the smallest id."""
    rows = np.arange(len(tokens))[:, None]
    counts = np.zeros((len(tokens), vocab_size), dtype=np.int64)
    np.add.at(counts, (rows, tokens), 1)
    return np.asarray(counts.argmax(axis=1), dtype=np.int64)  # argmax: first of ties


def noise_floor(num_classes: int, label_noise: float) -> float:
    """Cross-entropy of the true label distribution when a ``label_noise`` fraction of
    labels is uniformly random: the lowest expected loss any model can reach."""
    other = label_noise / num_classes
    right = 1.0 - label_noise + other
    floor = -right * math.log(right)
    if other > 0:
        floor -= (num_classes - 1) * other * math.log(other)
    return floor


def write_token_dataset(
    path: str | os.PathLike[str],
    data: TokenData,
    *,
    format: str = "mmap",
    num_shards: int = 4,
    overwrite: bool = False,
) -> Manifest:
    """Write ``data`` as a sharded dataset of fields ``tokens`` and ``label``, cut into
    about ``num_shards`` shards."""
    if num_shards < 1:
        raise InvalidOptionError(f"num_shards should be >= 1, but got num_shards={num_shards}")
    sample_bytes = data.tokens[0].nbytes + data.labels[0].nbytes
    shard_size = sample_bytes * math.ceil(len(data) / num_shards)
    with ShardWriter(path, format=format, shard_size=shard_size, overwrite=overwrite) as writer:
        writer.write_batch({TOKENS: data.tokens, LABEL: data.labels})
    assert writer.manifest is not None
    return writer.manifest


@dataclass(frozen=True)
class TokenSpec:
    """What a model needs to know about a token dataset."""

    num_samples: int
    seq_len: int
    vocab_size: int
    num_classes: int


def _check_schema(schema: Schema, path: str) -> int:
    """The sequence length of a valid token schema; a SchemaError naming the field if not."""
    expected = {
        TOKENS: "an integer array of shape (N,)",
        LABEL: "an integer scalar of shape ()",
    }
    for name, what in expected.items():
        if name not in schema:
            raise SchemaError(
                f"{path}: field {name!r} is missing; a token dataset needs {TOKENS!r} "
                f"({expected[TOKENS]}) and {LABEL!r} ({expected[LABEL]}), "
                f"but its fields are {list(schema.names)}"
            )
        field = schema[name]
        shape_ok = len(field.shape) == (1 if name == TOKENS else 0)
        if field.kind != "array" or not shape_ok or not np.issubdtype(field.dtype, np.integer):
            got = field.kind if field.kind != "array" else f"{field.dtype} of shape {field.shape}"
            raise SchemaError(f"{path}: field {name!r} should be {what}, but it is {got}")
    seq_len = int(schema[TOKENS].shape[0])
    if seq_len < 1:
        raise SchemaError(f"{path}: field {TOKENS!r} holds empty sequences (shape (0,))")
    return seq_len


def _value_range(reader: DatasetReader, name: str, path: str) -> int:
    """One more than the largest value of integer field ``name``; SchemaError if negative."""
    low, high = 0, 0
    for start in range(0, len(reader), _SCAN_CHUNK):
        stop = min(start + _SCAN_CHUNK, len(reader))
        column = reader.read_many(np.arange(start, stop, dtype=np.int64))[name]
        low, high = min(low, int(column.min())), max(high, int(column.max()))
    if low < 0:
        raise SchemaError(f"{path}: field {name!r} holds negative values (min {low})")
    return high + 1


def inspect_token_dataset(path: str | os.PathLike[str]) -> TokenSpec:
    """Check that ``path`` is a dataset of token sequences and measure its vocabulary.

    Raises `DatasetNotFoundError` for a missing path and
    `SchemaError` naming the field that is missing or malformed.
    """
    where = os.fspath(path)
    reader = DatasetReader(where)
    try:
        seq_len = _check_schema(reader.schema, where)
        if len(reader) < 2:
            raise SchemaError(f"{where}: a token dataset needs at least 2 samples")
        vocab = _value_range(reader, TOKENS, where)
        classes = _value_range(reader, LABEL, where)
    finally:
        reader.close()
    return TokenSpec(len(reader), seq_len, max(vocab, 2), max(classes, 2))


def train_layout(
    shard_lengths: Sequence[int], shard_nbytes: Sequence[int], num_train: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shard lengths and sizes of the first ``num_train`` samples of a dataset, for a
    sampler that must not visit the held-out samples after them."""
    lengths: list[int] = []
    nbytes: list[int] = []
    left = num_train
    for length, size in zip(shard_lengths, shard_nbytes, strict=True):
        if left <= 0:
            break
        taken = min(length, left)
        lengths.append(taken)
        nbytes.append(max(1, size * taken // max(length, 1)))
        left -= taken
    return tuple(lengths), tuple(nbytes)
