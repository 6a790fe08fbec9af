"""paka_mean_iou: mean IoU, per-class IoU and pixel accuracy for semantic segmentation, offline.

An ``evaluate`` metric module that needs no Hub access (``evaluate.load("mean_iou")`` downloads its
script). Load it by path::

    >>> import evaluate
    >>> from paka_hf.evaluation.metrics import METRIC_PATH
    >>> metric = evaluate.load(METRIC_PATH)
    >>> metric.compute(predictions=[pred], references=[gt], num_labels=21, ignore_index=255)
    {'mean_iou': ..., 'per_category_iou': [...], 'overall_accuracy': ...}

The module is self-contained (numpy only) because ``evaluate`` copies the script alone into its
module cache. Conventions are those of ``paka_hf.evaluation.metrics``: rows = ground truth; pixels
whose reference is ``ignore_index`` are skipped; a class with an empty union has IoU ``nan`` and
is left out of the mean (``extra_zero_classes`` adds classes scored 0, the published ADE20K
convention). Values are fractions in [0, 1], as in ``evaluate``'s ``mean_iou``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Mean IoU with an ignore index, per-category IoU and overall pixel accuracy."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of (H, W) integer arrays, predicted class ids.
    references: list of (H, W) integer arrays, ground-truth class ids or ignore_index.
    num_labels: number of classes C.
    ignore_index: reference value to skip (default 255).
    extra_zero_classes: classes scored 0 added to the mean (default 0).
Returns:
    mean_iou, per_category_iou (C values, nan where undefined), overall_accuracy, confusion_matrix (C x C).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PakaMeanIou(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                }
            ),
        )

    def _compute(self, predictions, references, num_labels, ignore_index=255, extra_zero_classes=0):
        conf = np.zeros((num_labels, num_labels), dtype=np.int64)
        for pred, ref in zip(predictions, references):
            pred = np.asarray(pred, dtype=np.int64).reshape(-1)
            ref = np.asarray(ref, dtype=np.int64).reshape(-1)
            if pred.shape != ref.shape:
                raise ValueError(f"prediction and reference sizes differ: {pred.shape} vs {ref.shape}")
            keep = ref != ignore_index
            ref, pred = ref[keep], pred[keep]
            if ref.size and (ref.min() < 0 or ref.max() >= num_labels):
                raise ValueError(f"references hold values outside 0..{num_labels - 1} other than {ignore_index}")
            if pred.size and (pred.min() < 0 or pred.max() >= num_labels):
                raise ValueError(f"predictions must lie in 0..{num_labels - 1}")
            conf += np.bincount(ref * num_labels + pred, minlength=num_labels * num_labels).reshape(num_labels, -1)
        tp = np.diag(conf).astype(np.float64)
        union = conf.sum(0) + conf.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        valid = ~np.isnan(iou)
        denom = valid.sum() + extra_zero_classes
        total = conf.sum()
        return {
            "mean_iou": float(iou[valid].sum() / denom) if denom else float("nan"),
            "per_category_iou": iou,
            "overall_accuracy": float(tp.sum() / total) if total else float("nan"),
            "confusion_matrix": conf,
        }
