"""``PaKALoss``: the configured alignment loss as a module, as the model calls it.

The ``loss`` name picks the entry of :data:`paka_hf.losses.registry.REGISTRY`; the module holds the
settings that entry reads (kernel, scope, NeCo's settings) and, for NeCo with a queue, the
:class:`~paka_hf.losses.neco.ReferenceQueue`, a submodule so that checkpoints hold it.
"""

from __future__ import annotations

import torch
from torch import nn

from paka_hf.losses.cka import KERNELS, SCOPES, Kernel, Scope
from paka_hf.losses.neco import NeCoSettings, ReferenceQueue, draw_references
from paka_hf.losses.registry import LOSSES, REGISTRY
from paka_hf.utils.errors import check_choice

__all__ = ["PaKALoss"]


class PaKALoss(nn.Module):
    """The configured alignment loss as a module: ``loss(student, teacher, mask, num_images) -> scalar``.

    ``loss`` is ``"cka"`` (PaKA), ``"gram"`` (Gram matching), ``"cosine"`` (feature distillation) or
    ``"neco"`` (NeCo's sorting loss, :func:`~paka_hf.losses.neco.neco_loss`): the names of
    :data:`~paka_hf.losses.registry.LOSSES`. For ``"neco"`` with a queue (``neco.queue_length > 0``) the
    module holds the :class:`~paka_hf.losses.neco.ReferenceQueue` of width ``feature_dim`` (the width of
    the tokens compared), pushes ``neco.queue_per_image × num_images`` of the batch's teacher tokens to it
    in training mode, then draws every pair's ``N`` references from it (so they include the current batch,
    as in NeCo, whose queue update precedes the loss); without a queue they come from the batch's valid
    teacher tokens.

    Args:
        loss: one of :data:`~paka_hf.losses.registry.LOSSES`.
        kernel: ``"linear"`` or ``"rbf"`` (for ``"cka"`` and ``"gram"``).
        scope: ``"pair"`` or ``"batch"`` (for ``"cka"`` and ``"gram"``).
        neco: NeCo's settings (for ``"neco"``; NeCo's published ones by default).
        feature_dim: width of the compared tokens (for ``"neco"`` with a queue).

    Raises:
        ValueError: an unknown loss, kernel or scope, or ``"neco"`` with a queue and no ``feature_dim``.
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
        """The configured loss of aligned tokens.

        Args:
            student: ``(P, N, d)`` aligned student tokens (gradients flow here).
            teacher: ``(P, N, d')`` aligned teacher tokens (detached inside).
            mask: optional ``(P, N)`` bool, True = ignore the token.
            num_images: images of the batch (``"neco"`` with a queue, in training mode).

        Returns:
            A float32 scalar.
        """
        return REGISTRY[self.loss](self, student, teacher, mask, num_images)

    def draw_references(
        self, teacher: torch.Tensor, mask: torch.Tensor | None, num_images: int | None
    ) -> torch.Tensor:
        """NeCo's ``(P, N, d)`` reference tokens (:func:`~paka_hf.losses.neco.draw_references`); pushes to
        the queue when training.

        Args:
            teacher: ``(P, N, d)`` aligned teacher tokens.
            mask: optional ``(P, N)`` bool, True = ignore the token.
            num_images: images of the batch; needed when the queue is filled.

        Returns:
            ``(P, N, d)`` reference tokens.

        Raises:
            ValueError: the queue is to be filled and ``num_images`` is None.
        """
        per_image = self.neco.queue_per_image if self.references is not None else 0  # no queue: nothing pushed
        return draw_references(teacher, mask, num_images, self.references, per_image, self.training)

    def extra_repr(self) -> str:
        text = f"loss={self.loss!r}, kernel={self.kernel!r}, scope={self.scope!r}"
        return text + (f", neco={self.neco}" if self.neco is not None else "")
