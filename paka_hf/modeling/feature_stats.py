r"""Two cheap measures of how varied a backbone's dense features are, the signals of the collapse guard.

A post-training run that is too aggressive for its checkpoint (a learning rate, head learning rate or teacher
momentum meant for a random-init model) can *collapse* the student's patch features: every patch of an image
gets nearly the same feature, while the alignment loss still falls (two constant maps align perfectly). Both
measures see this on the patch tokens the student already computed, at the cost of one small SVD per view.

For one image with patch tokens :math:`z_1, \dots, z_N \in \mathbb{R}^D` (the student's last-layer grids of
the image's views, :math:`N = V h w` for ``V`` views of ``h × w`` patches):

**Mean patch cosine**, the mean cosine similarity between distinct patches,

.. math::

    \bar c = \frac{1}{N (N - 1)} \sum_{i \ne j} \hat z_i^\top \hat z_j
           = \frac{\lVert \sum_i \hat z_i \rVert^2 - N}{N (N - 1)}, \qquad \hat z_i = z_i / \lVert z_i \rVert,

computed in :math:`O(N D)` from the sum of the unit tokens. It is 1 when every patch points the same way.
A pretrained DINOv2 ViT-S/14 sits near 0.5 on photographs; a collapsed one near 1.

**Effective rank** (Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO
2007): with the singular values :math:`\sigma_k` of the :math:`N \times D` token matrix (not centred, so a
constant map has rank 1) and :math:`p_k = \sigma_k / \sum_l \sigma_l`,

.. math::

    \operatorname{erank} = \exp\Big(-\sum_k p_k \log p_k\Big) \in [1, \min(N, D)].

It falls towards 1 as the features concentrate on fewer directions.

Both are averaged over the images of a batch and computed in float32 without gradients. Pooling an image's
views matters: the student sees small local crops (4 × 4 patches at 56 px), whose patches are alike even in a
healthy model (mean cosine about 0.8 for the pretrained ViT-S/14), which leaves little room to see a collapse.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PatchFeatureStats(NamedTuple):
    """The two measures of a batch of patch grids, each a float32 scalar tensor (mean over views).

    Args:
        mean_patch_cosine: the mean cosine between distinct patches of an image.
        effective_rank: the effective rank of an image's patch features.
    """

    mean_patch_cosine: torch.Tensor
    effective_rank: torch.Tensor


@torch.no_grad()
def patch_feature_stats(grids: torch.Tensor, views_per_image: int = 1) -> PatchFeatureStats:
    r"""Mean patch cosine and effective rank of patch grids (module docstring), averaged over the images.

    Args:
        grids: ``(B·V, D, h, w)`` patch grids, ``V`` consecutive views per image, as
            :class:`~paka_hf.modeling.backbones.PatchBackbone` returns them for views flattened image-major; any
            float dtype. An image needs at least two patches.
        views_per_image: ``V``; the patches of an image's views are pooled.

    Returns:
        :class:`PatchFeatureStats` of float32 scalars on ``grids``' device.

    Raises:
        ValueError: ``grids`` is not 4-D, its views do not divide into images, or an image has fewer than two
            patches.
    """
    if grids.dim() != 4:
        raise ValueError(f"patch_feature_stats expects (B·V, D, h, w) grids, got shape {tuple(grids.shape)}")
    if views_per_image < 1 or grids.shape[0] % views_per_image:
        raise ValueError(f"{grids.shape[0]} views do not divide into images of {views_per_image} views")
    tokens = grids.detach().float().flatten(2).transpose(1, 2)  # (B·V, h·w, D)
    tokens = tokens.reshape(grids.shape[0] // views_per_image, -1, tokens.shape[-1])  # (B, V·h·w, D)
    count = tokens.shape[1]
    if count < 2:
        raise ValueError(f"patch_feature_stats needs at least two patches per image, got {count}")
    unit_sum = F.normalize(tokens, dim=-1).sum(1)  # (B, D)
    mean_cosine = (unit_sum.square().sum(-1) - count) / (count * (count - 1))
    singular = torch.linalg.svdvals(tokens)  # (B, min(N, D))
    shares = singular / singular.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    entropy = -(shares * shares.clamp_min(torch.finfo(torch.float32).tiny).log()).sum(-1)
    return PatchFeatureStats(mean_cosine.mean(), entropy.exp().mean())
