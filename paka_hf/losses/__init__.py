r"""PaKA losses: kernel alignment (CKA) between aligned student and teacher patch tokens.

For one (global, local) crop pair, RoIAlign gives ``N`` aligned tokens on each side: the student's
``S ∈ R^{N×d}`` and the teacher's ``T ∈ R^{N×d'}`` (``d`` and ``d'`` may differ). PaKA aligns the
*kernels* (the N×N similarity structure) rather than the features themselves:

.. math::

    K_s = k(S, S), \quad K_t = k(T, T), \qquad H = I_N - \tfrac{1}{N} \mathbf{1}\mathbf{1}^\top

    \mathrm{HSIC}(A, B) = \langle H A H,\; H B H \rangle_F

    \mathrm{CKA} = \frac{\mathrm{HSIC}(K_s, K_t)}
                    {\sqrt{\max(\mathrm{HSIC}(K_s, K_s), \varepsilon)\,\max(\mathrm{HSIC}(K_t, K_t), \varepsilon)}}
    \qquad \mathcal{L}_{\mathrm{PaKA}} = 1 - \mathrm{CKA}

with the linear kernel ``k(X, X) = X Xᵀ`` (Kornblith et al., ICML 2019) or the RBF kernel
``exp(-‖x_i − x_j‖² / 2σ²)`` with σ² the median pairwise squared distance. The HSIC
normalisation ``1/(N−1)²`` cancels in the ratio and is left out. CKA is invariant to orthogonal
transforms and isotropic scaling of either side, so the student is free to keep its own feature
basis; only the patch-to-patch similarity structure is transferred.

- Reference: Yeo, Jang, Kim, "PaKA: Patch-level Kernel Alignment", arXiv 2509.05606.
- Gram matching (the paper's Fig. 2 baseline): ``‖H K_s H − H K_t H‖²_F / N²``.
- Distillation control: mean cosine distance between aligned tokens.
- NeCo's patch-neighbour-consistency loss (Pariza et al., ICLR 2025), the method PaKA is compared with:
  :func:`neco_loss`, the rank order of reference tokens by similarity, soft-sorted on both sides.

Everything is computed in float32 whatever the autocast dtype, and the teacher side is detached.

Example::

    >>> student = torch.randn(8, 49, 384, requires_grad=True)  # (pairs, tokens, dim)
    >>> teacher = torch.randn(8, 49, 384)
    >>> loss = cka_loss(student, teacher)            # mean over the 8 pairs of 1 - CKA
    >>> loss.backward()

A boolean ``mask`` of shape ``(P, N)`` marks tokens to *ignore* (True). Pairs with fewer than two
valid tokens are left out of the mean; if none qualifies the loss is a differentiable zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from paka_hf.losses.soft_sort import soft_sort
from paka_hf.utils.errors import ConfigError, check_choice

Kernel = Literal["linear", "rbf"]
Scope = Literal["pair", "batch"]

KERNELS = ("linear", "rbf")
SCOPES = ("pair", "batch")
EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# validation and small helpers
# ---------------------------------------------------------------------------------------------


def _validate(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None, need_same_dim: bool) -> None:
    if student.ndim != 3 or teacher.ndim != 3:
        raise ValueError(
            "expected aligned features of shape (P pairs, N tokens, d), got "
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            "student and teacher must have the same number of pairs and tokens (P, N), got "
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )
    if need_same_dim and student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            "this loss compares features directly, so student and teacher need the same feature dim; got "
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} (use a projection head or cka_loss)"
        )
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = ignore token), got dtype {mask.dtype}")
        if mask.shape != student.shape[:2]:
            raise ValueError(
                f"mask must have shape (P, N) = {tuple(student.shape[:2])}, got {tuple(mask.shape)} "
                f"(student {tuple(student.shape)}, teacher {tuple(teacher.shape)})"
            )


def _validate_kernel_inputs(student, teacher, mask, kernel: str, scope: str) -> None:
    """Checks shared by the kernel losses (CKA, Gram): shapes, mask, kernel and scope names."""
    _validate(student, teacher, mask, need_same_dim=False)
    check_choice("kernel", kernel, KERNELS)
    check_choice("scope", scope, SCOPES)


def _prepare(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None, scope: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 student, detached float32 teacher, float weights (P, N) with 1 = valid token."""
    s = student.float()
    t = teacher.detach().float()
    if mask is None:
        weights = torch.ones(s.shape[:2], dtype=torch.float32, device=s.device)
    else:
        weights = (~mask).to(device=s.device, dtype=torch.float32)
    if scope == "batch":  # one kernel over every aligned token of the batch
        s, t, weights = s.reshape(1, -1, s.shape[-1]), t.reshape(1, -1, t.shape[-1]), weights.reshape(1, -1)
    return s, t, weights


