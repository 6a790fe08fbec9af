r"""The cosine schedule of the recipe's scheduled values: teacher momentum 0.9995 → 1, weight decay 0.04 → 0.5.

A value moves from ``start`` at step 0 to ``end`` at step ``K`` along half a cosine, as in DINO and NeCo:

.. math::

    v(k) = \mathrm{end} + (\mathrm{start} - \mathrm{end})\,\frac{1 + \cos(\pi \min(\max(k / K, 0), 1))}{2}

so ``v(0) = start``, ``v(K/2) = (start + end) / 2``, ``v(K) = end``, and it stays at ``end`` after ``K``.
It lives at the bottom of the package because the model layer (the EMA teacher's momentum) and the training
layer (the weight decay) both use it. The learning rate follows ``Trainer``'s own ``lr_scheduler_type``.
"""

from __future__ import annotations

import math


def cosine_schedule(start: float, end: float, step: int, total_steps: int) -> float:
    """``start`` at step 0 → ``end`` at ``total_steps`` along half a cosine (module docstring); clamped outside.

    Args:
        start: the value at step 0.
        end: the value at ``total_steps`` and after.
        step: the current optimizer step.
        total_steps: ``K``, the step at which the value reaches ``end``.

    Returns:
        :math:`v(k)`.

    Raises:
        ValueError: ``total_steps`` is not positive.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0
