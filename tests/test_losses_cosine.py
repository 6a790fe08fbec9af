"""The feature-distillation control (paka_hf.losses.cosine): mean cosine distance of aligned tokens."""

import pytest
import torch

from paka_hf.losses.cosine import cosine_distillation_loss


def test_values_for_parallel_opposite_and_orthogonal_tokens():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(3, 49, 8, generator=g)
    assert cosine_distillation_loss(s, 2.0 * s).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_distillation_loss(s, -s).item() == pytest.approx(2.0, abs=1e-6)
    e = torch.eye(2)
    assert cosine_distillation_loss(e[None, :1], e[None, 1:]).item() == pytest.approx(1.0, abs=1e-7)


def test_masked_tokens_leave_the_mean_and_teacher_gets_no_gradient():
    g = torch.Generator().manual_seed(9)
    s = torch.randn(2, 9, 4, generator=g, requires_grad=True)
    t = torch.randn(2, 9, 4, generator=g, requires_grad=True)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, 3:] = True
    loss = cosine_distillation_loss(s, t, mask)
    expected = 1.0 - torch.nn.functional.cosine_similarity(s[~mask], t[~mask], dim=-1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert t.grad is None and s.grad[1, 3:].abs().sum() == 0 and s.grad[0].abs().sum() > 0


def test_needs_the_same_width():
    with pytest.raises(ValueError, match="same feature dim"):
        cosine_distillation_loss(torch.randn(2, 49, 8), torch.randn(2, 49, 4))
