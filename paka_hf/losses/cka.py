r"""PaKA's loss: kernel alignment (CKA) between aligned student and teacher patch tokens.

For one (global, local) crop pair, RoIAlign gives ``N`` aligned tokens on each side: the student's
``S ∈ R^{N×d}`` and the teacher's ``T ∈ R^{N×d'}`` (``d`` and ``d'`` may differ). PaKA aligns the
*kernels* (the N×N similarity structure) rather than the features themselves:

.. math::

    K_s = k(S, S), \quad K_t = k(T, T), \qquad H = I_N - \tfrac{1}{N} \mathbf{1}\mathbf{1}^\top

    \mathrm{HSIC}(A, B) = \langle H A H,\; H B H \rangle_F

    \mathrm{CKA} = \frac{\mathrm{HSIC}(K_s, K_t)}
                    {\sqrt{\max(\mathrm{HSIC}(K_s, K_s), \varepsilon)\,\max(\mathrm{HSIC}(K_t, K_t), \varepsilon)}}
    \qquad \mathcal{L}_{\mathrm{PaKA}} = 1 - \mathrm{CKA}

with the linear kernel ``k(X, X) = X Xᵀ`` or the RBF kernel ``exp(-‖x_i − x_j‖² / 2σ²)`` with σ² the
median pairwise squared distance. The HSIC normalisation ``1/(N−1)²`` cancels in the ratio and is left
out. CKA is invariant to orthogonal transforms and isotropic scaling of either side, so the student is
free to keep its own feature basis; only the patch-to-patch similarity structure is transferred.

Scope: ``"pair"`` computes one kernel per crop pair (the paper's loss); ``"batch"`` one kernel over every
aligned token of the batch. A boolean ``mask`` of shape ``(P, N)`` marks tokens to *ignore* (True): the
centring and the kernels use the valid tokens only. Pairs with fewer than two valid tokens are left out of
the mean; if none qualifies the loss is a differentiable zero. Everything is computed in float32 whatever
the autocast dtype, and the teacher side is detached.

The kernel helpers here (:func:`centered_kernels`, :func:`check_kernel_inputs`) are shared with the Gram
baseline (:mod:`paka_hf.losses.gram`).

References:
    - Yeo, Jang, Kim, "PaKA: Patch-level Kernel Alignment", arXiv 2509.05606.
    - Kornblith, Norouzi, Lee, Hinton, "Similarity of Neural Network Representations Revisited",
      ICML 2019, arXiv 1905.00414 (CKA).

Example::

    >>> student = torch.randn(8, 49, 384, requires_grad=True)  # (pairs, tokens, dim)
    >>> teacher = torch.randn(8, 49, 384)
    >>> loss = cka_loss(student, teacher)            # mean over the 8 pairs of 1 - CKA
    >>> loss.backward()
"""

from __future__ import annotations

from typing import Literal

import torch

from paka_hf.losses._inputs import check_aligned, prepare_tokens
from paka_hf.utils.errors import check_choice

__all__ = ["EPS", "KERNELS", "SCOPES", "Kernel", "Scope", "cka_loss", "cka_per_pair"]

Kernel = Literal["linear", "rbf"]
Scope = Literal["pair", "batch"]

KERNELS = ("linear", "rbf")
SCOPES = ("pair", "batch")
#: Clamp of the self-HSIC terms and of the RBF bandwidth, so constant regions give finite values.
EPS = 1e-12


def check_kernel_inputs(student, teacher, mask, kernel: str, scope: str) -> None:
    """Checks shared by the kernel losses (CKA, Gram): shapes, mask, kernel and scope names.

    Args:
        student: ``(P, N, d)`` aligned student tokens.
        teacher: ``(P, N, d')`` aligned teacher tokens.
        mask: optional ``(P, N)`` bool, True = ignore the token.
        kernel: the kernel's name.
        scope: the scope's name.

    Raises:
        ValueError: a shape is wrong (:func:`paka_hf.losses._inputs.check_aligned`) or ``kernel`` /
            ``scope`` is not one of :data:`KERNELS` / :data:`SCOPES`.
    """
    check_aligned(student, teacher, mask, need_same_dim=False)
    check_choice("kernel", kernel, KERNELS)
    check_choice("scope", scope, SCOPES)