def _center_features(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Subtract the mean of the valid tokens and zero the ignored ones. x (P, N, d), weights (P, N)."""
    count = weights.sum(1, keepdim=True).clamp_min(1.0)  # (P, 1)
    mean = (x * weights[..., None]).sum(1, keepdim=True) / count[..., None]
    return (x - mean) * weights[..., None]


def _center_kernel(k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """H K H over the valid tokens only, zero elsewhere. k (P, N, N) symmetric, weights (P, N).

    With ``w`` the 0/1 weights and ``n = Σ w``: ``(H K H)_ij = w_i w_j (K_ij − r_i − r_j + r̄)`` where
    ``r_i = Σ_j w_j K_ij / n`` and ``r̄ = Σ_i w_i r_i / n``. The row means are one batched mat-vec.
    """
    count = weights.sum(1).clamp_min(1.0)  # (P,)
    row_mean = torch.bmm(k, weights[..., None]).squeeze(-1) / count[:, None]  # (P, N): mean over valid j of K_ij
    total_mean = (row_mean * weights).sum(1) / count  # (P,)
    centered = k - row_mean[:, :, None] - row_mean[:, None, :] + total_mean[:, None, None]
    return centered * (weights[:, :, None] * weights[:, None, :])


def _linear_kernel(x: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ`` (P, N, N) of the tokens shifted by their batch mean.

    CKA and the centred Gram loss are invariant to shifting all tokens of a pair by one vector, so the
    shift changes neither the value nor the gradient (hence detached: it carries no gradient to compute).
    It keeps the kernel's entries of the order of the tokens' spread rather than of their mean: ViT
    features share a large mean, and centring an N×N kernel of un-shifted tokens in float32 would
    subtract nearly equal large numbers. Centring the N×N kernel afterwards is cheaper than centring the
    N×d features when N < d (49 tokens of 256 dims per pair by default).
    """
    x = x - x.detach().mean((0, 1))
    return x @ x.transpose(1, 2)


def _sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances (P, N, N), clamped at 0 against round-off."""
    sq = (x * x).sum(-1)
    return (sq[:, :, None] + sq[:, None, :] - 2.0 * x @ x.transpose(1, 2)).clamp_min(0.0)


def _rbf_kernel(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """exp(-d²/2σ²) with σ² the median of the off-diagonal squared distances among valid tokens.

    The bandwidth is a statistic of the data, not a path for gradients: it is computed detached.
    """
    d2 = _sq_dists(x)
    with torch.no_grad():
        n = x.shape[1]
        pair_valid = (weights[:, :, None] * weights[:, None, :]).bool()
        pair_valid &= ~torch.eye(n, dtype=torch.bool, device=x.device)[None]
        masked = d2.detach().masked_fill(~pair_valid, float("nan")).flatten(1)
        sigma2 = masked.nanmedian(dim=1).values.nan_to_num(1.0).clamp_min(EPS)  # (P,); 1 where no pair
    return torch.exp(-d2 / (2.0 * sigma2[:, None, None]))


def _centered_kernels(x: torch.Tensor, weights: torch.Tensor, kernel: str) -> torch.Tensor:
    raw = _linear_kernel(x) if kernel == "linear" else _rbf_kernel(x, weights)
    return _center_kernel(raw, weights)


def _qualifying_pairs(weights: torch.Tensor) -> torch.Tensor:
    return weights.sum(1) >= 2


# ---------------------------------------------------------------------------------------------
# public losses
# ---------------------------------------------------------------------------------------------


def cka_per_pair(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    kernel: Kernel = "linear",
    scope: Scope = "pair",
    eps: float = EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CKA of every pair, shape (P,) (or (1,) for ``scope="batch"``), and which pairs qualify.

    A pair qualifies when it has at least two valid tokens; the CKA of a pair that does not is 0.
    See the module docstring for the maths; ``eps`` clamps the two self-HSIC terms.
    """
    _validate_kernel_inputs(student, teacher, mask, kernel, scope)
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, t, weights = _prepare(student, teacher, mask, scope)
        qualifies = _qualifying_pairs(weights)
        if kernel == "linear" and s.shape[1] > max(s.shape[2], t.shape[2]):
            # Many tokens, few dims (batch scope): ⟨H K_s H, H K_t H⟩_F = ‖S_cᵀ T_c‖²_F, no N×N kernel.
            sc, tc = _center_features(s, weights), _center_features(t, weights)
            hsic_st = (sc.transpose(1, 2) @ tc).square().sum((1, 2))
            hsic_ss = (sc.transpose(1, 2) @ sc).square().sum((1, 2))
            hsic_tt = (tc.transpose(1, 2) @ tc).square().sum((1, 2))
        else:
            ks, kt = _centered_kernels(s, weights, kernel), _centered_kernels(t, weights, kernel)
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
    """
    cka, qualifies = cka_per_pair(student, teacher, mask, kernel=kernel, scope=scope, eps=eps)
    # No host sync: with no qualifying pair this is 0 / 1, still attached to the student's graph.
    return ((1.0 - cka) * qualifies).sum() / qualifies.sum().clamp_min(1)


def gram_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    kernel: Kernel = "linear",
    scope: Scope = "pair",
) -> torch.Tensor:
    """Gram-matching baseline: mean over qualifying pairs of ``‖H K_s H − H K_t H‖²_F / N²``.

    ``N`` is the number of valid tokens of the pair. Unlike CKA this is not scale invariant:
    the student must reproduce the teacher's kernel values, not only their structure.
    """
    _validate_kernel_inputs(student, teacher, mask, kernel, scope)
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, t, weights = _prepare(student, teacher, mask, scope)
        qualifies = _qualifying_pairs(weights)
        ks, kt = _centered_kernels(s, weights, kernel), _centered_kernels(t, weights, kernel)
        n = weights.sum(1).clamp_min(1.0)
        per_pair = (ks - kt).square().sum((1, 2)) / n.square()
        return (per_pair * qualifies).sum() / qualifies.sum().clamp_min(1)


def cosine_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Control: mean cosine distance ``1 − cos(s_i, t_i)`` over valid aligned tokens.

    Matches features token by token, so student and teacher need the same feature dim.
    """
    _validate(student, teacher, mask, need_same_dim=True)
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, t, weights = _prepare(student, teacher, mask, "pair")
        distance = 1.0 - nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)
        return (distance * weights).sum() / weights.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------
