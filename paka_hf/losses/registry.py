"""The losses the ``loss`` setting names: one entry per loss, the one source of :data:`LOSSES`.

Each entry maps the config name to a call with one signature,
``call(criterion, student, teacher, mask, num_images) -> scalar``, that reads what it needs from the
:class:`~paka_hf.losses.criterion.PaKALoss` ``criterion`` (``kernel``, ``scope``, ``neco``, its reference
queue) and calls the loss function of its module. Adding a loss: its module (one file beside
:mod:`paka_hf.losses.cka`) and one entry here; the config's ``loss`` choices and ``PaKALoss`` follow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from paka_hf.losses.cka import cka_loss
from paka_hf.losses.cosine import cosine_distillation_loss
from paka_hf.losses.gram import gram_loss
from paka_hf.losses.neco import neco_loss

if TYPE_CHECKING:
    from paka_hf.losses.criterion import PaKALoss

__all__ = ["LOSSES", "REGISTRY", "LossCall"]

#: ``call(criterion, student, teacher, mask, num_images) -> scalar``.
LossCall = Callable[["PaKALoss", torch.Tensor, torch.Tensor, "torch.Tensor | None", "int | None"], torch.Tensor]


def _cka(criterion: PaKALoss, student, teacher, mask, num_images) -> torch.Tensor:
    """PaKA: :func:`~paka_hf.losses.cka.cka_loss` with the criterion's kernel and scope."""
    return cka_loss(student, teacher, mask, kernel=criterion.kernel, scope=criterion.scope)


def _gram(criterion: PaKALoss, student, teacher, mask, num_images) -> torch.Tensor:
    """Gram matching: :func:`~paka_hf.losses.gram.gram_loss` with the criterion's kernel and scope."""
    return gram_loss(student, teacher, mask, kernel=criterion.kernel, scope=criterion.scope)


def _cosine(criterion: PaKALoss, student, teacher, mask, num_images) -> torch.Tensor:
    """Feature distillation: :func:`~paka_hf.losses.cosine.cosine_distillation_loss`."""
    return cosine_distillation_loss(student, teacher, mask)


def _neco(criterion: PaKALoss, student, teacher, mask, num_images) -> torch.Tensor:
    """NeCo: :func:`~paka_hf.losses.neco.neco_loss` on references the criterion draws (its queue, if any)."""
    references = criterion.draw_references(teacher, mask, num_images)
    return neco_loss(
        student,
        teacher,
        references,
        mask,
        student_steepness=criterion.neco.student_steepness,
        teacher_steepness=criterion.neco.teacher_steepness,
    )


REGISTRY: dict[str, LossCall] = {"cka": _cka, "gram": _gram, "cosine": _cosine, "neco": _neco}

#: The names the ``loss`` setting accepts, in the registry's order.
LOSSES = tuple(REGISTRY)
