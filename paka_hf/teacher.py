"""The EMA teacher: a frozen copy of the student whose weights trail the student's.

After every optimizer step (not every micro-batch) each teacher tensor is updated as

.. math::

    \\theta_t \\leftarrow m\\,\\theta_t + (1 - m)\\,\\theta_s

where ``m`` — called ``teacher_fraction`` here — is the fraction of the *teacher* that is kept:
``m = 1`` freezes the teacher, ``m = 0`` copies the student. ``m`` follows a cosine schedule from
``teacher_momentum`` (0.9995) at step 0 to 1.0 at the last step:

.. math::

    m(k) = 1 - (1 - m_0)\\,\\frac{1 + \\cos(\\pi k / K)}{2}
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def teacher_momentum_at(step: int, total_steps: int, start: float = 0.9995, end: float = 1.0) -> float:
    """Fraction of the teacher kept at optimizer step ``step`` of ``total_steps`` (cosine start → end)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0.0 <= start <= 1.0 or not 0.0 <= end <= 1.0:
        raise ValueError(f"teacher momentum must lie in [0, 1], got start={start}, end={end}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - start) * (1.0 + math.cos(math.pi * progress)) / 2.0


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` with gradients off, in eval mode (no dropout or drop-path)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, teacher_fraction: float) -> None:
    """In place: ``θ_t ← teacher_fraction · θ_t + (1 − teacher_fraction) · θ_s`` for every parameter.

    Buffers are copied from the student. The two modules must have the same parameter names
    and shapes (the teacher is a copy of the student).
    """
    if not 0.0 <= teacher_fraction <= 1.0:
        raise ValueError(f"teacher_fraction (the share of the teacher kept) must be in [0, 1], got {teacher_fraction}")
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(s_params) ^ set(t_params))[:5]
        raise ValueError(f"teacher and student parameters differ (for example {missing}); build the teacher with make_teacher")
    names = list(s_params)
    targets = [t_params[n] for n in names]
    sources = [s_params[n].detach().to(dtype=t_params[n].dtype, device=t_params[n].device) for n in names]
    if teacher_fraction == 0.0:
        torch._foreach_copy_(targets, sources)
    elif teacher_fraction < 1.0:
        torch._foreach_lerp_(targets, sources, 1.0 - teacher_fraction)
    t_buffers = dict(teacher.named_buffers())
    for name, buffer in student.named_buffers():
        if name in t_buffers:
            t_buffers[name].copy_(buffer)
