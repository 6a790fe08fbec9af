r"""Segmentation metrics and cluster-to-class matching.

Confusion matrix ``M`` (``C × C``, rows = ground truth, columns = prediction), built over the pixels
whose ground truth is not ``ignore_index``:

.. math::

    \mathrm{IoU}_c = \frac{M_{cc}}{\sum_j M_{cj} + \sum_i M_{ic} - M_{cc}}, \qquad
    \mathrm{mIoU} = \frac{1}{|\{c : \text{union}_c > 0\}|} \sum_{c : \text{union}_c > 0} \mathrm{IoU}_c, \qquad
    \mathrm{pixel\ acc} = \frac{\operatorname{tr} M}{\sum_{ij} M_{ij}}.

A class that is neither present nor predicted has no IoU (``nan``, ``null`` in JSON) and is left
out of the mean, as ``evaluate``'s ``mean_iou`` and mmsegmentation do. ``extra_zero_classes``
reproduces the published ADE20K convention (151 classes, the "other" class scored 0).

Matching for unsupervised clusters (overclustering): with a ``K × C`` cluster/class overlap
matrix ``O`` (``O_kc`` = pixels of class ``c`` in cluster ``k``),

* ``K ≤ C``: Hungarian matching, a one-to-one map maximising ``Σ_k O_{k, σ(k)}``
  (``scipy.optimize.linear_sum_assignment``);
* ``K > C``: greedy many-to-one by precision, ``σ(k) = argmax_c O_kc / Σ_c O_kc`` (each cluster to
  its majority class).

The same metric is also shipped as an ``evaluate`` module that loads offline (:data:`METRIC_PATH`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

METRIC_PATH = str(Path(__file__).with_name("paka_mean_iou") / "paka_mean_iou.py")
"""``evaluate.load(METRIC_PATH)`` gives the same numbers as :func:`segmentation_scores`, offline."""


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int, num_pred_classes: int | None = None
) -> torch.Tensor:
    """``(num_classes, num_pred_classes)`` int64 counts; rows = ground truth, columns = prediction.

    ``pred`` and ``target`` have the same shape; pixels with ``target == ignore_index`` are skipped.
    ``num_pred_classes`` (default ``num_classes``) allows cluster ids as predictions.

    Args:
        pred: predicted ids, any shape.
        target: ground-truth ids, same shape.
        num_classes: the number of classes.
        ignore_index: the target value skipped.
        num_pred_classes: the number of predicted ids; None for ``num_classes``.

    Returns:
        The counts.

    Raises:
        ValueError: the shapes differ, a target is neither a class nor ignore, or a prediction is out of range.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    num_pred = num_classes if num_pred_classes is None else int(num_pred_classes)
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        bad = torch.unique(target[(target < 0) | (target >= num_classes)]).tolist()
        raise ValueError(
            f"target has values {bad} outside 0..{num_classes - 1} that are not ignore_index {ignore_index}"
        )
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_pred):
        raise ValueError(f"predictions must lie in 0..{num_pred - 1}")
    counts = torch.bincount(target * num_pred + pred, minlength=num_classes * num_pred)
    return counts.reshape(num_classes, num_pred)


@dataclass
class SegmentationScores:
    """mIoU and pixel accuracy in percent, per-class IoU in percent (``nan`` when undefined).

    Args:
        mean_iou: the mean IoU in percent.
        pixel_accuracy: the pixel accuracy in percent.
        per_class_iou: ``(C,)`` IoU per class in percent.
    """

    mean_iou: float
    pixel_accuracy: float
    per_class_iou: np.ndarray

    def per_class_dict(self, class_names: Sequence[str]) -> dict[str, float | None]:
        """The per-class IoU by class name, rounded to 4 decimals.

        Args:
            class_names: one name per class.

        Returns:
            ``{name: IoU}``, None where the IoU is undefined.
        """
        return {
            name: (None if np.isnan(v) else round(float(v), 4)) for name, v in zip(class_names, self.per_class_iou)
        }


