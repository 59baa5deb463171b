"""Each 8-bit-saving op against its exact counterpart: same forward, close gradient."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from shardio.core.errors import InvalidOptionError, ShardioError
from shardio.tools.reference.layers import (
    QuantAttention,
    QuantGELU,
    QuantLayerNorm,
    QuantLinear,
    QuantMatMul,
    QuantSoftmax,
)
from shardio.tools.reference.quant import HeadwiseQuantizer

# Relative L2 error allowed between the 8-bit and the exact gradient.  8 bits give a step
# of range/255; the measured errors are about 1% for the ops whose saved tensor is
# spread over its range and about 3% for softmax probabilities, which crowd near zero.
GRAD_TOLERANCE = 0.03
PROBABILITY_GRAD_TOLERANCE = 0.06

HEADS = 4


def relative_error(got: Tensor, want: Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp(min=1e-12))


def run(
    module: nn.Module, quantize: bool, inputs: list[Tensor], seed: int
) -> tuple[Tensor, list[Tensor]]:
    """Forward and backward with a fixed upstream gradient; returns output and all grads."""
    for sub in module.modules():
        if hasattr(sub, "quantize"):
            sub.quantize = quantize
    module.zero_grad(set_to_none=True)
    leaves = [x.clone().requires_grad_() for x in inputs]
    out = module(*leaves)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
    out.backward(upstream)
    grads = [x.grad for x in leaves] + [p.grad for p in module.parameters() if p.grad is not None]
    return out.detach(), [g for g in grads if g is not None]


def inputs_for(
    kind: str, batch: int, length: int, width: int, scale: float, seed: int
) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen) * scale + scale / 2

    head_dim = width // HEADS
    if kind.startswith("attention"):
        # q and k of std up to 2 give attention logits of std up to ~16: peaked, but not
        # saturated.  With saturated rows (one-hot probabilities) the exact gradient
        # vanishes and the relative error of any 8-bit copy of P is unbounded; see
        # docs/reference.md.
        scale = 0.1 + (scale - 0.1) * 1.9 / 7.9
    if kind in ("linear", "gelu", "layer_norm"):
        return [randn(batch, length, width)]
    if kind == "softmax":
        return [randn(batch, HEADS, length, length)]
    if kind == "matmul":
        return [randn(batch, HEADS, length, head_dim), randn(batch, HEADS, head_dim, length)]
    return [randn(batch, HEADS, length, head_dim) for _ in range(3)]


MODULES: dict[str, Callable[[int], nn.Module]] = {
    "linear": lambda width: QuantLinear(width, 2 * width, HEADS),
    "gelu": lambda width: QuantGELU(HEADS),
    "layer_norm": lambda width: QuantLayerNorm(width, HEADS),
    "softmax": lambda width: QuantSoftmax(HEADS),
    "matmul": lambda width: QuantMatMul(HEADS),
    "attention": lambda width: QuantAttention(HEADS),
    "attention_unfused": lambda width: QuantAttention(HEADS, fused=False),
}
TOLERANCE = {
    "softmax": PROBABILITY_GRAD_TOLERANCE,
    "attention": PROBABILITY_GRAD_TOLERANCE,
    "attention_unfused": PROBABILITY_GRAD_TOLERANCE,
}


@pytest.mark.parametrize("kind", sorted(MODULES))
@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 4),
    length=st.integers(8, 48),
    width=st.sampled_from([16, 32, 64]),
    scale=st.floats(0.1, 8.0),
    seed=st.integers(0, 2**16),
)
def test_quantized_op_matches_exact(
    kind: str, batch: int, length: int, width: int, scale: float, seed: int
) -> None:
    torch.manual_seed(seed)
    module = MODULES[kind](width)
    inputs = inputs_for(kind, batch, length, width, scale, seed)

    exact_out, exact_grads = run(module, False, inputs, seed)
    quant_out, quant_grads = run(module, True, inputs, seed)

    assert torch.equal(quant_out, exact_out)  # forward computes on exact activations
    assert len(quant_grads) == len(exact_grads)
    for got, want in zip(quant_grads, exact_grads, strict=True):
        assert relative_error(got, want) < TOLERANCE.get(kind, GRAD_TOLERANCE)
    # Some gradients need no saved activation (a bias's, a linear input's), but at least
    # one must come from the 8-bit copy: proof that the quantized path really ran.
    assert any(
        not torch.equal(got, want) for got, want in zip(quant_grads, exact_grads, strict=True)
    )


def test_fused_and_unfused_attention_save_different_amounts() -> None:
    from shardio.tools.reference.saved import saved_activation_bytes

    q, k, v = (torch.randn(2, HEADS, 64, 8, requires_grad=True) for _ in range(3))
    fused = saved_activation_bytes(lambda: QuantAttention(HEADS)(q, k, v))
    unfused = saved_activation_bytes(lambda: QuantAttention(HEADS, fused=False)(q, k, v))
    probabilities = 2 * HEADS * 64 * 64
    # The unfused chain keeps the probabilities twice (softmax output, matmul input).
    assert unfused - fused >= probabilities


class TestQuantizer:
    def test_codes_cover_the_range_and_dequantize_within_one_step(self) -> None:
        quantizer = HeadwiseQuantizer(HEADS, "heads")
        x = torch.randn(3, HEADS, 10, 7) * torch.tensor([0.1, 1.0, 10.0, 100.0]).view(1, 4, 1, 1)
        packed = quantizer.pack(x)
        assert packed.codes.dtype == torch.uint8 and packed.codes.shape == x.shape
        per_head = packed.codes.transpose(0, 1).reshape(HEADS, -1)
        assert (per_head.amin(1) == 0).all() and (per_head.amax(1) >= 254).all()
        error = (quantizer.unpack(packed, torch.float32) - x).abs()
        assert (error <= packed.step.view(1, 4, 1, 1) * 1.0001).all()

    def test_stochastic_rounding_is_unbiased(self) -> None:
        quantizer = HeadwiseQuantizer(1, "channels")
        x = torch.linspace(0, 1, 1001).view(1, -1)
        quantizer.pack(x)  # sets the range to [0, 1]
        quantizer.eval()  # keep it there
        mean = torch.stack(
            [quantizer.unpack(quantizer.pack(x), torch.float32) for _ in range(400)]
        ).mean(0)
        step = 1 / 255
        assert (mean - x).abs().max() < 0.2 * step
        nearest = HeadwiseQuantizer(1, "channels", stochastic=False)
        nearest.pack(x)
        rounded = nearest.unpack(nearest.pack(x), torch.float32)
        assert (rounded - x).abs().max() <= step / 2 + 1e-6

    def test_running_estimates_move_by_momentum(self) -> None:
        quantizer = HeadwiseQuantizer(2, "channels", momentum=0.9)
        quantizer.pack(torch.tensor([[0.0, 1.0, 0.0, 10.0]]))
        torch.testing.assert_close(quantizer.running_range, torch.tensor([1.0, 10.0]))
        quantizer.pack(torch.tensor([[-1.0, 1.0, 0.0, 20.0]]))
        torch.testing.assert_close(quantizer.running_min, torch.tensor([-0.1, 0.0]))
        torch.testing.assert_close(quantizer.running_range, torch.tensor([1.1, 11.0]))
        quantizer.eval()
        quantizer.pack(torch.tensor([[-50.0, 50.0, 0.0, 1.0]]))
        torch.testing.assert_close(quantizer.running_range, torch.tensor([1.1, 11.0]))

    def test_values_beyond_the_running_range_clamp_instead_of_wrapping(self) -> None:
        quantizer = HeadwiseQuantizer(1, "channels")
        quantizer.pack(torch.tensor([[0.0, 1.0]]))
        quantizer.eval()
        packed = quantizer.pack(torch.tensor([[-5.0, 0.5, 7.0]]))
        assert packed.codes.tolist()[0][0] == 0 and packed.codes.tolist()[0][2] == 255

    @pytest.mark.parametrize(
        ("layout", "shape", "needle"),
        [("heads", (2, 3, 5), "(B, 4, ...)"), ("channels", (2, 6), "divisible by 4")],
    )
    def test_a_tensor_of_the_wrong_shape_is_refused(
        self, layout: str, shape: tuple[int, ...], needle: str
    ) -> None:
        quantizer = HeadwiseQuantizer(HEADS, layout)  # type: ignore[arg-type]
        with pytest.raises(
            InvalidOptionError, match=needle.replace("(", r"\(").replace(")", r"\)")
        ):
            quantizer.pack(torch.zeros(shape))

    @pytest.mark.parametrize("kwargs", [{"groups": 0}, {"layout": "rows"}, {"momentum": 1.0}])
    def test_bad_options_are_refused(self, kwargs: dict[str, object]) -> None:
        options: dict[str, object] = {"groups": 2, "layout": "heads", **kwargs}
        with pytest.raises(ShardioError, match=str(next(iter(kwargs)))):
            HeadwiseQuantizer(**options)  # type: ignore[arg-type]


def test_running_estimates_travel_with_the_state_dict() -> None:
    trained = HeadwiseQuantizer(2, "channels")
    trained.pack(torch.tensor([[0.0, 2.0, -4.0, 4.0]]))
    fresh = HeadwiseQuantizer(2, "channels")
    fresh.pack(torch.tensor([[0.0, 100.0, 0.0, 100.0]]))  # initialised differently
    fresh.load_state_dict(trained.state_dict())
    fresh.eval()
    x = torch.tensor([[1.0, 1.5, 0.0, 2.0]])
    assert torch.equal(fresh.pack(x).codes, trained.eval().pack(x).codes)
    untrained = HeadwiseQuantizer(2, "channels")
    fresh.load_state_dict(untrained.state_dict())  # back to "not initialised"
    fresh.pack(torch.tensor([[0.0, 8.0, 0.0, 1.0]]))  # first batch sets the range again
    torch.testing.assert_close(fresh.running_range, torch.tensor([8.0, 1.0]))
