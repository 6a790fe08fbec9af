r"""NeCo's patch-neighbour-consistency loss: the dense post-training method PaKA is compared with.

For pair ``p``, aligned token ``i`` and the pair's reference tokens ``r_1..r_M`` (teacher tokens of the
batch or of a queue of past batches, :func:`sample_references`, :class:`ReferenceQueue`), each side's row
of similarities ``c_i = (cos(x_i, r_j))_j`` is soft-sorted (:func:`paka_hf.losses.soft_sort.soft_sort`,
ascending, with the side's steepness) into a doubly-stochastic ``M × M`` matrix ``Π_i`` (``Π_i[j, k]``:
weight of reference ``j`` at rank ``k``). The loss is the cross-entropy of the student's rank distribution
of each reference under the teacher's:

.. math::

    \mathcal{L}_{\mathrm{NeCo}} = -\frac{1}{|\text{valid } (p, i)|\, M}
        \sum_{p, i \text{ valid}} \sum_{j=1}^{M} \sum_{k=1}^{M} \Pi^t_{p,i}[j, k] \log \Pi^s_{p,i}[j, k]

Defaults (:class:`NeCoSettings`) are NeCo's published configs; docs/METHOD.md lists where this follows
NeCo's code and where it departs.

References:
    - Pariza, Salehi, Sarıyıldız, Asano, "Near, far: Patch-ordering enhances vision foundation models'
      scene understanding" (NeCo), ICLR 2025, arXiv 2408.11054; code vpariza/NeCo (Eq. 3-4).
    - Petersen, Borgelt, Kuehne, Deussen, "Monotonic Differentiable Sorting Networks", ICLR 2022,
      arXiv 2203.09630 (the relaxed sort).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from paka_hf.losses._inputs import check_aligned, prepare_tokens
from paka_hf.losses.soft_sort import soft_sort
from paka_hf.utils.errors import ConfigError

__all__ = [
    "NECO_QUEUE_LENGTH",
    "NECO_QUEUE_PER_IMAGE",
    "NECO_STEEPNESS",
    "NeCoSettings",
    "ReferenceQueue",
    "draw_references",
    "neco_loss",
    "sample_references",
]

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

    Args:
        student_steepness: steepness of the student's soft sort (NeCo: 100).
        teacher_steepness: steepness of the teacher's soft sort.
        queue_length: rows of the reference queue; 0 for no queue.
        queue_per_image: tokens pushed into the queue per image and step.

    Raises:
        ConfigError: a steepness is not positive, ``queue_length`` is negative or ``queue_per_image`` < 1.
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
    """``per_pair`` reference tokens for each of ``num_pairs`` pairs, drawn at random from ``pool``.

    Draws without replacement while the pool is large enough; otherwise each token is used ⌊·⌋ or ⌈·⌉
    times (NeCo's ``randperm(len)[:k] % entries``). Uses the global torch generator of the pool's device, so
    a resumed run (whose RNG state the Trainer restores) draws the same.

    Args:
        pool: ``(V, d)`` tokens to draw from.
        num_pairs: pairs to draw references for.
        per_pair: references per pair.
        available: how many of the pool's first rows count (all by default).

    Returns:
        ``(num_pairs, per_pair, d)`` tokens of the pool.
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

    Args:
        length: tokens the queue holds.
        dim: width of each token.

    Raises:
        ValueError: ``length`` or ``dim`` is below 1.
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
        """Store ``count`` tokens drawn at random from ``tokens``, overwriting the oldest.

        Args:
            tokens: ``(V, dim)`` candidate tokens.
            count: how many to store (at most ``V`` and the queue's length).

        Raises:
            ValueError: ``tokens`` is not ``(V, dim)``.
        """
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
        """``(num_pairs, per_pair, dim)`` tokens drawn from the filled rows (call after a push).

        Args:
            num_pairs: the number of pairs ``P``.
            per_pair: reference tokens per pair.

        Returns:
            ``(num_pairs, per_pair, dim)`` tokens in the queue's dtype.
        """
        return sample_references(self.tokens, num_pairs, per_pair, available=self.filled.clamp_min(1))

    def extra_repr(self) -> str:
        return f"length={self.length}, dim={self.dim}"


@torch.no_grad()
def draw_references(
    teacher: torch.Tensor,
    mask: torch.Tensor | None,
    num_images: int | None,
    queue: ReferenceQueue | None,
    queue_per_image: int,
    training: bool,
) -> torch.Tensor:
    """Every pair's ``N`` reference tokens, from the queue when there is one, else from the batch.

    With a queue, ``queue_per_image × num_images`` of the batch's valid teacher tokens are pushed to it
    first when training (so the references include the current batch, as in NeCo, whose queue update
    precedes the loss); without one they are drawn from the batch's valid teacher tokens.

    Args:
        teacher: ``(P, N, d)`` aligned teacher tokens.
        mask: optional ``(P, N)`` bool, True = ignore the token.
        num_images: images of the batch (needed to fill a queue when training).
        queue: the :class:`ReferenceQueue`, or None to draw from the batch.
        queue_per_image: tokens pushed per image.
        training: whether to push to the queue.

    Returns:
        ``(P, N, d)`` reference tokens in the teacher's dtype.

    Raises:
        ValueError: a queue is to be filled and ``num_images`` is None.
    """
    num_pairs, per_pair = teacher.shape[:2]
    valid = teacher.detach().flatten(0, 1)
    if mask is not None:
        valid = valid[~mask.flatten()]  # one host sync: the number of valid tokens
    if valid.shape[0] == 0:  # nothing aligned: any tokens do, every one of them is masked out of the loss
        valid = teacher.detach().flatten(0, 1)
    if queue is None:
        return sample_references(valid, num_pairs, per_pair)
    if training:
        if num_images is None:
            raise ValueError("loss 'neco' with a queue needs num_images, the images of the batch, to fill the queue")
        queue.push(valid.float(), queue_per_image * num_images)
    return queue.sample(num_pairs, per_pair).to(teacher.dtype)


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
    """NeCo's patch-neighbour-consistency loss (the module docstring's maths).

    For a given teacher it is smallest when the student's matrices equal the teacher's (then it is their
    entropy, not 0). ``log`` is clamped at float32's smallest normal number: products of many confident
    comparators underflow in float32 (NeCo takes the log unclamped).

    Args:
        student: ``(P, N, d)`` aligned student tokens (gradients flow here).
        teacher: ``(P, N, d)`` aligned teacher tokens (detached inside).
        references: ``(P, M, d)`` reference tokens per pair (detached inside; NeCo: ``M = N``).
        mask: optional ``(P, N)`` bool, True = ignore the token.
        student_steepness: steepness of the student's sort (NeCo: 100).
        teacher_steepness: steepness of the teacher's sort (NeCo: 100).

    Returns:
        A float32 scalar; a differentiable zero when no token is valid.

    Raises:
        ValueError: wrong shapes or mask, different widths, references not ``(P, M, d)`` or ``M < 2``.
    """
    check_aligned(student, teacher, mask, need_same_dim=True)
    if references.ndim != 3 or references.shape[0] != student.shape[0] or references.shape[2] != student.shape[2]:
        raise ValueError(
            f"references must be (P, M, d) = ({student.shape[0]}, M, {student.shape[2]}), got {tuple(references.shape)}"
        )
    if references.shape[1] < 2:
        raise ValueError(f"sorting needs at least 2 reference tokens per pair, got {references.shape[1]}")
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, t, weights = prepare_tokens(student, teacher, mask, "pair")
        refs = references.detach().float()
        per_pair = refs.shape[1]
        _, student_perm = soft_sort(_cosine_similarities(s, refs).flatten(0, 1), student_steepness)
        with torch.no_grad():
            _, teacher_perm = soft_sort(_cosine_similarities(t, refs).flatten(0, 1), teacher_steepness)
        log_student = torch.log(student_perm.clamp_min(torch.finfo(torch.float32).tiny))
        cross_entropy = -(teacher_perm * log_student).sum((1, 2)) / per_pair  # (P·N,): mean over references
        weights = weights.flatten()
        return (cross_entropy * weights).sum() / weights.sum().clamp_min(1)