def segmentation_scores(confusion: torch.Tensor | np.ndarray, extra_zero_classes: int = 0) -> SegmentationScores:
    """Scores from a square confusion matrix (see the module docstring for the formulas).

    ``extra_zero_classes``: add that many classes with IoU 0 to the mean (the published ADE20K
    convention averages 150 classes plus the ignored "other" class over 151).

    Args:
        confusion: a ``(C, C)`` confusion matrix (rows = ground truth).
        extra_zero_classes: classes with IoU 0 added to the mean.

    Returns:
        The :class:`SegmentationScores`.

    Raises:
        ValueError: ``confusion`` is not square.
    """
    conf = torch.as_tensor(confusion, dtype=torch.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion must be square (C, C), got {tuple(conf.shape)}")
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    denom = int(valid.sum()) + int(extra_zero_classes)
    mean_iou = float(iou[valid].sum() / denom) if denom else float("nan")
    total = conf.sum()
    pixel_acc = float(tp.sum() / total) if total > 0 else float("nan")
    return SegmentationScores(100.0 * mean_iou, 100.0 * pixel_acc, 100.0 * iou.numpy())


def hungarian_match(overlap: torch.Tensor | np.ndarray) -> np.ndarray:
    """One-to-one map cluster → class maximising the total overlap (``K ≤ C``).

    ``overlap``: ``(K, C)``; returns ``(K,)`` class ids.

    Args:
        overlap: ``(K, C)`` pixel counts of cluster × class.

    Returns:
        ``(K,)`` int64 class ids.

    Raises:
        ValueError: ``K > C``.
    """
    overlap = np.asarray(overlap, dtype=np.float64)
    k, c = overlap.shape
    if k > c:
        raise ValueError(f"Hungarian matching needs K <= C, got K={k} clusters for C={c} classes; use greedy matching")
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    mapping = np.empty(k, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def greedy_match(overlap: torch.Tensor | np.ndarray) -> np.ndarray:
    """Many-to-one map: each cluster to the class it is most precise for (its majority class).

    Args:
        overlap: ``(K, C)`` pixel counts of cluster × class.

    Returns:
        ``(K,)`` int64 class ids.
    """
    overlap = np.asarray(overlap, dtype=np.float64)
    return overlap.argmax(axis=1).astype(np.int64)


def match_clusters(overlap: torch.Tensor | np.ndarray, method: str = "auto") -> np.ndarray:
    """Map each cluster to a class (:func:`hungarian_match` or :func:`greedy_match`).

    Args:
        overlap: ``(K, C)`` pixel counts of cluster × class.
        method: ``"hungarian"``, ``"greedy"`` or ``"auto"`` (Hungarian when ``K ≤ C``, else greedy).

    Returns:
        ``(K,)`` int64 class ids.

    Raises:
        ValueError: an unknown ``method``, or ``"hungarian"`` with ``K > C``.
    """
    k, c = np.asarray(overlap).shape
    if method == "auto":
        method = "hungarian" if k <= c else "greedy"
    if method == "hungarian":
        return hungarian_match(overlap)
    if method == "greedy":
        return greedy_match(overlap)
    raise ValueError(f"method must be 'auto', 'hungarian' or 'greedy', got {method!r}")


def matched_confusion(overlap: torch.Tensor | np.ndarray, mapping: np.ndarray, num_classes: int) -> torch.Tensor:
    """Class confusion after relabelling clusters: ``M[:, c] = Σ_{k: σ(k)=c} O[k, :]ᵀ``.

    ``overlap`` is ``(K, C)`` (cluster × class), the result ``(C, C)`` (ground truth × prediction).

    Args:
        overlap: ``(K, C)`` pixel counts.
        mapping: ``(K,)`` class of each cluster (σ).
        num_classes: ``C``.

    Returns:
        The ``(C, C)`` int64 confusion matrix.
    """
    overlap = torch.as_tensor(np.asarray(overlap), dtype=torch.int64)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    conf.index_add_(1, torch.as_tensor(mapping, dtype=torch.int64), overlap.T.contiguous())
    return conf
