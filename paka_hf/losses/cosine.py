r"""Feature distillation by cosine distance: the control beside PaKA's kernel alignment.

Where CKA transfers only the patch-to-patch similarity structure, this control asks the student to
reproduce each aligned teacher token's direction:

.. math::

    \mathcal{L}_{\cos} = \frac{1}{|\mathcal{V}|} \sum_{(p, i) \in \mathcal{V}}
        \Big(1 - \frac{\langle s_{p,i},\, t_{p,i} \rangle}{\lVert s_{p,i} \rVert\, \lVert t_{p,i} \rVert}\Big)

over the valid aligned tokens ``𝒱``, so the student and the teacher need the same width. It is this
implementation's control (docs/METHOD.md, Ablations), not a loss of its own paper; the method it is the
control for: Yeo, Jang, Kim, "PaKA: Patch-level Kernel Alignment", arXiv 2509.05606.
"""

from __future__ import annotations

import torch
from torch import nn

from paka_hf.losses._inputs import check_aligned, prepare_tokens

__all__ = ["cosine_distillation_loss"]


def cosine_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cosine distance ``1 − cos(s_i, t_i)`` over valid aligned tokens.

    Args:
        student: ``(P, N, d)`` aligned student tokens (gradients flow here).
        teacher: ``(P, N, d)`` aligned teacher tokens (detached inside), the same width as the student's.
        mask: optional ``(P, N)`` bool, True = ignore the token.

    Returns:
        A float32 scalar in ``[0, 2]``; a differentiable zero when no token is valid.

    Raises:
        ValueError: wrong shapes or mask, or different widths.
    """
    check_aligned(student, teacher, mask, need_same_dim=True)
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, t, weights = prepare_tokens(student, teacher, mask, "pair")
        distance = 1.0 - nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)
        return (distance * weights).sum() / weights.sum().clamp_min(1)