def center_features(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Subtract the mean of the valid tokens and zero the ignored ones. x (P, N, d), weights (P, N).

    Args:
        x: ``(P, N, d)`` tokens.
        weights: ``(P, N)`` 0/1 weights, 1 = valid token.

    Returns:
        ``(P, N, d)`` centred tokens, 0 at ignored ones.
    """
    count = weights.sum(1, keepdim=True).clamp_min(1.0)  # (P, 1)
    mean = (x * weights[..., None]).sum(1, keepdim=True) / count[..., None]
    return (x - mean) * weights[..., None]


def center_kernel(k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""``H K H`` over the valid tokens only, zero elsewhere. k (P, N, N) symmetric, weights (P, N).

    With ``w`` the 0/1 weights and ``n = Σ w``: ``(H K H)_ij = w_i w_j (K_ij − r_i − r_j + r̄)`` where
    ``r_i = Σ_j w_j K_ij / n`` and ``r̄ = Σ_i w_i r_i / n``. The row means are one batched mat-vec.

    Args:
        k: ``(P, N, N)`` symmetric kernels.
        weights: ``(P, N)`` 0/1 weights, 1 = valid token.

    Returns:
        ``(P, N, N)`` centred kernels.
    """
    count = weights.sum(1).clamp_min(1.0)  # (P,)
    row_mean = torch.bmm(k, weights[..., None]).squeeze(-1) / count[:, None]  # (P, N): mean over valid j of K_ij
    total_mean = (row_mean * weights).sum(1) / count  # (P,)
    centered = k - row_mean[:, :, None] - row_mean[:, None, :] + total_mean[:, None, None]
    return centered * (weights[:, :, None] * weights[:, None, :])


def linear_kernel(x: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ`` (P, N, N) of the tokens shifted by their batch mean.

    CKA and the centred Gram loss are invariant to shifting all tokens of a pair by one vector, so the
    shift changes neither the value nor the gradient (hence detached: it carries no gradient to compute).
    It keeps the kernel's entries of the order of the tokens' spread rather than of their mean: ViT
    features share a large mean, and centring an N×N kernel of un-shifted tokens in float32 would
    subtract nearly equal large numbers. Centring the N×N kernel afterwards is cheaper than centring the
    N×d features when N < d (49 tokens of 256 dims per pair by default).

    Args:
        x: ``(P, N, d)`` tokens.

    Returns:
        ``(P, N, N)`` linear kernels.
    """
    x = x - x.detach().mean((0, 1))
    return x @ x.transpose(1, 2)


def sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances (P, N, N), clamped at 0 against round-off.

    Args:
        x: ``(P, N, d)`` tokens.

    Returns:
        ``(P, N, N)`` squared distances.
    """
    sq = (x * x).sum(-1)
    return (sq[:, :, None] + sq[:, None, :] - 2.0 * x @ x.transpose(1, 2)).clamp_min(0.0)


def rbf_kernel(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """exp(-d²/2σ²) with σ² the median of the off-diagonal squared distances among valid tokens.

    The bandwidth is a statistic of the data, not a path for gradients: it is computed detached.

    Args:
        x: ``(P, N, d)`` tokens.
        weights: ``(P, N)`` 0/1 weights; the bandwidth uses the valid tokens only.

    Returns:
        ``(P, N, N)`` RBF kernels (σ² = 1 for a pair with fewer than two valid tokens).
    """
    d2 = sq_dists(x)
    with torch.no_grad():
        n = x.shape[1]
        pair_valid = (weights[:, :, None] * weights[:, None, :]).bool()
        pair_valid &= ~torch.eye(n, dtype=torch.bool, device=x.device)[None]
        masked = d2.detach().masked_fill(~pair_valid, float("nan")).flatten(1)
        sigma2 = masked.nanmedian(dim=1).values.nan_to_num(1.0).clamp_min(EPS)  # (P,); 1 where no pair
    return torch.exp(-d2 / (2.0 * sigma2[:, None, None]))


def centered_kernels(x: torch.Tensor, weights: torch.Tensor, kernel: str) -> torch.Tensor:
    """``H K H`` (P, N, N) of tokens ``x`` (P, N, d) with ``kernel`` ``"linear"`` or ``"rbf"``.

    Args:
        x: ``(P, N, d)`` tokens.
        weights: ``(P, N)`` 0/1 weights, 1 = valid token.
        kernel: ``"linear"`` or ``"rbf"``.

    Returns:
        ``(P, N, N)`` centred kernels.
    """
    raw = linear_kernel(x) if kernel == "linear" else rbf_kernel(x, weights)
    return center_kernel(raw, weights)


def qualifying_pairs(weights: torch.Tensor) -> torch.Tensor:
    """``(P,)`` bool: the pairs with at least two valid tokens (a kernel needs two).

    Args:
        weights: ``(P, N)`` 0/1 weights, 1 = valid token.

    Returns:
        ``(P,)`` bool.
    """
    return weights.sum(1) >= 2


def cka_per_pair(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    kernel: Kernel = "linear",
    scope: Scope = "pair",
    eps: float = EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CKA of every pair and which pairs qualify (see the module docstring for the maths).

    A pair qualifies when it has at least two valid tokens; the CKA of a pair that does not is 0.

    Args:
        student: ``(P, N, d)`` aligned student tokens (gradients flow here).
        teacher: ``(P, N, d')`` aligned teacher tokens (detached inside).
        mask: optional ``(P, N)`` bool, True = ignore the token.
        kernel: ``"linear"`` or ``"rbf"`` (median-heuristic bandwidth).
        scope: ``"pair"`` or ``"batch"`` (one kernel over all aligned tokens of the batch).
        eps: clamp for the two self-HSIC terms.

    Returns:
        ``(cka, qualifies)``: float32 ``(P,)`` and bool ``(P,)``, or ``(1,)`` each for ``scope="batch"``.

    Raises:
        ValueError: wrong shapes, mask, kernel or scope (:func:`check_kernel_inputs`).
    """
    check_kernel_inputs(student, teacher, mask, kernel, scope)
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, t, weights = prepare_tokens(student, teacher, mask, scope)
        qualifies = qualifying_pairs(weights)
        if kernel == "linear" and s.shape[1] > max(s.shape[2], t.shape[2]):
            # Many tokens, few dims (batch scope): ⟨H K_s H, H K_t H⟩_F = ‖S_cᵀ T_c‖²_F, no N×N kernel.
            sc, tc = center_features(s, weights), center_features(t, weights)
            hsic_st = (sc.transpose(1, 2) @ tc).square().sum((1, 2))
            hsic_ss = (sc.transpose(1, 2) @ sc).square().sum((1, 2))
            hsic_tt = (tc.transpose(1, 2) @ tc).square().sum((1, 2))
        else:
            ks, kt = centered_kernels(s, weights, kernel), centered_kernels(t, weights, kernel)
            hsic_st = (ks * kt).sum((1, 2))
            hsic_ss = (ks * ks).sum((1, 2))
            hsic_tt = (kt * kt).sum((1, 2))
        cka = hsic_st / torch.sqrt(hsic_ss.clamp_min(eps) * hsic_tt.clamp_min(eps))
        return torch.where(qualifies, cka, torch.zeros_like(cka)), qualifies


def cka_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    kernel: Kernel = "linear",
    scope: Scope = "pair",
    eps: float = EPS,
) -> torch.Tensor:
    """PaKA loss: mean over qualifying pairs of ``1 − CKA(K_s, K_t)``.

    Args:
        student: ``(P, N, d)`` aligned student tokens (gradients flow here).
        teacher: ``(P, N, d')`` aligned teacher tokens (detached inside).
        mask: optional ``(P, N)`` bool, True = ignore the token.
        kernel: ``"linear"`` or ``"rbf"`` (median-heuristic bandwidth).
        scope: ``"pair"`` (one kernel per crop pair, the default) or ``"batch"`` (one kernel over
            all aligned tokens of the batch).
        eps: clamp for the self-HSIC terms, so constant regions give finite values and gradients.

    Returns:
        A float32 scalar in ``[0, 2]``; a differentiable zero when no pair has two valid tokens.

    Raises:
        ValueError: wrong shapes, mask, kernel or scope (:func:`check_kernel_inputs`).
    """
    cka, qualifies = cka_per_pair(student, teacher, mask, kernel=kernel, scope=scope, eps=eps)
    # No host sync: with no qualifying pair this is 0 / 1, still attached to the student's graph.
    return ((1.0 - cka) * qualifies).sum() / qualifies.sum().clamp_min(1)
