r"""The EMA teacher: a frozen copy of the student whose weights trail the student's.

After every optimizer step (not every micro-batch) each teacher tensor is updated as

.. math::

    \theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_s

where ``m``, the *teacher momentum* (``teacher_momentum`` here and in the config), is the fraction of the
*teacher* that is kept: ``m = 1`` freezes the teacher, ``m = 0`` copies the student. ``m`` follows the cosine
schedule of :func:`paka_hf.utils.schedules.cosine_schedule` from the config's ``teacher_momentum`` ``m_0``
(0.9995) at step 0 to 1.0 at the last step ``K``:

.. math::

    m(k) = 1 - (1 - m_0)\,\frac{1 + \cos(\pi k / K)}{2}
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from paka_hf.modeling.sharding import is_dtensor, local_tensor
from paka_hf.utils.schedules import cosine_schedule

#: The teacher momentum ``m_0`` at step 0 (the paper's, as DINO's): the default of :func:`teacher_momentum_at`
#: and of :class:`~paka_hf.training.config.PaKAConfig`'s ``teacher_momentum``.
DEFAULT_TEACHER_MOMENTUM = 0.9995


def check_teacher_momentum(value: float, name: str = "teacher_momentum") -> None:
    """Raise ``ValueError`` unless ``value`` is a teacher momentum, a fraction in [0, 1] (the one wording of the
    rule; :class:`~paka_hf.training.config.PaKAConfig` reports it as a ``ConfigError``).

    Args:
        value: the momentum.
        name: the setting's name, as the message shows it.

    Raises:
        ValueError: ``value`` is outside [0, 1].
    """
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} is the fraction of the teacher kept per EMA step and must be in [0, 1], got {value} "
            f"(the paper starts at {DEFAULT_TEACHER_MOMENTUM})"
        )


def teacher_momentum_at(
    step: int, total_steps: int, start: float = DEFAULT_TEACHER_MOMENTUM, end: float = 1.0
) -> float:
    """Fraction of the teacher kept at optimizer step ``step`` of ``total_steps``:
    :func:`~paka_hf.utils.schedules.cosine_schedule` from ``start`` to ``end``.

    Args:
        step: the optimizer step.
        total_steps: the run's optimizer steps.
        start: the momentum at step 0.
        end: the momentum at the last step.

    Returns:
        The momentum at ``step``.

    Raises:
        ValueError: ``start`` or ``end`` is outside [0, 1].
    """
    check_teacher_momentum(start, "start")
    check_teacher_momentum(end, "end")
    return cosine_schedule(start, end, step, total_steps)


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` with gradients off, in eval mode (no dropout or drop-path).

    Args:
        student: the student module.

    Returns:
        The teacher copy.
    """
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


class EMAPairs(NamedTuple):
    """The tensors one EMA step touches, listed once: ``targets``/``sources`` parameters (teacher,
    student, same order) and ``buffer_targets``/``buffer_sources`` (copied)."""

    targets: list[torch.Tensor]
    sources: list[torch.Tensor]
    buffer_targets: list[torch.Tensor]
    buffer_sources: list[torch.Tensor]

    def __add__(self, other: EMAPairs) -> EMAPairs:
        return EMAPairs(*(a + b for a, b in zip(tuple(self), tuple(other))))


def ema_pairs(teacher: nn.Module, student: nn.Module) -> EMAPairs:
    """Match the teacher's parameters and buffers with the student's, by name.

    Walking the module trees costs ~1 ms of host time per step for a ViT-S pair (two
    ``named_parameters`` walks); :class:`~paka_hf.modeling.model.PaKAModel` does it once and keeps the lists.
    The parameters are listed as themselves (``Module.to`` keeps Parameter objects), so the lists stay valid.

    Args:
        teacher: the teacher, a copy of ``student``.
        student: the student.

    Returns:
        The :class:`EMAPairs` (teacher and student parameters in the student's order; buffers both have).

    Raises:
        ValueError: the parameter names differ, or a parameter's shape, dtype or device does.
    """
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(s_params) ^ set(t_params))[:5]
        raise ValueError(
            f"teacher and student parameters differ (for example {missing}); build the teacher with make_teacher"
        )
    for name, param in s_params.items():
        target = t_params[name]
        if (target.shape, target.dtype, target.device) != (param.shape, param.dtype, param.device):
            raise ValueError(
                f"teacher and student differ at {name}: {tuple(target.shape)} {target.dtype} {target.device} against "
                f"{tuple(param.shape)} {param.dtype} {param.device}; keep both on one device and dtype"
            )
        if local_tensor(target).shape != local_tensor(param).shape:
            raise ValueError(
                f"teacher and student are sharded differently at {name}; shard both with "
                "paka_hf.modeling.sharding.shard_paka_model"
            )
    t_buffers = dict(teacher.named_buffers())
    buffers = [(t_buffers[name], buffer) for name, buffer in student.named_buffers() if name in t_buffers]
    return EMAPairs(
        [t_params[n] for n in s_params], list(s_params.values()), [t for t, _ in buffers], [s for _, s in buffers]
    )


@torch.no_grad()
def ema_apply_(pairs: EMAPairs, teacher_momentum: float) -> None:
    """In place: ``θ_t ← teacher_momentum · θ_t + (1 − teacher_momentum) · θ_s`` for every pair (one
    ``torch._foreach_lerp_`` over all parameters); buffers copied from the student. Sharded pairs
    (:mod:`paka_hf.modeling.sharding`) are updated shard by shard, locally: no collective.

    Args:
        pairs: the tensors of one EMA step (:func:`ema_pairs`).
        teacher_momentum: ``m`` in [0, 1]; 1 leaves the parameters unchanged, 0 copies the student.

    Raises:
        ValueError: ``teacher_momentum`` is outside [0, 1].
    """
    check_teacher_momentum(teacher_momentum)
    # Sharded (FSDP2) pairs are updated on the rows this process holds: teacher and student are sharded alike,
    # so the step needs no communication (paka_hf.modeling.sharding). A model is sharded whole or not at all, so
    # the first tensor decides, and an unsharded step pays no per-tensor unwrapping on its hot path.
    targets, sources = pairs.targets, pairs.sources
    if targets and is_dtensor(targets[0]):
        targets, sources = [local_tensor(t) for t in targets], [local_tensor(s) for s in sources]
    if teacher_momentum == 0.0:
        torch._foreach_copy_(targets, sources)
    elif teacher_momentum < 1.0:
        torch._foreach_lerp_(targets, sources, 1.0 - teacher_momentum)
    if pairs.buffer_targets:
        torch._foreach_copy_(pairs.buffer_targets, pairs.buffer_sources)


def ema_update_(teacher: nn.Module, student: nn.Module, teacher_momentum: float) -> None:
    """In place: ``θ_t ← teacher_momentum · θ_t + (1 − teacher_momentum) · θ_s`` for every parameter.

    Buffers are copied from the student. The two modules must have the same parameter names,
    shapes, dtypes and devices (the teacher is a copy of the student).

    Args:
        teacher: the teacher, updated in place.
        student: the student.
        teacher_momentum: ``m`` in [0, 1].

    Raises:
        ValueError: the modules do not match (:func:`ema_pairs`), or ``teacher_momentum`` is outside [0, 1].
    """
    ema_apply_(ema_pairs(teacher, student), teacher_momentum)