# NeCo: patch-neighbour consistency by differentiable sorting
# ---------------------------------------------------------------------------------------------

# NeCo's published configs (vpariza/NeCo experiments/configs: every model config): steepness 100 for the
# student's and the teacher's sort (its code's defaults, 5 and "same as the student", are not what it ran).
NECO_STEEPNESS = 100.0
# NeCo keeps one queue of 8192 teacher tokens per global view (2 views) and pushes 10 tokens per image into
# each at every step; one queue of 2 × 8192 fed 2 × 10 tokens per image holds the same ~13 steps of history.
NECO_QUEUE_LENGTH = 16384
NECO_QUEUE_PER_IMAGE = 20


@dataclass(frozen=True)
class NeCoSettings:
    """NeCo's knobs (defaults: NeCo's published configs; see :func:`neco_loss` and docs/METHOD.md).

    ``queue_length`` 0 draws the reference tokens from the batch only; otherwise a FIFO of past teacher
    tokens (``queue_per_image`` pushed per image and step) is the pool they are drawn from.
    """

    student_steepness: float = NECO_STEEPNESS
    teacher_steepness: float = NECO_STEEPNESS
    queue_length: int = NECO_QUEUE_LENGTH
    queue_per_image: int = NECO_QUEUE_PER_IMAGE

    def __post_init__(self):
        if not (self.student_steepness > 0 and self.teacher_steepness > 0):
            raise ConfigError(
                f"NeCo's sorting steepness must be > 0, got student {self.student_steepness} and teacher "
                f"{self.teacher_steepness} (NeCo uses 100)"
            )
        if self.queue_length < 0 or self.queue_per_image < 1:
            raise ConfigError(
                f"NeCo's queue needs queue_length >= 0 (0 = no queue) and queue_per_image >= 1, got "
                f"{self.queue_length} and {self.queue_per_image}"
            )


