"""The collapse guard's two measures on patch grids with known answers."""

import math

import pytest
import torch

from paka_hf.modeling.feature_stats import patch_feature_stats


def test_identical_patches_have_cosine_one_and_effective_rank_one():
    grids = torch.randn(3, 16, 1, 1).expand(3, 16, 4, 5).contiguous()  # every patch of a view equal
    stats = patch_feature_stats(grids)
    assert stats.mean_patch_cosine.item() == pytest.approx(1.0, abs=1e-5)
    assert stats.effective_rank.item() == pytest.approx(1.0, abs=1e-4)


def test_orthogonal_patches_have_cosine_zero_and_full_effective_rank():
    tokens = torch.eye(8)  # 8 orthonormal patches in 8 dimensions: equal singular values
    grids = tokens.T.reshape(1, 8, 2, 4)
    stats = patch_feature_stats(grids)
    assert stats.mean_patch_cosine.item() == pytest.approx(0.0, abs=1e-6)
    assert stats.effective_rank.item() == pytest.approx(8.0, rel=1e-5)


def test_mean_patch_cosine_matches_the_pairwise_definition_and_averages_views():
    generator = torch.Generator().manual_seed(0)
    grids = torch.randn(2, 6, 3, 3, generator=generator) + 0.5
    expected = []
    for view in grids:
        unit = torch.nn.functional.normalize(view.flatten(1).T, dim=-1)
        cos = unit @ unit.T
        n = cos.shape[0]
        expected.append((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))
    stats = patch_feature_stats(grids)
    assert stats.mean_patch_cosine.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-5)
    singular = torch.linalg.svdvals(grids.flatten(2).transpose(1, 2))
    p = singular / singular.sum(-1, keepdim=True)
    assert stats.effective_rank.item() == pytest.approx((-(p * p.log()).sum(-1)).exp().mean().item(), rel=1e-5)
    assert 1.0 <= stats.effective_rank.item() <= 6.0 and not math.isnan(stats.mean_patch_cosine.item())


def test_stats_take_no_gradient_and_reject_bad_shapes():
    grids = torch.randn(2, 4, 2, 2, requires_grad=True)
    stats = patch_feature_stats(grids)
    assert not stats.mean_patch_cosine.requires_grad and stats.mean_patch_cosine.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(B·V, D, h, w\)"):
        patch_feature_stats(torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match="at least two patches"):
        patch_feature_stats(torch.randn(2, 4, 1, 1))
    with pytest.raises(ValueError, match="3 views do not divide into images of 2"):
        patch_feature_stats(torch.randn(3, 4, 2, 2), views_per_image=2)


def test_an_images_views_are_pooled():
    generator = torch.Generator().manual_seed(1)
    grids = torch.randn(6, 5, 2, 3, generator=generator)  # 2 images of 3 views of 2x3 patches
    pooled = patch_feature_stats(grids, views_per_image=3)
    per_image = [patch_feature_stats(grids[3 * i : 3 * i + 3].permute(1, 0, 2, 3).reshape(1, 5, 3, 6)) for i in (0, 1)]
    assert pooled.mean_patch_cosine.item() == pytest.approx(
        sum(s.mean_patch_cosine.item() for s in per_image) / 2, abs=1e-6
    )
    assert pooled.effective_rank.item() == pytest.approx(sum(s.effective_rank.item() for s in per_image) / 2, rel=1e-5)
