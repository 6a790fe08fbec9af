"""The checks and preparation every loss shares (paka_hf.losses._inputs)."""

import pytest
import torch

from paka_hf.losses._inputs import check_aligned, prepare_tokens


def test_check_aligned_names_what_is_wrong():
    s, t = torch.randn(2, 49, 8), torch.randn(2, 49, 4)
    check_aligned(s, t, None, need_same_dim=False)
    with pytest.raises(ValueError, match=r"\(2, 49, 8\).*\(2, 36, 8\)"):
        check_aligned(s, torch.randn(2, 36, 8), None, need_same_dim=False)
    with pytest.raises(ValueError, match=r"\(49, 8\)"):
        check_aligned(torch.randn(49, 8), torch.randn(49, 8), None, need_same_dim=False)
    with pytest.raises(ValueError, match="same feature dim"):
        check_aligned(s, t, None, need_same_dim=True)
    with pytest.raises(ValueError, match="bool tensor"):
        check_aligned(s, t, torch.zeros(2, 49), need_same_dim=False)
    with pytest.raises(ValueError, match=r"mask must have shape \(P, N\) = \(2, 49\)"):
        check_aligned(s, t, torch.zeros(2, 48, dtype=torch.bool), need_same_dim=False)


def test_prepare_tokens_casts_detaches_and_weights():
    s = torch.randn(3, 4, 5, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randn(3, 4, 2, requires_grad=True)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[1, 2] = True
    ps, pt, weights = prepare_tokens(s, t, mask, "pair")
    assert ps.dtype == pt.dtype == weights.dtype == torch.float32
    assert ps.requires_grad and not pt.requires_grad
    assert torch.equal(weights, (~mask).float())
    bs, bt, bw = prepare_tokens(s, t, mask, "batch")
    assert (bs.shape, bt.shape, bw.shape) == ((1, 12, 5), (1, 12, 2), (1, 12))
    assert torch.equal(bs[0, 4:8], ps[1]) and bw[0, 6] == 0
    _, _, unmasked = prepare_tokens(s, t, None, "pair")
    assert torch.equal(unmasked, torch.ones(3, 4))
