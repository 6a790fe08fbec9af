"""The optimisation rules PaKA's trainer and the benchmarks share: the weight-decay groups and their schedule.

The weight decay follows :func:`paka_hf.utils.schedules.cosine_schedule` from ``weight_decay`` (0.04) to
``weight_decay_end`` (0.5); the learning rate follows ``Trainer``'s own ``lr_scheduler_type``.

**Weight-decay groups.** Biases and every parameter with at most one dimension (norm scales and shifts,
layer scales, DoRA magnitudes; class and register tokens of shape ``(1, 1, d)`` are 3-D and *are* decayed, as in
DINO) take no weight decay; the other trainable parameters do. :func:`optimizer_groups` makes the AdamW groups of
a :class:`~paka_hf.modeling.model.PaKAModel` that :meth:`paka_hf.training.trainer.PaKATrainer.create_optimizer` and
``benchmarks/gpu_step.py`` both use, each part decayed and not:

- ``student``: the backbone's trained weights other than adapters (every weight in full post-training; under LoRA
  the unfrozen blocks and trained norms), at the backbone's learning rate, on the weight-decay schedule;
- ``student_lora``: the LoRA adapters (``lora_A``, ``lora_B``, DoRA's magnitudes), at their own learning rate and,
  when given, a constant weight decay of their own instead of the schedule;
- ``student_head``: the projection head, at the head's learning rate.

Imports torch and the modeling layer's adapter naming only: the benchmarks use it without the trainer stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from paka_hf.modeling.lora import is_adapter_parameter

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


def decay_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    name: str,
    *,
    select: Callable[[str], bool] | None = None,
    scheduled: bool = True,
) -> list[dict[str, Any]]:
    """The trainable parameters of ``module`` as two AdamW groups, ``{name}/decay`` (``weight_decay``, marked
    :data:`SCHEDULED_DECAY_KEY` when ``scheduled``) and ``{name}/no_decay`` (0.0); a group without parameters is left
    out.

    Args:
        module: the module whose trainable parameters are grouped.
        lr: the groups' learning rate.
        weight_decay: the decayed group's weight decay (its start value when ``scheduled``).
        name: the groups' name prefix.
        select: keeps only the parameters whose names (in ``module``) it accepts; None keeps all.
        scheduled: whether the weight-decay schedule sets the decayed group's weight decay at each step; False
            keeps ``weight_decay`` constant.

    Returns:
        The parameter groups (zero, one or two).
    """
    decay, no_decay = [], []
    for param_name, param in module.named_parameters():
        if param.requires_grad and (select is None or select(param_name)):
            (decay if takes_weight_decay(param_name, param) else no_decay).append(param)
    groups = [
        {
            "params": decay,
            "lr": lr,
            "weight_decay": weight_decay,
            SCHEDULED_DECAY_KEY: scheduled,
            "name": f"{name}/decay",
        },
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, SCHEDULED_DECAY_KEY: False, "name": f"{name}/no_decay"},
    ]
    return [group for group in groups if group["params"]]


def optimizer_groups(
    model: nn.Module,
    learning_rate: float,
    head_learning_rate: float,
    weight_decay: float,
    *,
    lora_learning_rate: float | None = None,
    lora_weight_decay: float | None = None,
) -> list[dict]:
    """AdamW groups of a :class:`~paka_hf.modeling.model.PaKAModel`, in this order: the student backbone's weights
    other than adapters at ``learning_rate`` (``student/*``), its LoRA adapters (``student_lora/*``), its projection
    head (if any) at ``head_learning_rate`` (``student_head/*``), each split by :func:`decay_groups`. The teacher has
    no trainable parameters and no group. (``Trainer`` logs the first group's learning rate as ``learning_rate``:
    the backbone's, or the adapters' in a LoRA run that trains nothing else of the backbone.)

    Args:
        model: the :class:`~paka_hf.modeling.model.PaKAModel` (``student``, ``student_head``).
        learning_rate: the backbone's learning rate.
        head_learning_rate: the projection head's learning rate.
        weight_decay: the decayed groups' weight decay (the schedule's start value).
        lora_learning_rate: the adapters' learning rate; None for ``learning_rate``.
        lora_weight_decay: the adapters' constant weight decay; None puts them on the schedule from
            ``weight_decay``, as the other decayed weights.

    Returns:
        The AdamW parameter groups.
    """
    groups = decay_groups(model.student, learning_rate, weight_decay, "student", select=_not_adapter)
    groups += decay_groups(
        model.student,
        learning_rate if lora_learning_rate is None else lora_learning_rate,
        weight_decay if lora_weight_decay is None else lora_weight_decay,
        "student_lora",
        select=is_adapter_parameter,
        scheduled=lora_weight_decay is None,
    )
    if model.student_head is not None:
        groups += decay_groups(model.student_head, head_learning_rate, weight_decay, "student_head")
    return groups


def _not_adapter(name: str) -> bool:
    return not is_adapter_parameter(name)
