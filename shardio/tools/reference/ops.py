"""Autograd functions that compute exactly but keep 8-bit activations for backward.

Each forward runs the ordinary op on the exact input; what it saves for backward is the
`HeadwiseQuantizer` codes of the activation (never the fp32 tensor), and
backward dequantizes them and runs the ordinary gradient formula.  Everything saved goes
through ``ctx.save_for_backward`` so ``saved_tensors_hooks`` see (and can count) it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .quant import HeadwiseQuantizer, Packed

__all__ = [
    "quantized_linear",
    "quantized_gelu",
    "quantized_softmax",
    "quantized_layer_norm",
    "quantized_matmul",
    "quantized_attention",
]


def _save(ctx: Any, *packed: Packed, extra: tuple[Tensor | None, ...] = ()) -> None:
    tensors: list[Tensor | None] = []
    for item in packed:
        tensors += [item.codes, item.step, item.minimum]
    ctx.save_for_backward(*tensors, *extra)
    ctx.num_packed = len(packed)


def _load(ctx: Any) -> tuple[list[Packed], tuple[Tensor, ...]]:
    saved = ctx.saved_tensors
    count = 3 * ctx.num_packed
    packed = [Packed(*saved[i : i + 3]) for i in range(0, count, 3)]
    return packed, saved[count:]


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, quantizer: HeadwiseQuantizer
    ) -> Tensor:
        _save(ctx, quantizer.pack(x), extra=(weight,))
        ctx.quantizer, ctx.dtype, ctx.has_bias = quantizer, x.dtype, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (packed,), (weight,) = _load(ctx)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            x = ctx.quantizer.unpack(packed, ctx.dtype)
            grad_w = grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, quantizer: HeadwiseQuantizer) -> Tensor:
        _save(ctx, quantizer.pack(x))
        ctx.quantizer, ctx.dtype = quantizer, x.dtype
        return F.gelu(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (packed,), _ = _load(ctx)
        x = ctx.quantizer.unpack(packed, ctx.dtype)
        return torch.ops.aten.gelu_backward(grad, x), None


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, quantizer: HeadwiseQuantizer) -> Tensor:
        y = torch.softmax(x, dim=-1)
        _save(ctx, quantizer.pack(y))
        ctx.quantizer, ctx.dtype = quantizer, x.dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (packed,), _ = _load(ctx)
        y = ctx.quantizer.unpack(packed, ctx.dtype)
        return torch.ops.aten._softmax_backward_data(grad, y, -1, ctx.dtype), None


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: float,
        quantizer: HeadwiseQuantizer,
    ) -> Tensor:
        shape = [x.shape[-1]]
        out, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, weight, bias, eps)
        # mean and rstd are one number per row: kept exact, they cost little.
        _save(ctx, quantizer.pack(x), extra=(mean, rstd, weight, bias))
        ctx.quantizer, ctx.dtype, ctx.shape = quantizer, x.dtype, shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (packed,), (mean, rstd, weight, bias) = _load(ctx)
        x = ctx.quantizer.unpack(packed, ctx.dtype)
        grads = torch.ops.aten.native_layer_norm_backward(
            grad, x, ctx.shape, mean, rstd, weight, bias, list(ctx.needs_input_grad[:3])
        )
        return grads[0], grads[1], grads[2], None, None


class _MatMul(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, a: Tensor, b: Tensor, quant_a: HeadwiseQuantizer, quant_b: HeadwiseQuantizer
    ) -> Tensor:
        _save(ctx, quant_a.pack(a), quant_b.pack(b))
        ctx.quantizers, ctx.dtype = (quant_a, quant_b), a.dtype
        return a @ b

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (packed_a, packed_b), _ = _load(ctx)
        quant_a, quant_b = ctx.quantizers
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = grad @ quant_b.unpack(packed_b, ctx.dtype).transpose(-2, -1)
        if ctx.needs_input_grad[1]:
            grad_b = quant_a.unpack(packed_a, ctx.dtype).transpose(-2, -1) @ grad
        return grad_a, grad_b, None, None


class _Attention(torch.autograd.Function):
    """softmax(q k^T * scale) v, keeping q, k, v and the probabilities once each."""

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        scale: float,
        quantizers: tuple[HeadwiseQuantizer, ...],
    ) -> Tensor:
        probs = torch.softmax((q @ k.transpose(-2, -1)).mul_(scale), dim=-1)
        out = probs @ v
        quant_q, quant_k, quant_v, quant_p = quantizers
        _save(ctx, quant_q.pack(q), quant_k.pack(k), quant_v.pack(v), quant_p.pack(probs))
        ctx.quantizers, ctx.dtype, ctx.scale = quantizers, q.dtype, scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        packed, _ = _load(ctx)
        q, k, v, probs = (
            quantizer.unpack(item, ctx.dtype)
            for quantizer, item in zip(ctx.quantizers, packed, strict=True)
        )
        grad_v = probs.transpose(-2, -1) @ grad
        grad_probs = grad @ v.transpose(-2, -1)
        grad_scores = torch.ops.aten._softmax_backward_data(grad_probs, probs, -1, ctx.dtype)
        grad_scores.mul_(ctx.scale)
        return grad_scores @ k, grad_scores.transpose(-2, -1) @ q, grad_v, None, None


def quantized_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, quantizer: HeadwiseQuantizer
) -> Tensor:
    """``F.linear`` that keeps its input in 8 bits for backward."""
    return _Linear.apply(x, weight, bias, quantizer)


def quantized_gelu(x: Tensor, quantizer: HeadwiseQuantizer) -> Tensor:
    """``F.gelu`` (erf form) that keeps its input in 8 bits for backward."""
    return _Gelu.apply(x, quantizer)


def quantized_softmax(x: Tensor, quantizer: HeadwiseQuantizer) -> Tensor:
    """Softmax over the last dim that keeps its output in 8 bits for backward."""
    return _Softmax.apply(x, quantizer)


def quantized_layer_norm(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float, quantizer: HeadwiseQuantizer
) -> Tensor:
    """Layer norm over the last dim that keeps its input in 8 bits for backward."""
    return _LayerNorm.apply(x, weight, bias, eps, quantizer)


def quantized_matmul(
    a: Tensor, b: Tensor, quant_a: HeadwiseQuantizer, quant_b: HeadwiseQuantizer
) -> Tensor:
    """``a @ b`` over heads, keeping both operands in 8 bits for backward."""
    return _MatMul.apply(a, b, quant_a, quant_b)


def quantized_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, quantizers: tuple[HeadwiseQuantizer, ...]
) -> Tensor:
    """Fused ``softmax(q @ k^T * scale) @ v`` keeping q, k, v and probabilities once each.

    ``quantizers`` are the four 'heads' quantizers for q, k, v and the probabilities.
    """
    return _Attention.apply(q, k, v, scale, quantizers)