def sample_references(
    pool: torch.Tensor, num_pairs: int, per_pair: int, available: torch.Tensor | int | None = None
) -> torch.Tensor:
    """``per_pair`` reference tokens for each of ``num_pairs`` pairs, drawn at random from ``pool`` ``(V, d)``.

    Only the first ``available`` rows of the pool count (all by default). Draws without replacement while the
    pool is large enough; otherwise each token is used ⌊·⌋ or ⌈·⌉ times (NeCo's
    ``randperm(len)[:k] % entries``). Uses the global torch generator of the pool's device, so a resumed run
    (whose RNG state the Trainer restores) draws the same. Returns ``(num_pairs, per_pair, d)``.
    """
    wanted = num_pairs * per_pair
    index = torch.randperm(max(pool.shape[0], wanted), device=pool.device)[:wanted]
    index = index % (pool.shape[0] if available is None else available)
    return pool[index].reshape(num_pairs, per_pair, pool.shape[-1])


class ReferenceQueue(nn.Module):
    """FIFO of past teacher tokens, the pool NeCo draws its reference tokens from.

    A ring buffer of ``length`` tokens of width ``dim``. ``tokens``, ``filled`` (how many rows hold tokens)
    and ``next_row`` (where the next push starts) are persistent buffers, so a checkpoint holds the queue
    and a resumed run continues from the same one.
    """

    def __init__(self, length: int, dim: int):
        super().__init__()
        if length < 1 or dim < 1:
            raise ValueError(f"a reference queue needs length >= 1 and dim >= 1, got {length} and {dim}")
        self.length, self.dim = int(length), int(dim)
        self.register_buffer("tokens", torch.zeros(self.length, self.dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("next_row", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, tokens: torch.Tensor, count: int) -> None:
        """Store ``count`` tokens drawn at random from ``tokens`` ``(V, dim)``, overwriting the oldest."""
        if tokens.ndim != 2 or tokens.shape[1] != self.dim:
            raise ValueError(f"the reference queue holds (V, {self.dim}) tokens, got shape {tuple(tokens.shape)}")
        count = min(count, tokens.shape[0], self.length)
        if count == 0:
            return
        chosen = tokens[torch.randperm(tokens.shape[0], device=tokens.device)[:count]]
        rows = (self.next_row + torch.arange(count, device=self.tokens.device)) % self.length
        self.tokens.index_copy_(0, rows, chosen.to(self.tokens.dtype))
        self.next_row.copy_((self.next_row + count) % self.length)
        self.filled.copy_((self.filled + count).clamp(max=self.length))

    def sample(self, num_pairs: int, per_pair: int) -> torch.Tensor:
        """``(num_pairs, per_pair, dim)`` tokens drawn from the filled rows (call after a push)."""
        return sample_references(self.tokens, num_pairs, per_pair, available=self.filled.clamp_min(1))

    def extra_repr(self) -> str:
        return f"length={self.length}, dim={self.dim}"


def _cosine_similarities(tokens: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """``cos(x_i, r_j)`` ``(P, N, M)`` for tokens ``(P, N, d)`` and references ``(P, M, d)``."""
    unit = nn.functional.normalize
    return unit(tokens, dim=-1, eps=1e-8) @ unit(references, dim=-1, eps=1e-8).transpose(1, 2)


def neco_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    references: torch.Tensor,
    mask: torch.Tensor | None = None,
    student_steepness: float = NECO_STEEPNESS,
    teacher_steepness: float = NECO_STEEPNESS,
) -> torch.Tensor:
    r"""NeCo's patch-neighbour-consistency loss (Pariza et al., ICLR 2025, Eq. 3-4; code vpariza/NeCo).

    For pair ``p``, aligned token ``i`` and the pair's reference tokens ``r_1..r_M`` (teacher tokens of the
    batch or of the queue, :func:`sample_references`), each side's row of similarities
    ``c_i = (cos(x_i, r_j))_j`` is soft-sorted (:func:`paka_hf.losses.soft_sort.soft_sort`, ascending, with the side's
    steepness) into a doubly-stochastic ``M × M`` matrix ``Π_i`` (``Π_i[j, k]``: weight of reference ``j`` at
    rank ``k``). The loss is the cross-entropy of the student's rank distribution of each reference under the
    teacher's:

    .. math::

        \mathcal{L}_{\mathrm{NeCo}} = -\frac{1}{|\text{valid } (p, i)|\, M}
            \sum_{p, i \text{ valid}} \sum_{j=1}^{M} \sum_{k=1}^{M} \Pi^t_{p,i}[j, k] \log \Pi^s_{p,i}[j, k]

    For a given teacher it is smallest when the student's matrices equal the teacher's (then it is their
    entropy, not 0). ``log`` is clamped at float32's smallest normal number: products of many confident
    comparators underflow in float32 (NeCo takes the log unclamped).

    Args:
        student: ``(P, N, d)`` aligned student tokens (gradients flow here).
        teacher: ``(P, N, d)`` aligned teacher tokens (detached inside).
        references: ``(P, M, d)`` reference tokens per pair (detached inside; NeCo: ``M = N``).
        mask: optional ``(P, N)`` bool, True = ignore the token.
        student_steepness, teacher_steepness: steepness of each side's sort (NeCo: 100 and 100).

    Returns:
        A float32 scalar; a differentiable zero when no token is valid.
    """
    _validate(student, teacher, mask, need_same_dim=True)
    if references.ndim != 3 or references.shape[0] != student.shape[0] or references.shape[2] != student.shape[2]:
        raise ValueError(
            f"references must be (P, M, d) = ({student.shape[0]}, M, {student.shape[2]}), got {tuple(references.shape)}"
        )
    if references.shape[1] < 2:
        raise ValueError(f"sorting needs at least 2 reference tokens per pair, got {references.shape[1]}")
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, t, weights = _prepare(student, teacher, mask, "pair")
        refs = references.detach().float()
        per_pair = refs.shape[1]
        _, student_perm = soft_sort(_cosine_similarities(s, refs).flatten(0, 1), student_steepness)
        with torch.no_grad():
            _, teacher_perm = soft_sort(_cosine_similarities(t, refs).flatten(0, 1), teacher_steepness)
        log_student = torch.log(student_perm.clamp_min(torch.finfo(torch.float32).tiny))
        cross_entropy = -(teacher_perm * log_student).sum((1, 2)) / per_pair  # (P·N,): mean over references
        weights = weights.flatten()
        return (cross_entropy * weights).sum() / weights.sum().clamp_min(1)


LOSSES = ("cka", "gram", "cosine", "neco")


class PaKALoss(nn.Module):
    """The configured alignment loss as a module: ``loss(student, teacher, mask, num_images) -> scalar``.

    ``loss`` is ``"cka"`` (PaKA), ``"gram"`` (Gram matching), ``"cosine"`` (feature distillation) or
    ``"neco"`` (NeCo's sorting loss, :func:`neco_loss`). For ``"neco"`` with a queue (``neco.queue_length > 0``)
    the module holds the :class:`ReferenceQueue` of width ``feature_dim`` (the width of the tokens compared),
    pushes ``neco.queue_per_image × num_images`` of the batch's teacher tokens to it in training mode, then
    draws every pair's ``N`` references from it (so they include the current batch, as in NeCo, whose queue
    update precedes the loss); without a queue they come from the batch's valid teacher tokens.
    """

    def __init__(
        self,
        loss: str = "cka",
        kernel: Kernel = "linear",
        scope: Scope = "pair",
        *,
        neco: NeCoSettings | None = None,
        feature_dim: int | None = None,
    ):
        super().__init__()
        check_choice("loss", loss, LOSSES)
        check_choice("kernel", kernel, KERNELS)
        check_choice("scope", scope, SCOPES)
        self.loss, self.kernel, self.scope = loss, kernel, scope
        self.neco = (neco or NeCoSettings()) if loss == "neco" else None
        self.references = None
        if self.neco is not None and self.neco.queue_length > 0:
            if feature_dim is None:
                raise ValueError("loss 'neco' with a queue needs feature_dim, the width of the compared tokens")
            self.references = ReferenceQueue(self.neco.queue_length, feature_dim)

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        num_images: int | None = None,
    ) -> torch.Tensor:
        if self.loss == "cka":
            return cka_loss(student, teacher, mask, kernel=self.kernel, scope=self.scope)
        if self.loss == "gram":
            return gram_loss(student, teacher, mask, kernel=self.kernel, scope=self.scope)
        if self.loss == "cosine":
            return cosine_distillation_loss(student, teacher, mask)
        references = self.draw_references(teacher, mask, num_images)
        return neco_loss(
            student,
            teacher,
            references,
            mask,
            student_steepness=self.neco.student_steepness,
            teacher_steepness=self.neco.teacher_steepness,
        )

    @torch.no_grad()
    def draw_references(
        self, teacher: torch.Tensor, mask: torch.Tensor | None, num_images: int | None
    ) -> torch.Tensor:
        """NeCo's ``(P, N, d)`` reference tokens (see the class docstring); pushes to the queue when training."""
        num_pairs, per_pair = teacher.shape[:2]
        valid = teacher.detach().flatten(0, 1)
        if mask is not None:
            valid = valid[~mask.flatten()]  # one host sync: the number of valid tokens
        if valid.shape[0] == 0:  # nothing aligned: any tokens do, every one of them is masked out of the loss
            valid = teacher.detach().flatten(0, 1)
        if self.references is None:
            return sample_references(valid, num_pairs, per_pair)
        if self.training:
            if num_images is None:
                raise ValueError(
                    "loss 'neco' with a queue needs num_images, the images of the batch, to fill the queue"
                )
            self.references.push(valid.float(), self.neco.queue_per_image * num_images)
        return self.references.sample(num_pairs, per_pair).to(teacher.dtype)

    def extra_repr(self) -> str:
        text = f"loss={self.loss!r}, kernel={self.kernel!r}, scope={self.scope!r}"
        return text + (f", neco={self.neco}" if self.neco is not None else "")
