"""The Gram-matching baseline (paka_hf.losses.gram) against a float64 numpy reference."""

import numpy as np
import pytest
import torch

from paka_hf.losses.cka import cka_loss
from paka_hf.losses.gram import gram_loss


def numpy_linear_gram(x: np.ndarray, y: np.ndarray) -> float:
    """``‖H X Xᵀ H − H Y Yᵀ H‖²_F / N²`` with an explicit centring matrix, float64."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    difference = h @ (x @ x.T) @ h - h @ (y @ y.T) @ h
    return float((difference**2).sum() / n**2)


@pytest.mark.parametrize("kernel,scope", [("linear", "pair"), ("rbf", "pair"), ("linear", "batch")])
def test_identical_inputs_give_zero(kernel, scope):
    x = torch.randn(5, 49, 32)
    assert gram_loss(x, x, kernel=kernel, scope=scope).item() <= 1e-6


def test_linear_matches_numpy_reference_and_batch_scope_is_one_kernel():
    g = torch.Generator().manual_seed(11)
    s, t = torch.randn(3, 12, 6, generator=g), torch.randn(3, 12, 4, generator=g)
    expected = np.mean([numpy_linear_gram(s[p].double().numpy(), t[p].double().numpy()) for p in range(3)])
    np.testing.assert_allclose(gram_loss(s, t).item(), expected, rtol=1e-5)
    whole = numpy_linear_gram(s.reshape(-1, 6).double().numpy(), t.reshape(-1, 4).double().numpy())
    np.testing.assert_allclose(gram_loss(s, t, scope="batch").item(), whole, rtol=1e-5)


def test_not_scale_invariant_unlike_cka():
    g = torch.Generator().manual_seed(12)
    s, t = torch.randn(2, 16, 8, generator=g), torch.randn(2, 16, 8, generator=g)
    assert cka_loss(2.0 * s, t).item() == pytest.approx(cka_loss(s, t).item(), abs=1e-6)
    assert gram_loss(t, t).item() <= 1e-6 and gram_loss(2.0 * t, t).item() > 1.0


def test_mask_equals_dropping_the_tokens():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 49, 16, generator=g), torch.randn(2, 49, 16, generator=g) * 0.5
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[0, 10:30] = True
    for kernel in ("linear", "rbf"):
        masked = gram_loss(s[:1], t[:1], mask[:1], kernel=kernel)
        alone = gram_loss(s[:1, ~mask[0]], t[:1, ~mask[0]], kernel=kernel)
        assert torch.allclose(masked, alone, atol=1e-5), kernel


def test_bad_kernel_raises():
    with pytest.raises(ValueError, match="kernel must be one of"):
        gram_loss(torch.randn(2, 9, 4), torch.randn(2, 9, 4), kernel="cosine")
