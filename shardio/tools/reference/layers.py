"""Modules that switch between exact and 8-bit saved activations.

With ``quantize=False`` each module is the plain torch op (autograd keeps fp32 tensors);
with ``quantize=True`` it runs the matching function from `.ops`.  Set the flag on a
whole model with `set_quantize`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shardio.core.errors import InvalidOptionError

from .ops import (
    quantized_attention,
    quantized_gelu,
    quantized_layer_norm,
    quantized_linear,
    quantized_matmul,
    quantized_softmax,
)
from .quant import HeadwiseQuantizer

__all__ = [
    "ExactKernel",
    "QuantModule",
    "QuantLinear",
    "QuantGELU",
    "QuantSoftmax",
    "QuantLayerNorm",
    "QuantMatMul",
    "QuantAttention",
    "set_quantize",
]

ExactKernel = Literal["matmul", "sdpa"]


class QuantModule(nn.Module):
    """Base of the switchable modules: ``quantize`` picks 8-bit or exact saving."""

    quantize: bool


class QuantLinear(nn.Linear, QuantModule):
    """``nn.Linear`` whose input is kept in 8 bits, in ``groups`` channel blocks."""

    def __init__(
        self, in_features: int, out_features: int, groups: int, bias: bool = True, seed: int = 0
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.quantize = True
        self.quantizer = HeadwiseQuantizer(groups, "channels", seed=seed)

    def forward(self, x: Tensor) -> Tensor:
        if self.quantize and torch.is_grad_enabled():
            return quantized_linear(x, self.weight, self.bias, self.quantizer)
        return F.linear(x, self.weight, self.bias)


class QuantGELU(QuantModule):
    """GELU (erf form) whose input is kept in 8 bits, in ``groups`` channel blocks."""

    def __init__(self, groups: int, seed: int = 0) -> None:
        super().__init__()
        self.quantize = True
        self.quantizer = HeadwiseQuantizer(groups, "channels", seed=seed)

    def forward(self, x: Tensor) -> Tensor:
        if self.quantize and torch.is_grad_enabled():
            return quantized_gelu(x, self.quantizer)
        return F.gelu(x)


class QuantSoftmax(QuantModule):
    """Softmax over the last dim of ``(B, H, N, N)`` scores; output kept per head."""

    def __init__(self, heads: int, seed: int = 0) -> None:
        super().__init__()
        self.quantize = True
        self.quantizer = HeadwiseQuantizer(heads, "heads", seed=seed)

    def forward(self, x: Tensor) -> Tensor:
        if self.quantize and torch.is_grad_enabled():
            return quantized_softmax(x, self.quantizer)
        return torch.softmax(x, dim=-1)


class QuantLayerNorm(nn.LayerNorm, QuantModule):
    """``nn.LayerNorm`` over the last dim whose input is kept in 8 bits."""

    def __init__(self, features: int, groups: int, eps: float = 1e-5, seed: int = 0) -> None:
        super().__init__(features, eps=eps)
        self.quantize = True
        self.quantizer = HeadwiseQuantizer(groups, "channels", seed=seed)

    def forward(self, x: Tensor) -> Tensor:
        if self.quantize and torch.is_grad_enabled():
            return quantized_layer_norm(x, self.weight, self.bias, self.eps, self.quantizer)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class QuantMatMul(QuantModule):
    """``a @ b`` for ``(B, H, ...)`` operands, both kept per head."""

    def __init__(self, heads: int, seed: int = 0) -> None:
        super().__init__()
        self.quantize = True
        self.quant_a = HeadwiseQuantizer(heads, "heads", seed=seed)
        self.quant_b = HeadwiseQuantizer(heads, "heads", seed=seed + 1)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.quantize and torch.is_grad_enabled():
            return quantized_matmul(a, b, self.quant_a, self.quant_b)
        return a @ b


class QuantAttention(QuantModule):
    """``softmax(q k^T / sqrt(d)) v`` over ``(B, H, N, D)`` q, k, v.

    ``fused=True`` (the default) keeps q, k, v and the probabilities once each; the
    unfused path chains `QuantMatMul`, `QuantSoftmax` and
    `QuantMatMul`, which keeps the probabilities twice (the softmax output and the
    second matmul's input are quantized separately).  With ``quantize=False``,
    ``exact_kernel`` picks plain matmul-softmax-matmul or torch's fused
    ``scaled_dot_product_attention``, which keeps no N x N matrix at all.
    """

    def __init__(
        self, heads: int, fused: bool = True, exact_kernel: ExactKernel = "matmul", seed: int = 0
    ) -> None:
        super().__init__()
        if exact_kernel not in ("matmul", "sdpa"):
            raise InvalidOptionError(
                f"exact_kernel should be 'matmul' or 'sdpa', but got exact_kernel={exact_kernel!r}"
            )
        self.quantize = True
        self.fused = fused
        self.exact_kernel: ExactKernel = exact_kernel
        self.scores = QuantMatMul(heads, seed=seed)
        self.softmax = QuantSoftmax(heads, seed=seed + 2)
        self.mix = QuantMatMul(heads, seed=seed + 3)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        scale = 1.0 / math.sqrt(q.shape[-1])
        if self.quantize and self.fused and torch.is_grad_enabled():
            quantizers = (
                self.scores.quant_a,
                self.scores.quant_b,
                self.mix.quant_b,
                self.softmax.quantizer,
            )
            return quantized_attention(q, k, v, scale, quantizers)
        if not self.quantize and self.exact_kernel == "sdpa":
            return F.scaled_dot_product_attention(q, k, v)
        if not self.quantize:
            probs = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
            return probs @ v
        # Multiplying by a Python scalar keeps nothing for backward.
        return self.mix(self.softmax(self.scores(q, k.transpose(-2, -1)) * scale), v)


def set_quantize(module: nn.Module, quantize: bool) -> None:
    """Switch every `QuantModule` inside ``module`` to 8-bit or exact saving."""
    for child in module.modules():
        if isinstance(child, QuantModule):
            child.quantize = quantize
