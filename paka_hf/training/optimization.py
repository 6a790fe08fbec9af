"""The optimisation rules PaKA's trainer and the benchmarks share: the weight-decay groups and their schedule.

The weight decay follows :func:`paka_hf.utils.schedules.cosine_schedule` from ``weight_decay`` (0.04) to
``weight_decay_end`` (0.5); the learning rate follows ``Trainer``'s own ``lr_scheduler_type``.

**Weight-decay groups.** Biases and every parameter with at most one dimension (norm scales and shifts,
layer scales, class and register tokens of shape ``(1, 1, d)`` are 3-D and *are* decayed, as in DINO) take no
weight decay; the other trainable parameters do. :func:`optimizer_groups` makes the four AdamW groups of a
:class:`~paka_hf.modeling.model.PaKAModel` (backbone and head, each decayed and not) that
:meth:`paka_hf.training.trainer.PaKATrainer.create_optimizer` and ``benchmarks/gpu_step.py`` both use.

Imports nothing beyond torch: the benchmarks use it without the trainer stack.
"""

from __future__ import annotations

from typing import Any

from torch import nn

#: The key of a parameter group whose weight decay follows the cosine schedule (the decayed groups).
SCHEDULED_DECAY_KEY = "paka_decay"


def takes_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Whether AdamW decays this parameter: not a bias, and at least two dimensions.

    Args:
        name: the parameter's name.
        param: the parameter.

    Returns:
        True when it is decayed.
    """
    return not (name.endswith(".bias") or name == "bias" or param.ndim <= 1)


def decay_groups(module: nn.Module, lr: float, weight_decay: float, name: str) -> list[dict[str, Any]]:
    """The trainable parameters of ``module`` as two AdamW groups, ``{name}/decay`` (``weight_decay``, marked
    :data:`SCHEDULED_DECAY_KEY`) and ``{name}/no_decay`` (0.0); a group without parameters is left out.

    Args:
        module: the module whose trainable parameters are grouped.
        lr: the groups' learning rate.
        weight_decay: the decayed group's weight decay.
        name: the groups' name prefix.

    Returns:
        The parameter groups (zero, one or two).
    """
    decay, no_decay = [], []
    for param_name, param in module.named_parameters():
        if param.requires_grad:
            (decay if takes_weight_decay(param_name, param) else no_decay).append(param)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, SCHEDULED_DECAY_KEY: True, "name": f"{name}/decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, SCHEDULED_DECAY_KEY: False, "name": f"{name}/no_decay"},
    ]
    return [group for group in groups if group["params"]]


def optimizer_groups(
    model: nn.Module, learning_rate: float, head_learning_rate: float, weight_decay: float
) -> list[dict]:
    """AdamW groups of a :class:`~paka_hf.modeling.model.PaKAModel`: the student backbone at ``learning_rate`` and its
    projection head (if any) at ``head_learning_rate``, each split by :func:`decay_groups`. The teacher has no
    trainable parameters and no group.

    Args:
        model: the :class:`~paka_hf.modeling.model.PaKAModel` (``student``, ``student_head``).
        learning_rate: the backbone's learning rate.
        head_learning_rate: the projection head's learning rate.
        weight_decay: the decayed groups' weight decay.

    Returns:
        The AdamW parameter groups.
    """
    groups = []
    for part, lr in (("student", learning_rate), ("student_head", head_learning_rate)):
        module = getattr(model, part)
        if module is not None:
            groups += decay_groups(module, lr, weight_decay, part)
    return groups
