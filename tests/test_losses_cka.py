"""PaKA's loss, 1 − CKA (paka_hf.losses.cka), against float64 numpy references; the kernel helpers it shares
with the Gram baseline (paka_hf.losses.gram) are checked on both losses."""

import numpy as np
import pytest
import torch

from paka_hf.losses.cka import cka_loss, cka_per_pair
from paka_hf.losses.gram import gram_loss


def numpy_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in feature space (Kornblith et al., 2019, eq. 5), float64."""
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def numpy_rbf_cka(x: np.ndarray, y: np.ndarray) -> float:
    """RBF-kernel CKA with explicit centering matrix H and median-heuristic bandwidth, float64."""

    def rbf(z):
        d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
        off = d2[~np.eye(len(z), dtype=bool)]
        sigma2 = np.sort(off)[(len(off) - 1) // 2]  # lower median, as torch.median
        return np.exp(-d2 / (2 * sigma2))

    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = h @ rbf(x) @ h, h @ rbf(y) @ h
    return float((kx * ky).sum() / np.sqrt((kx * kx).sum() * (ky * ky).sum()))


def random_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q.float()


def test_identical_inputs_give_zero():
    x = torch.randn(5, 49, 32)
    assert cka_loss(x, x).item() <= 1e-6
    assert cka_loss(x, x, kernel="rbf").item() <= 1e-6
    assert cka_loss(x, x, scope="batch").item() <= 1e-6


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_invariant_to_rotation_and_isotropic_scaling(kernel):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 49, 16, generator=g), torch.randn(4, 49, 16, generator=g)
    reference = cka_loss(s, t, kernel=kernel)
    q = random_orthogonal(16, g)
    for s2, t2 in [(s @ q, t), (s, t @ q), (s * 7.5, t), (s, t * 0.03), (s @ q * 0.2, t @ q.T * 40.0)]:
        assert torch.allclose(cka_loss(s2, t2, kernel=kernel), reference, atol=1e-5), (kernel, reference)


def test_shuffling_teacher_tokens_raises_loss():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(6, 49, 24, generator=g)
    s = t @ random_orthogonal(24, g) + 0.3 * torch.randn(6, 49, 24, generator=g)
    aligned = cka_loss(s, t)
    shuffled = cka_loss(s, t[:, torch.randperm(49, generator=g)])
    assert aligned < 0.1
    assert shuffled > aligned + 0.3


@pytest.mark.parametrize("pairs,tokens,ds,dt", [(1, 49, 384, 384), (3, 16, 8, 24), (2, 100, 12, 12), (5, 7, 64, 5)])
def test_linear_matches_numpy_reference(pairs, tokens, ds, dt):
    g = torch.Generator().manual_seed(pairs * 100 + tokens)
    s = torch.randn(pairs, tokens, ds, generator=g)
    t = torch.randn(pairs, tokens, dt, generator=g) + 0.5 * s[..., :1]  # some shared structure
    cka, qualifies = cka_per_pair(s, t)
    expected = [numpy_linear_cka(s[p].double().numpy(), t[p].double().numpy()) for p in range(pairs)]
    assert qualifies.all()
    np.testing.assert_allclose(cka.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(cka_loss(s, t).item(), 1 - np.mean(expected), atol=1e-5)


def test_batch_scope_is_one_kernel_over_all_tokens():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 9, 6, generator=g), torch.randn(4, 9, 5, generator=g)
    expected = numpy_linear_cka(s.reshape(-1, 6).double().numpy(), t.reshape(-1, 5).double().numpy())
    np.testing.assert_allclose(cka_loss(s, t, scope="batch").item(), 1 - expected, atol=1e-5)


def test_rbf_matches_numpy_reference():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 25, 10, generator=g), torch.randn(3, 25, 10, generator=g)
    t = t + s
    cka, _ = cka_per_pair(s, t, kernel="rbf")
    expected = [numpy_rbf_cka(s[p].double().numpy(), t[p].double().numpy()) for p in range(3)]
    np.testing.assert_allclose(cka.numpy(), expected, atol=1e-5)


def test_mask_equals_dropping_the_tokens():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 49, 16, generator=g), torch.randn(2, 49, 16, generator=g) * 0.5
    t = t + s
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[0, 10:30] = True
    mask[1, ::3] = True
    for kernel in ["linear", "rbf"]:
        cka, _ = cka_per_pair(s, t, mask, kernel=kernel)
        for p in range(2):
            keep = ~mask[p]
            alone, _ = cka_per_pair(s[p : p + 1, keep], t[p : p + 1, keep], kernel=kernel)
            assert torch.allclose(cka[p], alone[0], atol=1e-5), kernel


def test_pairs_with_fewer_than_two_valid_tokens_are_left_out():
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(3, 49, 8, generator=g), torch.randn(3, 49, 8, generator=g)
    mask = torch.zeros(3, 49, dtype=torch.bool)
    mask[1] = True
    mask[2, 1:] = True  # one valid token
    expected = cka_loss(s[:1], t[:1])
    assert torch.allclose(cka_loss(s, t, mask), expected, atol=1e-6)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_constant_region_gives_finite_loss_and_gradients(kernel):
    s = torch.full((2, 49, 16), 3.0, requires_grad=True)  # e.g. a crop of a flat sky
    t = torch.randn(2, 49, 16)
    t_const = torch.full((2, 49, 16), -1.0)
    for teacher in (t, t_const):
        for loss in (cka_loss(s, teacher, kernel=kernel), gram_loss(s, teacher, kernel=kernel)):
            (grad,) = torch.autograd.grad(loss, s)
            assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_teacher_is_detached_and_student_gets_gradients():
    s = torch.randn(2, 49, 8, requires_grad=True)
    t = torch.randn(2, 49, 8, requires_grad=True)
    cka_loss(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_bf16_inputs_and_autocast_give_fp32_value():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(4, 49, 64, generator=g), torch.randn(4, 49, 64, generator=g)
    t = t + s
    reference = cka_loss(s, t)
    low = cka_loss(s.bfloat16(), t.bfloat16())
    assert low.dtype == torch.float32
    assert abs(low.item() - reference.item()) <= 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = cka_loss(s, t)
    assert inside.dtype == torch.float32
    assert abs(inside.item() - reference.item()) <= 1e-5


def test_mismatched_shapes_raise_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 49, 8\).*\(2, 36, 8\)"):
        cka_loss(torch.randn(2, 49, 8), torch.randn(2, 36, 8))
    with pytest.raises(ValueError, match=r"\(49, 8\)"):
        cka_loss(torch.randn(49, 8), torch.randn(49, 8))
    with pytest.raises(ValueError, match=r"mask must have shape \(P, N\) = \(2, 49\)"):
        cka_loss(torch.randn(2, 49, 8), torch.randn(2, 49, 8), mask=torch.zeros(2, 48, dtype=torch.bool))
    with pytest.raises(ValueError, match="kernel must be one of"):
        cka_loss(torch.randn(2, 49, 8), torch.randn(2, 49, 8), kernel="cosine")
    with pytest.raises(ValueError, match="scope must be one of"):
        cka_per_pair(torch.randn(2, 49, 8), torch.randn(2, 49, 8), scope="image")


@pytest.mark.parametrize("loss_fn", [cka_loss, gram_loss])
def test_value_and_gradient_hold_when_features_share_a_large_mean(loss_fn):
    """ViT tokens share a mean far larger than their spread. Both losses are invariant to shifting a
    pair's tokens by one vector, so the float32 loss and gradient must not change with the shift.

    Centring the N×N kernel of the raw tokens in float32 (as a plain implementation does) gets this
    wrong by ~1e-4 at a shared mean of 100× the spread and entirely at 1000×.
    """
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(16, 49, 256, generator=generator)
    teacher = torch.randn(16, 49, 256, generator=generator)
    shared = 1000 * torch.randn(256, generator=generator)
    per_pair = 10 * torch.randn(16, 1, 256, generator=generator)
    mask = torch.rand(16, 49, generator=generator) < 0.1

    def value_and_grad(s, t):
        s = s.clone().requires_grad_(True)
        value = loss_fn(s, t, mask)
        value.backward()
        return value.item(), s.grad

    plain, plain_grad = value_and_grad(student, teacher)
    shifted, shifted_grad = value_and_grad(student + shared + per_pair, teacher + shared)
    assert shifted == pytest.approx(plain, rel=1e-4, abs=1e-6)
    assert torch.allclose(shifted_grad, plain_grad, rtol=1e-3, atol=1e-3 * plain_grad.abs().max().item())
