"""A small pre-norm transformer encoder for sequence classification.

Every activation it keeps for backward goes through a `.layers` module, so one
switch (`ReferenceTransformer.quantize`) runs the same weights with exact or 8-bit
saved activations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from shardio.core.config import positive_int
from shardio.core.errors import InvalidOptionError

from .layers import (
    ExactKernel,
    QuantAttention,
    QuantGELU,
    QuantLayerNorm,
    QuantLinear,
    set_quantize,
)

__all__ = ["ModelConfig", "ReferenceTransformer"]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the reference model; ``d_model`` must divide by ``n_heads``."""

    vocab_size: int
    num_classes: int
    max_len: int
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    mlp_ratio: int = 4
    fused_attention: bool = True
    exact_attention: ExactKernel = "matmul"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_classes", "max_len", "d_model", "n_heads", "n_layers"):
            positive_int(getattr(self, name), name)
        if self.exact_attention not in ("matmul", "sdpa"):
            raise InvalidOptionError(
                f"exact_attention should be 'matmul' or 'sdpa', but got {self.exact_attention!r}"
            )
        if self.d_model % self.n_heads:
            raise InvalidOptionError(
                f"d_model should be divisible by n_heads, but got d_model={self.d_model}, "
                f"n_heads={self.n_heads}"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int) -> None:
        super().__init__()
        d, h = cfg.d_model, cfg.n_heads
        self.heads = h
        self.norm1 = QuantLayerNorm(d, h, seed=seed)
        self.qkv = QuantLinear(d, 3 * d, h, seed=seed + 1)
        self.attention = QuantAttention(
            h, fused=cfg.fused_attention, exact_kernel=cfg.exact_attention, seed=seed + 2
        )
        self.proj = QuantLinear(d, d, h, seed=seed + 6)
        self.norm2 = QuantLayerNorm(d, h, seed=seed + 7)
        self.fc1 = QuantLinear(d, cfg.mlp_ratio * d, h, seed=seed + 8)
        self.gelu = QuantGELU(h, seed=seed + 9)
        self.fc2 = QuantLinear(cfg.mlp_ratio * d, d, h, seed=seed + 10)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D)
        mixed = self.attention(q, k, v).transpose(1, 2).reshape(batch, length, width)
        x = x + self.proj(mixed)
        return x + self.fc2(self.gelu(self.fc1(self.norm2(x))))


class ReferenceTransformer(nn.Module):
    """Token ids ``(B, N)`` -> class logits ``(B, num_classes)``, mean-pooled encoder."""

    def __init__(self, cfg: ModelConfig, quantize: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tokens = nn.Embedding(cfg.vocab_size, d)
        self.positions = nn.Embedding(cfg.max_len, d)
        self.blocks = nn.ModuleList(
            _Block(cfg, seed=cfg.seed + 16 * i) for i in range(cfg.n_layers)
        )
        self.norm = QuantLayerNorm(d, cfg.n_heads, seed=cfg.seed + 16 * cfg.n_layers)
        self.head = QuantLinear(
            d, cfg.num_classes, cfg.n_heads, seed=cfg.seed + 16 * cfg.n_layers + 1
        )
        self._quantize = quantize
        set_quantize(self, quantize)

    @property
    def quantize(self) -> bool:
        """Whether activations are kept in 8 bits for backward (else exact fp32)."""
        return self._quantize

    @quantize.setter
    def quantize(self, value: bool) -> None:
        self._quantize = bool(value)
        set_quantize(self, self._quantize)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.cfg.max_len:
            raise InvalidOptionError(
                f"tokens should be shaped (batch, length) with length <= max_len="
                f"{self.cfg.max_len}, but got shape {tuple(tokens.shape)}"
            )
        positions = self.positions.weight[: tokens.shape[1]]
        x = self.tokens(tokens) + positions
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))
