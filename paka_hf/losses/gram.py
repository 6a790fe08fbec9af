r"""Gram matching: the kernel-matching baseline PaKA is compared with (the paper's Fig. 2).

On the same centred kernels as CKA (:mod:`paka_hf.losses.cka`: linear or RBF, pair or batch scope, the
same mask), the loss is the squared distance of the two centred kernels, averaged over the entries:

.. math::

    \mathcal{L}_{\mathrm{Gram}} = \frac{1}{|\mathcal{Q}|} \sum_{p \in \mathcal{Q}}
        \frac{\lVert H K_s^{(p)} H - H K_t^{(p)} H \rVert_F^2}{N_p^2}

with ``N_p`` the number of valid tokens of pair ``p`` and ``𝒬`` the pairs with at least two. Unlike CKA it
is not scale invariant: the student must reproduce the teacher's kernel values, not only their structure.

Reference: Yeo, Jang, Kim, "PaKA: Patch-level Kernel Alignment", arXiv 2509.05606 (Fig. 2, the Gram
baseline).
"""

from __future__ import annotations

import torch

from paka_hf.losses._inputs import prepare_tokens
from paka_hf.losses.cka import Kernel, Scope, centered_kernels, check_kernel_inputs, qualifying_pairs

__all__ = ["gram_loss"]


def gram_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    kernel: Kernel = "linear",
    scope: Scope = "pair",
) -> torch.Tensor:
    """Gram-matching baseline: mean over qualifying pairs of ``‖H K_s H − H K_t H‖²_F / N²``.

    Args:
        student: ``(P, N, d)`` aligned student tokens (gradients flow here).
        teacher: ``(P, N, d')`` aligned teacher tokens (detached inside).
        mask: optional ``(P, N)`` bool, True = ignore the token.
        kernel: ``"linear"`` or ``"rbf"`` (median-heuristic bandwidth).
        scope: ``"pair"`` or ``"batch"`` (one kernel over all aligned tokens of the batch).

    Returns:
        A float32 scalar ``>= 0``; a differentiable zero when no pair has two valid tokens.

    Raises:
        ValueError: wrong shapes, mask, kernel or scope.
    """
    check_kernel_inputs(student, teacher, mask, kernel, scope)
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, t, weights = prepare_tokens(student, teacher, mask, scope)
        qualifies = qualifying_pairs(weights)
        ks, kt = centered_kernels(s, weights, kernel), centered_kernels(t, weights, kernel)
        n = weights.sum(1).clamp_min(1.0)
        per_pair = (ks - kt).square().sum((1, 2)) / n.square()
        return (per_pair * qualifies).sum() / qualifies.sum().clamp_min(1)
