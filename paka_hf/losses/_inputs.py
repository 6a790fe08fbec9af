"""Checks and preparation shared by every loss of :mod:`paka_hf.losses`.

Every loss compares ``P`` crop pairs of ``N`` aligned tokens: the student's ``(P, N, d)``, the teacher's
``(P, N, d')`` and an optional bool mask ``(P, N)`` (True = ignore the token). :func:`check_aligned` says
which of those shapes is wrong; :func:`prepare_tokens` casts to float32, detaches the teacher and turns the
mask into 0/1 weights, so every loss computes in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch

__all__ = ["check_aligned", "prepare_tokens"]


def check_aligned(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None, need_same_dim: bool
) -> None:
    """Check the shapes of aligned student and teacher tokens and of their mask.

    Args:
        student: ``(P, N, d)`` aligned student tokens.
        teacher: ``(P, N, d')`` aligned teacher tokens.
        mask: optional ``(P, N)`` bool, True = ignore the token.
        need_same_dim: whether the loss compares features directly (then ``d`` must equal ``d'``).

    Raises:
        ValueError: a tensor is not 3-D, the pairs or tokens differ, the widths differ where they must
            not, or the mask is not a ``(P, N)`` bool tensor; the message gives both shapes.
    """
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


def prepare_tokens(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None, scope: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 student, detached float32 teacher and float weights with 1 = valid token.

    Args:
        student: ``(P, N, d)`` aligned student tokens.
        teacher: ``(P, N, d')`` aligned teacher tokens.
        mask: optional ``(P, N)`` bool, True = ignore the token.
        scope: ``"pair"`` keeps the pairs; ``"batch"`` makes every aligned token of the batch one pair.

    Returns:
        ``(s, t, weights)``: ``(P, N, d)``, ``(P, N, d')`` and ``(P, N)``, or ``(1, P·N, ·)`` and
        ``(1, P·N)`` for ``scope="batch"``.
    """
    s = student.float()
    t = teacher.detach().float()
    if mask is None:
        weights = torch.ones(s.shape[:2], dtype=torch.float32, device=s.device)
    else:
        weights = (~mask).to(device=s.device, dtype=torch.float32)
    if scope == "batch":  # one kernel over every aligned token of the batch
        s, t, weights = s.reshape(1, -1, s.shape[-1]), t.reshape(1, -1, t.shape[-1]), weights.reshape(1, -1)
    return s, t, weights
