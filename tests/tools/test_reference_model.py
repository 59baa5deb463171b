"""The reference transformer with 8-bit saved activations against the exact model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from shardio.core.errors import InvalidOptionError
from shardio.tools.reference.layers import QuantModule
from shardio.tools.reference.model import ModelConfig, ReferenceTransformer
from shardio.tools.reference.saved import SavedBytesCounter, saved_activation_bytes

CONFIG = ModelConfig(vocab_size=16, num_classes=16, max_len=64, d_model=64, n_heads=4, n_layers=2)


def batch(seed: int = 0, size: int = 8, length: int = 64) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CONFIG.vocab_size, (size, length), generator=gen)
    return tokens, torch.randint(0, CONFIG.num_classes, (size,), generator=gen)


def flat_grads(model: ReferenceTransformer, tokens: Tensor, labels: Tensor) -> Tensor:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(tokens), labels).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_whole_model_gradient_agrees_with_the_exact_model() -> None:
    torch.manual_seed(0)
    model = ReferenceTransformer(CONFIG, quantize=False)
    tokens, labels = batch()
    exact = flat_grads(model, tokens, labels)
    model.quantize = True
    quantized = flat_grads(model, tokens, labels)
    cosine = F.cosine_similarity(exact, quantized, dim=0).item()
    relative = float((quantized - exact).norm() / exact.norm())
    # Measured: cosine 0.99999, relative L2 error 0.5%.
    assert cosine > 0.999
    assert relative < 0.03
    assert relative > 0  # the 8-bit path ran


def test_quantized_model_keeps_at_most_035x_the_exact_bytes() -> None:
    torch.manual_seed(0)
    model = ReferenceTransformer(CONFIG, quantize=False)
    tokens, labels = batch()

    def loss() -> Tensor:
        return F.cross_entropy(model(tokens), labels)

    exact = saved_activation_bytes(loss)
    model.quantize = True
    quantized = saved_activation_bytes(loss)
    assert exact > 4 * 2**20  # fp32 activations of 2 layers x 8 x 64 tokens x 64 wide
    assert quantized <= 0.35 * exact


def test_forward_is_the_same_with_either_setting() -> None:
    torch.manual_seed(0)
    model = ReferenceTransformer(CONFIG)
    tokens, _ = batch()
    quantized = model(tokens)
    model.quantize = False
    assert torch.equal(quantized, model(tokens))


def test_the_switch_reaches_every_layer() -> None:
    model = ReferenceTransformer(CONFIG, quantize=True)
    layers = [m for m in model.modules() if isinstance(m, QuantModule)]
    assert len(layers) > 10 and all(m.quantize for m in layers)
    model.quantize = False
    assert not model.quantize and not any(m.quantize for m in layers)


def test_runs_are_reproducible_and_leave_the_global_rng_alone() -> None:
    tokens, labels = batch()
    grads = []
    for _ in range(2):
        torch.manual_seed(0)
        model = ReferenceTransformer(CONFIG)
        state = torch.get_rng_state()
        grads.append(flat_grads(model, tokens, labels))
        assert torch.equal(torch.get_rng_state(), state)  # rounding noise has its own source
    assert torch.equal(grads[0], grads[1])


def test_evaluation_without_grad_does_not_touch_the_running_estimates() -> None:
    torch.manual_seed(0)
    model = ReferenceTransformer(CONFIG)
    tokens, labels = batch()
    flat_grads(model, tokens, labels)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with torch.no_grad():
        model(tokens * 0 + 3)
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert before.keys() == after.keys() and before
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"d_model": 30}, "divisible by n_heads"),
        ({"n_layers": 0}, "n_layers"),
        ({"max_len": -1}, "max_len"),
    ],
)
def test_bad_config_is_refused(overrides: dict[str, int], needle: str) -> None:
    options = {**CONFIG.to_dict(), **overrides}
    with pytest.raises(InvalidOptionError, match=needle):
        ModelConfig(**options)  # type: ignore[arg-type]


def test_tokens_longer_than_max_len_are_refused() -> None:
    model = ReferenceTransformer(CONFIG)
    with pytest.raises(InvalidOptionError, match="max_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


class TestSavedBytesCounter:
    def test_views_of_one_storage_count_once_and_parameters_not_at_all(self) -> None:
        weight = torch.nn.Parameter(torch.randn(100, 100))
        x = torch.randn(50, 100, requires_grad=True)

        def forward() -> Tensor:
            y = (x * 2).relu()  # relu keeps its output (50 x 100 floats)
            return (y[:10] @ weight).sum() + (y[10:] @ weight).sum()  # two views of y

        # y (20,000 B) once, x * 2 keeps nothing (a scalar product), the weight is skipped.
        assert saved_activation_bytes(forward) == 50 * 100 * 4

    def test_distinct_tensors_count_separately(self) -> None:
        counter = SavedBytesCounter()
        a, b = torch.randn(256, requires_grad=True), torch.randn(256, requires_grad=True)
        with counter.hooks():
            out = (a.exp() * b.exp()).sum()
        assert counter.nbytes == 2 * 256 * 4 and counter.tensors == 2
        out.backward()
        torch.testing.assert_close(a.grad, (a.exp() * b.exp()).detach())


def test_sdpa_exact_baseline_computes_the_same_and_keeps_no_score_matrix() -> None:
    torch.manual_seed(0)
    matmul = ReferenceTransformer(CONFIG, quantize=False)
    sdpa = ReferenceTransformer(ModelConfig(**{**CONFIG.to_dict(), "exact_attention": "sdpa"}))
    sdpa.load_state_dict(matmul.state_dict())
    sdpa.quantize = False
    tokens, labels = batch()
    torch.testing.assert_close(sdpa(tokens), matmul(tokens), rtol=1e-4, atol=1e-5)
    kept = {
        name: saved_activation_bytes(lambda m=m: F.cross_entropy(m(tokens), labels))
        for name, m in (("matmul", matmul), ("sdpa", sdpa))
    }
    scores = CONFIG.n_layers * 8 * CONFIG.n_heads * 64 * 64 * 4  # one fp32 N x N per head
    assert kept["matmul"] - kept["sdpa"] >= 0.9 * scores


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_gradient_matches_the_cpu_one_and_less_memory_is_kept() -> None:
    torch.manual_seed(0)
    model = ReferenceTransformer(CONFIG, quantize=False)
    tokens, labels = batch()
    exact_cpu = flat_grads(model, tokens, labels)
    model = model.cuda()
    tokens, labels = tokens.cuda(), labels.cuda()
    exact = flat_grads(model, tokens, labels)
    torch.testing.assert_close(exact.cpu(), exact_cpu, rtol=1e-3, atol=1e-5)
    model.quantize = True
    quantized = flat_grads(model, tokens, labels)
    assert F.cosine_similarity(exact, quantized, dim=0).item() > 0.999

    def kept_after_forward(quantize: bool) -> int:
        model.quantize = quantize
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        loss = F.cross_entropy(model(tokens), labels)
        kept = torch.cuda.memory_allocated() - base
        loss.backward()
        return kept

    assert kept_after_forward(True) <= 0.5 * kept_after_forward(False)
