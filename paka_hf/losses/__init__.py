r"""PaKA's alignment losses between aligned student and teacher patch tokens, one module per loss.

Every loss takes the ``P`` crop pairs' ``N`` RoIAlign-aligned tokens, the student's ``(P, N, d)`` and the
teacher's ``(P, N, d')``, and an optional bool mask ``(P, N)`` (True = ignore the token); it computes in
float32 whatever the autocast dtype and detaches the teacher.

- :mod:`paka_hf.losses.cka`: PaKA's loss, ``1 − CKA`` of the two sides' centred kernels (linear or RBF,
  per pair or over the batch): :func:`cka_loss`, :func:`cka_per_pair`. Yeo, Jang, Kim, "PaKA:
  Patch-level Kernel Alignment", arXiv 2509.05606.
- :mod:`paka_hf.losses.gram`: the Gram-matching baseline of the paper's Fig. 2, :func:`gram_loss`.
- :mod:`paka_hf.losses.cosine`: the feature-distillation control, :func:`cosine_distillation_loss`.
- :mod:`paka_hf.losses.neco`: NeCo's patch-neighbour-consistency loss (Pariza et al., ICLR 2025,
  arXiv 2408.11054), :func:`neco_loss`, with its reference tokens (:func:`sample_references`,
  :class:`ReferenceQueue`) and its relaxed sort (:mod:`paka_hf.losses.soft_sort`).
- :mod:`paka_hf.losses.registry`: the name of each loss in the ``loss`` setting (:data:`LOSSES`), and
  :class:`PaKALoss` (:mod:`paka_hf.losses.criterion`), the configured loss as a module.

Example::

    >>> student = torch.randn(8, 49, 384, requires_grad=True)  # (pairs, tokens, dim)
    >>> teacher = torch.randn(8, 49, 384)
    >>> loss = cka_loss(student, teacher)            # mean over the 8 pairs of 1 - CKA
    >>> loss.backward()
"""

from paka_hf.losses.cka import EPS, KERNELS, SCOPES, Kernel, Scope, cka_loss, cka_per_pair
from paka_hf.losses.cosine import cosine_distillation_loss
from paka_hf.losses.criterion import PaKALoss
from paka_hf.losses.gram import gram_loss
from paka_hf.losses.neco import (
    NECO_QUEUE_LENGTH,
    NECO_QUEUE_PER_IMAGE,
    NECO_STEEPNESS,
    NeCoSettings,
    ReferenceQueue,
    neco_loss,
    sample_references,
)
from paka_hf.losses.registry import LOSSES, REGISTRY

__all__ = [
    "EPS",
    "KERNELS",
    "LOSSES",
    "NECO_QUEUE_LENGTH",
    "NECO_QUEUE_PER_IMAGE",
    "NECO_STEEPNESS",
    "REGISTRY",
    "SCOPES",
    "Kernel",
    "NeCoSettings",
    "PaKALoss",
    "ReferenceQueue",
    "Scope",
    "cka_loss",
    "cka_per_pair",
    "cosine_distillation_loss",
    "gram_loss",
    "neco_loss",
    "sample_references",
]
